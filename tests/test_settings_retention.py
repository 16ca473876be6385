"""GATEWAY_RETENTION byte budgets, GATEWAY_HISTORY_BYTES and GATEWAY_MAX_EVENT_SIZE (pure)."""

from __future__ import annotations

import re

import pytest

from gateway.errors import SettingsError
from gateway.settings import Retention, Settings


def test_defaults_bound_rooms_in_events_bytes_and_event_size() -> None:
    settings = Settings.from_env({})
    assert settings.retention_for("room:a") == Retention(500, 3600, 4 * 1024 * 1024)
    assert settings.retention_for("job:a").max_bytes == 16 * 1024 * 1024
    assert settings.retention_for("user:a") == Retention(1000, 86_400, 4 * 1024 * 1024)
    assert settings.max_event_size_for("room:a") == 65_536
    assert settings.max_event_size_for("user:a") == 65_536
    assert settings.max_event_size_for("job:a") == 0, "job events (results) are not refused"


def test_retention_rules_take_an_optional_byte_budget() -> None:
    settings = Settings.from_env(
        {"GATEWAY_RETENTION": "room=100/60/200000 job=50/30", "GATEWAY_HISTORY_BYTES": "300000"}
    )
    assert settings.retention_for("room:x") == Retention(100, 60, 200_000)
    assert settings.retention_for("job:x") == Retention(50, 30, 300_000)
    assert settings.retention_for("other:x").max_bytes == 300_000
    assert Settings.from_env(settings.to_env()) == settings


def test_event_size_rules_override_only_the_namespaces_they_name() -> None:
    settings = Settings.from_env({"GATEWAY_MAX_EVENT_SIZE": "room=1000 *=2000"})
    assert settings.max_event_size_for("room:x") == 1000
    assert settings.max_event_size_for("news:x") == 2000
    assert settings.max_event_size_for("job:x") == 0
    assert Settings.from_env(settings.to_env()) == settings


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"GATEWAY_RETENTION": "room=100"}, "GATEWAY_RETENTION"),
        ({"GATEWAY_RETENTION": "room=100/60/0"}, "GATEWAY_RETENTION"),
        ({"GATEWAY_RETENTION": "room=1/2/3/4"}, "GATEWAY_RETENTION"),
        ({"GATEWAY_HISTORY_BYTES": "0"}, "GATEWAY_HISTORY_BYTES"),
        ({"GATEWAY_MAX_EVENT_SIZE": "room"}, "GATEWAY_MAX_EVENT_SIZE"),
        ({"GATEWAY_MAX_EVENT_SIZE": "room=-1"}, "GATEWAY_MAX_EVENT_SIZE"),
        # An event that could not fit its channel's byte budget:
        ({"GATEWAY_MAX_EVENT_SIZE": "room=5000000"}, "GATEWAY_MAX_EVENT_SIZE room=5000000"),
        ({"GATEWAY_RETENTION": "room=500/3600/1000"}, "GATEWAY_MAX_EVENT_SIZE room=65536"),
        ({"GATEWAY_HISTORY_BYTES": "1000"}, "GATEWAY_MAX_EVENT_SIZE *=65536"),
    ],
)
def test_bad_values_stop_the_start_naming_the_variable(env: dict[str, str], named: str) -> None:
    with pytest.raises(SettingsError, match=re.escape(named)):
        Settings.from_env(env)
