"""What a handler receives: the action, the proof flag, a bound logger, artifact writing."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aol.actions.artifacts import Artifact, write_artifact
from aol.model import Action, ActionId, JSONObject


@dataclass(slots=True)
class HandlerContext:
    """Passed to every handler call.

    `proof` is True in proof (dry-run) mode: the handler must not touch the outside world,
    and should call `write_artifact` with what it would have done.
    """

    action: Action
    proof: bool
    log: Any
    data_dir: Path
    artifacts: list[Artifact] = field(default_factory=list)

    @property
    def action_id(self) -> ActionId:
        return self.action.id

    @property
    def payload(self) -> JSONObject:
        return self.action.payload

    @property
    def attempt(self) -> int:
        return self.action.attempts

    def write_artifact(
        self, content: bytes | str | JSONObject, *, suffix: str = ".json"
    ) -> Artifact:
        """Write a proof artifact; it is recorded in the execution log with its SHA-256."""
        if isinstance(content, dict):
            data = json.dumps(content, indent=2, sort_keys=True, ensure_ascii=False).encode()
        elif isinstance(content, str):
            data = content.encode("utf-8")
        else:
            data = content
        artifact = write_artifact(
            self.data_dir,
            idempotency_key=self.action.idempotency_key,
            attempt=self.action.attempts,
            content=data,
            suffix=suffix,
        )
        self.artifacts.append(artifact)
        self.log.info(
            "artifact_written", artifact_ref=str(artifact.path), artifact_sha256=artifact.sha256
        )
        return artifact
