"""aol: the Autonomy Orchestration Layer.

Durable, leased, auditable execution of an agent's side-effecting actions on PostgreSQL.
"""

from aol.actions.artifacts import Artifact
from aol.actions.context import HandlerContext
from aol.actions.registry import Registry, default_registry, handler
from aol.client import Client, NewAction, enqueue, enqueue_many
from aol.errors import (
    AolError,
    ConfigError,
    DatabaseUnavailable,
    EnqueueRejected,
    InvalidPayload,
    LeaseHeld,
    LeaseLost,
    PermanentError,
    RealRunNotConfigured,
    SchemaMismatch,
    UnknownActionType,
)
from aol.model import Action, ActionId, ActionStatus, JSONObject

__all__ = [
    "Action",
    "ActionId",
    "ActionStatus",
    "AolError",
    "Artifact",
    "Client",
    "ConfigError",
    "DatabaseUnavailable",
    "EnqueueRejected",
    "HandlerContext",
    "InvalidPayload",
    "JSONObject",
    "LeaseHeld",
    "LeaseLost",
    "NewAction",
    "PermanentError",
    "RealRunNotConfigured",
    "Registry",
    "SchemaMismatch",
    "UnknownActionType",
    "default_registry",
    "enqueue",
    "enqueue_many",
    "handler",
]
