"""One frozen `Settings`: command-line flags first, then `AOL_*` environment, then defaults.

This is the only module that reads `os.environ`. A bad value stops start-up with a message
naming the flag, the variable, the value and the shape expected.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from aol.errors import ConfigError
from aol.eventloop import EVENT_LOOP_DEFAULT, EVENT_LOOPS

BATCH_SIZE_DEFAULT = 3
LEASE_TTL_DEFAULT = 30.0
HEARTBEAT_INTERVAL_DEFAULT = 5.0
SCAN_INTERVAL_DEFAULT = 30.0
# While actions arrive faster than a tick, the worker claims again this often instead of
# sleeping until notified (so enqueuers do not notify it); 0 turns it off.
BUSY_POLL_DEFAULT = 0.002
TICK_TIMEOUT_DEFAULT = 20.0
ACTION_TIMEOUT_DEFAULT = 15.0
CLAIM_GRACE_DEFAULT = 10.0
BACKOFF_BASE_DEFAULT = 5.0
BACKOFF_MAX_DEFAULT = 600.0
SHUTDOWN_GRACE_DEFAULT = 15.0
LISTEN_PROBE_INTERVAL_DEFAULT = 10.0
HEALTH_HOST_DEFAULT = "127.0.0.1"
DASHBOARD_HOST_DEFAULT = "127.0.0.1"
DASHBOARD_PORT_DEFAULT = 8080
# A shared secret shorter than this is refused: it would be guessable.
DASHBOARD_TOKEN_MIN_LENGTH = 16
LOG_FORMAT_DEFAULT = "json"
LOG_FORMATS = ("json", "console")
# One JSON line per successful attempt, or one per tick listing the tick's succeeded ids
# (failures, retries, deaths and discards are always logged one by one).
SUCCESS_LOG_DEFAULT = "each"
SUCCESS_LOGS = ("each", "tick")


def default_owner() -> str:
    """`host:pid`, the name a worker writes into `aol.lease.owner`."""
    return f"{socket.gethostname()}:{os.getpid()}"


def default_data_dir(env: Mapping[str, str]) -> Path:
    """The user's data directory for aol (XDG), never a temporary folder."""
    base = env.get("XDG_DATA_HOME") or str(Path(env.get("HOME") or Path.home()) / ".local/share")
    return Path(base) / "aol"


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything a worker or a command needs to know, resolved once at start-up."""

    database_url: str | None = None
    data_dir: Path = field(default_factory=lambda: default_data_dir(os.environ))
    embedded_dir: Path | None = None
    owner: str = field(default_factory=default_owner)
    batch_size: int = BATCH_SIZE_DEFAULT
    # A cap on attempts over every action's own max_attempts (None: each action's own).
    max_attempts: int | None = None
    lease_ttl: float = LEASE_TTL_DEFAULT
    heartbeat_interval: float = HEARTBEAT_INTERVAL_DEFAULT
    scan_interval: float = SCAN_INTERVAL_DEFAULT
    busy_poll: float = BUSY_POLL_DEFAULT
    tick_timeout: float = TICK_TIMEOUT_DEFAULT
    action_timeout: float = ACTION_TIMEOUT_DEFAULT
    claim_grace: float = CLAIM_GRACE_DEFAULT
    backoff_base: float = BACKOFF_BASE_DEFAULT
    backoff_max: float = BACKOFF_MAX_DEFAULT
    shutdown_grace: float = SHUTDOWN_GRACE_DEFAULT
    log_format: str = LOG_FORMAT_DEFAULT
    success_log: str = SUCCESS_LOG_DEFAULT
    event_loop: str = EVENT_LOOP_DEFAULT
    handlers: tuple[str, ...] = ()
    standby: bool = False
    listen: bool = True
    listen_probe_interval: float = LISTEN_PROBE_INTERVAL_DEFAULT
    watchdog: bool = True
    health_port: int | None = None
    health_host: str = HEALTH_HOST_DEFAULT
    dashboard_host: str = DASHBOARD_HOST_DEFAULT
    dashboard_port: int = DASHBOARD_PORT_DEFAULT
    dashboard_token: str | None = field(default=None, repr=False)

    @property
    def claim_ttl(self) -> float:
        """How long a claim stays valid: a tick can never outlive it."""
        return self.tick_timeout + self.claim_grace

    def masked(self) -> dict[str, str]:
        """A printable view with the database password hidden."""
        view = {f.name: str(getattr(self, f.name)) for f in fields(self)}
        view["database_url"] = mask_url(self.database_url) if self.database_url else "embedded"
        view["dashboard_token"] = "***" if self.dashboard_token else "none"
        return view

    def with_(self, **changes: Any) -> Settings:
        return replace(self, **changes)


def mask_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))


# name -> (environment variable, parser, expected shape)
_SOURCES: dict[str, tuple[str, Callable[[str], Any], str]] = {
    "data_dir": ("AOL_DATA_DIR", lambda v: Path(v).expanduser(), "a folder path"),
    "embedded_dir": ("AOL_EMBEDDED_DIR", lambda v: Path(v).expanduser(), "a folder path"),
    "owner": ("AOL_OWNER", str, "a name such as host:pid"),
    "batch_size": ("AOL_BATCH_SIZE", int, "an integer from 1 to 1000"),
    "max_attempts": ("AOL_MAX_ATTEMPTS", int, "an integer >= 1"),
    "lease_ttl": ("AOL_LEASE_TTL", float, "seconds, > 0"),
    "heartbeat_interval": ("AOL_HEARTBEAT_INTERVAL", float, "seconds, > 0"),
    "scan_interval": ("AOL_SCAN_INTERVAL", float, "seconds, > 0"),
    "busy_poll": ("AOL_BUSY_POLL", float, "seconds, >= 0"),
    "tick_timeout": ("AOL_TICK_TIMEOUT", float, "seconds, > 0"),
    "action_timeout": ("AOL_ACTION_TIMEOUT", float, "seconds, > 0"),
    "claim_grace": ("AOL_CLAIM_GRACE", float, "seconds, >= 0"),
    "backoff_base": ("AOL_BACKOFF_BASE", float, "seconds, >= 0"),
    "backoff_max": ("AOL_BACKOFF_MAX", float, "seconds, >= 0"),
    "shutdown_grace": ("AOL_SHUTDOWN_GRACE", float, "seconds, >= 0"),
    "log_format": ("AOL_LOG_FORMAT", str, "json or console"),
    "success_log": ("AOL_SUCCESS_LOG", str, "each or tick"),
    "event_loop": ("AOL_EVENT_LOOP", str, "asyncio or uvloop"),
    "handlers": (
        "AOL_HANDLERS",
        lambda v: tuple(m.strip() for m in v.split(",") if m.strip()),
        "comma-separated module names",
    ),
    "standby": ("AOL_STANDBY", lambda v: _parse_bool(v), "true or false"),
    "listen": ("AOL_LISTEN", lambda v: _parse_bool(v), "true or false"),
    "listen_probe_interval": ("AOL_LISTEN_PROBE_INTERVAL", float, "seconds, > 0"),
    "watchdog": ("AOL_WATCHDOG", lambda v: _parse_bool(v), "true or false"),
    "health_port": ("AOL_HEALTH_PORT", int, "a TCP port from 0 to 65535"),
    "health_host": ("AOL_HEALTH_HOST", str, "a host address such as 127.0.0.1"),
    "dashboard_host": ("AOL_DASHBOARD_HOST", str, "a host address such as 127.0.0.1"),
    "dashboard_port": ("AOL_DASHBOARD_PORT", int, "a TCP port from 0 to 65535"),
}

# Settings whose command-line flag is not --<name with dashes> (`aol dashboard --host`).
_FLAG_NAMES = {"dashboard_host": "--host", "dashboard_port": "--port"}


def _parse_bool(value: str) -> bool:
    low = value.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(value)


def _read_secret(env: Mapping[str, str], var: str) -> str | None:
    """A secret from a file named by `var` (Docker secrets), stripped of its newline."""
    path = env.get(var)
    if not path:
        return None
    try:
        return Path(path).read_text(encoding="utf-8").strip() or None
    except OSError as exc:
        raise ConfigError(f"{var} = {path!r} cannot be read: {exc.strerror}") from None


def _flag(name: str) -> str:
    return _FLAG_NAMES.get(name, "--" + name.replace("_", "-"))


def load_settings(
    flags: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None
) -> Settings:
    """Resolve settings from flags (None means unset), then environment, then defaults."""
    env = os.environ if env is None else env
    flags = {k: v for k, v in (flags or {}).items() if v is not None and v != ()}
    values: dict[str, Any] = {"data_dir": default_data_dir(env)}

    url = (
        flags.pop("database_url", None)
        or env.get("AOL_DATABASE_URL")
        or _read_secret(env, "AOL_DATABASE_URL_FILE")
        or env.get("DATABASE_URL")
    )
    values["database_url"] = url or None
    # Secrets come from the environment only, never a flag (a command line is visible to
    # every user of the machine in `ps`).
    values["dashboard_token"] = (env.get("AOL_DASHBOARD_TOKEN") or "").strip() or _read_secret(
        env, "AOL_DASHBOARD_TOKEN_FILE"
    )

    for name, (var, parse, shape) in _SOURCES.items():
        if name in flags:
            raw, source = flags[name], f"{_flag(name)} (or {var})"
        elif var in env:
            raw, source = env[var], f"{var} (or {_flag(name)})"
        else:
            continue
        try:
            values[name] = parse(raw) if isinstance(raw, str) else raw
        except ValueError:
            raise ConfigError(f"{source} = {raw!r} is not valid: expected {shape}") from None
    unknown = set(flags) - set(_SOURCES)
    if unknown:
        raise ConfigError(f"unknown setting(s): {', '.join(sorted(unknown))}")
    settings = Settings(**values)
    validate(settings)
    return settings


def validate(settings: Settings) -> None:
    """Refuse combinations that cannot work, naming the setting and the fix."""

    def bad(name: str, why: str) -> ConfigError:
        var = _SOURCES[name][0]
        value = getattr(settings, name)
        return ConfigError(f"{_flag(name)} (or {var}) = {value!r} is not valid: {why}")

    if not 1 <= settings.batch_size <= 1000:
        raise bad("batch_size", "expected an integer from 1 to 1000")
    if settings.max_attempts is not None and settings.max_attempts < 1:
        raise bad("max_attempts", "expected an integer >= 1")
    for name in (
        "lease_ttl",
        "heartbeat_interval",
        "scan_interval",
        "tick_timeout",
        "listen_probe_interval",
    ):
        if getattr(settings, name) <= 0:
            raise bad(name, "expected seconds > 0")
    if settings.action_timeout <= 0:
        raise bad("action_timeout", "expected seconds > 0")
    for name in ("busy_poll", "claim_grace", "backoff_base", "backoff_max", "shutdown_grace"):
        if getattr(settings, name) < 0:
            raise bad(name, "expected seconds >= 0")
    if settings.heartbeat_interval * 2 > settings.lease_ttl:
        raise bad(
            "heartbeat_interval", f"must be at most half the lease TTL ({settings.lease_ttl})"
        )
    if settings.action_timeout > settings.tick_timeout:
        raise bad("action_timeout", f"must not exceed the tick timeout ({settings.tick_timeout})")
    if settings.health_port is not None and not 0 <= settings.health_port <= 65535:
        raise bad("health_port", "expected a TCP port from 0 to 65535")
    if not 0 <= settings.dashboard_port <= 65535:
        raise bad("dashboard_port", "expected a TCP port from 0 to 65535")
    token = settings.dashboard_token
    if token is not None and len(token) < DASHBOARD_TOKEN_MIN_LENGTH:
        raise ConfigError(
            f"AOL_DASHBOARD_TOKEN (or AOL_DASHBOARD_TOKEN_FILE) is {len(token)} characters "
            f"long: expected at least {DASHBOARD_TOKEN_MIN_LENGTH}; make one with "
            "`python3 -c 'import secrets; print(secrets.token_urlsafe(32))'`"
        )
    if settings.log_format not in LOG_FORMATS:
        raise bad("log_format", "expected json or console")
    if settings.success_log not in SUCCESS_LOGS:
        raise bad("success_log", "expected each or tick")
    if settings.event_loop not in EVENT_LOOPS:
        raise bad("event_loop", "expected asyncio or uvloop")
    if not settings.owner:
        raise bad("owner", "must not be empty")
