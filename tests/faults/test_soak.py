"""Fault scenario 10, short version: the soak of tests/faults/soak.py with 10,000 actions.

`AOL_FAULTS_SOAK_ACTIONS` changes the size, `AOL_FAULTS_SEED` fixes the random seed (it is
recorded with the figures either way). The long run is a separate command:

    python -m tests.faults.soak --actions 100000
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.faults.cluster import FaultCluster
from tests.faults.report import Figures
from tests.faults.soak import FAULTS, SoakConfig, render, run_soak

pytestmark = pytest.mark.faults

SHORT_ACTIONS = int(os.environ.get("AOL_FAULTS_SOAK_ACTIONS", "10000"))


@pytest.mark.timeout(600)
async def test_10_soak_with_random_faults_loses_nothing_and_never_overlaps(
    fault_cluster: FaultCluster,
    faults_db: str,
    tmp_path: Path,
    record: Callable[[Figures], None],
) -> None:
    seed_text = os.environ.get("AOL_FAULTS_SEED")
    seed = int(seed_text) if seed_text else random.SystemRandom().randrange(2**31)
    cfg = SoakConfig(actions=SHORT_ACTIONS, seed=seed)
    result = await run_soak(fault_cluster, faults_db, tmp_path / "soak", cfg)
    scenario = f"10 soak ({cfg.actions} actions)"
    record(result.figures(scenario))
    print(render(result, scenario))  # noqa: T201

    assert result.violations == [], render(result, scenario)
    assert result.lost == 0
    assert result.overlaps == 0
    assert result.not_final_once == 0
    assert result.statuses == {"succeeded": cfg.actions}
    injected = {f.kind for f in result.faults if "skipped" not in f.note}
    assert injected == set(FAULTS), render(result, scenario)
