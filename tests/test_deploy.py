"""The deployment files, checked without a Docker engine: compose services, dependencies and
health checks; the Dockerfile's stages, user, health check and entrypoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "compose.yaml").read_text())
    return data


def test_compose_has_postgres_a_one_shot_migrate_the_worker_and_the_dashboard() -> None:
    services = compose()["services"]
    assert set(services) >= {"postgres", "migrate", "worker", "dashboard"}
    assert services["migrate"]["command"] == ["migrate"]
    assert services["migrate"]["restart"] == "no"
    assert services["worker"]["command"][0] == "run"


def test_the_worker_waits_for_migrate_which_waits_for_a_healthy_postgres() -> None:
    services = compose()["services"]
    assert services["migrate"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    assert services["worker"]["depends_on"] == {
        "migrate": {"condition": "service_completed_successfully"}
    }


def test_health_checks_exist_and_the_worker_is_checked_on_healthz() -> None:
    services = compose()["services"]
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    assert "/healthz" in " ".join(services["worker"]["healthcheck"]["test"])
    assert "pgdata" in compose()["volumes"]


def test_two_workers_run_one_as_standby() -> None:
    worker = compose()["services"]["worker"]
    assert "--standby" in worker["command"]
    assert worker["deploy"]["replicas"] == 2


def test_configuration_is_environment_only_and_no_secret_is_inline() -> None:
    data = compose()
    for name in ("migrate", "worker", "dashboard"):
        service = data["services"][name]
        env = service["environment"]
        assert all(key.startswith("AOL_") for key in env), env
        assert not any("://" in str(v) or "password" in str(v).lower() for v in env.values())
        assert "database_url" in service["secrets"]
    assert all("file" in secret for secret in data["secrets"].values())
    assert "POSTGRES_PASSWORD" not in data["services"]["postgres"]["environment"]


def test_dockerfile_is_multi_stage_non_root_with_health_check_and_entrypoint() -> None:
    lines = [ln.strip() for ln in (ROOT / "Dockerfile").read_text().splitlines()]
    stages = [i for i, ln in enumerate(lines) if ln.startswith("FROM ")]
    assert len(stages) == 2
    final = lines[stages[-1] :]
    assert any(ln.startswith("USER ") and ln != "USER root" for ln in final)
    assert any(ln.startswith("HEALTHCHECK") for ln in final)
    assert any("/healthz" in ln for ln in final)
    assert 'ENTRYPOINT ["aol"]' in final
    assert not any(("apt-get" in ln or "gcc" in ln) for ln in final)  # no build tools


def test_the_dashboard_serves_beyond_loopback_with_a_token_from_a_secrets_file() -> None:
    data = compose()
    dashboard = data["services"]["dashboard"]
    assert dashboard["command"][0] == "dashboard"
    assert dashboard["command"][dashboard["command"].index("--host") + 1] == "0.0.0.0"
    assert dashboard["environment"]["AOL_DASHBOARD_TOKEN_FILE"] == "/run/secrets/dashboard_token"
    assert "AOL_DASHBOARD_TOKEN" not in dashboard["environment"]  # never inline
    assert "dashboard_token" in dashboard["secrets"]
    assert "file" in data["secrets"]["dashboard_token"]
    assert dashboard["depends_on"] == {"migrate": {"condition": "service_completed_successfully"}}
    port = dashboard["command"][dashboard["command"].index("--port") + 1]
    assert f"127.0.0.1:{port}:{port}" in dashboard["ports"]
    assert f"http://127.0.0.1:{port}/healthz" in " ".join(dashboard["healthcheck"]["test"])


def test_the_dashboard_reads_the_workers_artifacts_at_the_same_path() -> None:
    services = compose()["services"]
    worker = {v.split(":")[0]: v.split(":")[1] for v in services["worker"]["volumes"]}
    dashboard = {v.split(":")[0]: v.split(":")[1] for v in services["dashboard"]["volumes"]}
    assert dashboard["artifacts"] == worker["artifacts"]
    assert any(v.endswith(":ro") for v in services["dashboard"]["volumes"])
