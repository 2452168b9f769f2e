"""The dashboard's settings: token from the environment or a secrets file, never shown."""

from __future__ import annotations

from pathlib import Path

import pytest

from aol.errors import ConfigError
from aol.settings import load_settings
from tests.web.page import TOKEN


def test_defaults_serve_loopback_port_8080_without_a_token() -> None:
    s = load_settings({}, env={})
    assert (s.dashboard_host, s.dashboard_port, s.dashboard_token) == ("127.0.0.1", 8080, None)


def test_the_token_comes_from_the_environment_or_a_secrets_file(tmp_path: Path) -> None:
    assert load_settings({}, env={"AOL_DASHBOARD_TOKEN": TOKEN}).dashboard_token == TOKEN
    secret = tmp_path / "token"
    secret.write_text(TOKEN + "\n")
    s = load_settings({}, env={"AOL_DASHBOARD_TOKEN_FILE": str(secret)})
    assert s.dashboard_token == TOKEN


def test_the_token_is_never_shown() -> None:
    s = load_settings({}, env={"AOL_DASHBOARD_TOKEN": TOKEN})
    assert TOKEN not in str(s.masked())
    assert TOKEN not in repr(s)
    assert s.masked()["dashboard_token"] == "***"


def test_a_short_token_is_refused() -> None:
    with pytest.raises(ConfigError, match="at least 16"):
        load_settings({}, env={"AOL_DASHBOARD_TOKEN": "changeme"})


def test_flags_win_over_the_environment_and_a_bad_port_is_named() -> None:
    env = {"AOL_DASHBOARD_HOST": "0.0.0.0", "AOL_DASHBOARD_PORT": "9000"}
    s = load_settings({"dashboard_host": "127.0.0.1"}, env=env)
    assert (s.dashboard_host, s.dashboard_port) == ("127.0.0.1", 9000)
    with pytest.raises(ConfigError, match=r"AOL_DASHBOARD_PORT.*'eighty'"):
        load_settings({}, env={"AOL_DASHBOARD_PORT": "eighty"})
    with pytest.raises(ConfigError, match="--port"):
        load_settings({"dashboard_port": 70000}, env={})
