"""Settings: flags over environment over defaults, and refusals that name the setting."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from aol.errors import ConfigError
from aol.settings import BATCH_SIZE_DEFAULT, LEASE_TTL_DEFAULT, load_settings, mask_url


def test_defaults_apply_when_nothing_is_set() -> None:
    s = load_settings({}, env={"HOME": "/home/u"})
    assert s.batch_size == BATCH_SIZE_DEFAULT
    assert s.lease_ttl == LEASE_TTL_DEFAULT
    assert s.database_url is None
    assert s.data_dir == Path("/home/u/.local/share/aol")
    assert s.claim_ttl == s.tick_timeout + s.claim_grace


def test_data_dir_follows_xdg_and_never_tmp() -> None:
    s = load_settings({}, env={"HOME": "/home/u", "XDG_DATA_HOME": "/data"})
    assert s.data_dir == Path("/data/aol")


def test_database_url_order_is_flag_then_aol_then_database_url() -> None:
    env = {"AOL_DATABASE_URL": "postgresql://a/a", "DATABASE_URL": "postgresql://b/b"}
    assert load_settings({"database_url": "postgresql://f/f"}, env=env).database_url == (
        "postgresql://f/f"
    )
    assert load_settings({}, env=env).database_url == "postgresql://a/a"
    assert load_settings({}, env={"DATABASE_URL": "postgresql://b/b"}).database_url == (
        "postgresql://b/b"
    )


def test_flags_override_environment() -> None:
    s = load_settings({"batch_size": 50}, env={"AOL_BATCH_SIZE": "7"})
    assert s.batch_size == 50
    assert load_settings({}, env={"AOL_BATCH_SIZE": "7"}).batch_size == 7


def test_a_bad_environment_value_names_the_variable_the_value_and_the_shape() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings({}, env={"AOL_LEASE_TTL": "soon"})
    message = str(caught.value)
    assert "AOL_LEASE_TTL" in message
    assert "'soon'" in message
    assert "seconds" in message


@pytest.mark.parametrize(
    ("flags", "fragment"),
    [
        ({"batch_size": 0}, "--batch-size"),
        ({"heartbeat_interval": 20.0, "lease_ttl": 30.0}, "at most half the lease TTL"),
        ({"action_timeout": 30.0, "tick_timeout": 20.0}, "must not exceed the tick timeout"),
        ({"log_format": "xml"}, "json or console"),
        ({"success_log": "never"}, "each or tick"),
        ({"max_attempts": 0}, "--max-attempts"),
        ({"scan_interval": 0.0}, "--scan-interval"),
        ({"busy_poll": -0.001}, "--busy-poll"),
        ({"event_loop": "trio"}, "--event-loop"),
    ],
)
def test_impossible_combinations_are_refused(flags: dict[str, object], fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        load_settings(flags, env={})


def test_standby_and_handlers_parse_from_environment() -> None:
    s = load_settings({}, env={"AOL_STANDBY": "yes", "AOL_HANDLERS": "a.b, c"})
    assert s.standby is True
    assert s.handlers == ("a.b", "c")


def test_masked_view_hides_the_password() -> None:
    s = load_settings({"database_url": "postgresql://u:secret@h/db"}, env={})
    assert "secret" not in str(s.masked())
    assert mask_url("postgresql://u:secret@h:5432/db") == "postgresql://u:***@h:5432/db"


def test_an_environment_error_names_the_variable_first_and_the_flag_too() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings({}, env={"AOL_BATCH_SIZE": "many"})
    assert str(caught.value).startswith("AOL_BATCH_SIZE (or --batch-size) = 'many'")


def test_the_database_url_may_come_from_a_secrets_file(tmp_path: Path) -> None:
    secret = tmp_path / "database_url"
    secret.write_text("postgresql://u:pw@db/aol\n")
    s = load_settings({}, env={"AOL_DATABASE_URL_FILE": str(secret)})
    assert s.database_url == "postgresql://u:pw@db/aol"
    assert "pw" not in s.masked()["database_url"]


def test_an_unreadable_secrets_file_is_named() -> None:
    with pytest.raises(ConfigError, match="AOL_DATABASE_URL_FILE = '/nonexistent/x' cannot be"):
        load_settings({}, env={"AOL_DATABASE_URL_FILE": "/nonexistent/x"})


def test_the_event_loop_is_asyncio_unless_uvloop_is_asked_for() -> None:
    assert load_settings({}, env={}).event_loop == "asyncio"
    assert load_settings({}, env={"AOL_EVENT_LOOP": "uvloop"}).event_loop == "uvloop"


def test_uvloop_asked_for_but_not_installed_is_refused_by_run_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Settings accept `uvloop` (every command reads them; only `aol run` uses a loop);
    making the loop says what to install."""
    from aol.eventloop import loop_factory

    monkeypatch.setitem(sys.modules, "uvloop", None)  # an import of it now fails
    assert load_settings({}, env={"AOL_EVENT_LOOP": "uvloop"}).event_loop == "uvloop"
    with pytest.raises(ConfigError) as caught:
        loop_factory("uvloop")
    assert str(caught.value) == (
        "--event-loop uvloop (or AOL_EVENT_LOOP): uvloop is not installed here: "
        "pip install 'aol[uvloop]'"
    )
    assert loop_factory("asyncio") is None
