"""Settings declared once (pure): every value type parsed from text, bounds and parse errors
naming the variable, aliases, CLI overrides and flags, `to_env` round trips, and the README's
Configuration table written from the declarations."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from gateway.cli import build_parser
from gateway.errors import SettingsError
from gateway.limits import Limits
from gateway.settings import Retention, Settings, configuration_table, declared
from gateway.settings.flags import overrides
from gateway.settings.reference import COMMANDS, FLAGS_HEADER, flags_table

ROOT = Path(__file__).resolve().parent.parent

WHSEC = "whsec_" + "A" * 32  # 24 bytes


def test_the_readme_table_is_the_one_the_declarations_write() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Configuration", 1)[1]
    start = section.index("| variable | default | meaning |")
    table = "".join(line + "\n" for line in section[start:].splitlines() if line.startswith("|"))
    generated = configuration_table()
    assert table == generated, (
        "the README's Configuration table differs from the declarations in gateway/settings: "
        "regenerate it with `python -m gateway.settings --table`"
    )


def _flags_section() -> str:
    doc = (ROOT / "docs" / "configuration.md").read_text()
    return doc.split("## Command-line flags", 1)[1].split("\n## ", 1)[0]


def _table(section: str, header: str) -> str:
    """The Markdown table of `section` that starts with `header`'s first line."""
    rows = section[section.index(header.splitlines()[0]) :].split("\n\n", 1)[0]
    return "".join(line + "\n" for line in rows.splitlines())


def _cells(row: str) -> list[str]:
    return [cell.strip() for cell in re.split(r"(?<!\\)\|", row)[1:-1]]


def test_the_docs_flags_table_is_the_one_the_declarations_write() -> None:
    table = _table(_flags_section(), FLAGS_HEADER)
    assert table == flags_table(Settings(), declared().values()), (
        "docs/configuration.md's flags table differs from the declarations in gateway/settings: "
        "regenerate it with `python -m gateway.settings --flags-table`"
    )


def test_the_docs_hand_written_flags_are_the_cli_options_that_are_not_settings() -> None:
    """The second, hand-written table names exactly the options `gateway serve`/`worker` have
    beyond their settings' flags, each under the commands that have it."""
    rows = _table(_flags_section(), "| flag | commands | meaning |").splitlines()[2:]
    documented = {
        (re.findall(r"--[a-z-]+", cells[0])[0], command.strip())
        for cells in map(_cells, rows)
        for command in cells[1].split(",")
    }
    parsers = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    cli = {
        (option, command)
        for command in COMMANDS
        for action in parsers.choices[command]._actions
        for option in action.option_strings
        if option.startswith("--") and option != "--help"
    }
    settings = {
        (option, command)
        for declaration in declared().values()
        for command in declaration.flag
        for option in (declaration.option, "--no-" + declaration.option[2:])
    }
    assert documented == cli - settings


def test_every_setting_is_declared_with_a_variable_and_help() -> None:
    assert set(declared()) == set(Settings.model_fields)
    variables = [v for d in declared().values() for v in d.variables]
    assert len(variables) == len(set(variables)), "a variable names one setting"
    for declaration in declared().values():
        assert re.fullmatch(r"(GATEWAY_)?[A-Z_]+", declaration.env)
        assert declaration.help, declaration.name


def test_settings_built_by_keyword_read_no_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_PORT", "1234")
    assert Settings().port == 8000
    assert Settings(port=9).port == 9
    assert Settings.from_env().port == 1234


@pytest.mark.parametrize(
    ("env", "attribute", "value"),
    [
        ({"GATEWAY_HOST": " 0.0.0.0 "}, "host", "0.0.0.0"),
        ({"GATEWAY_PORT": "9000"}, "port", 9000),
        ({"GATEWAY_VISIBILITY_TIMEOUT": "2.5"}, "visibility_timeout", 2.5),
        ({"GATEWAY_EMBEDDED_WORKER": "off"}, "embedded_worker", False),
        ({"GATEWAY_REQUIRE_AUTH": "YES", "GATEWAY_API_KEYS": "k" * 16}, "require_auth", True),
        ({"GATEWAY_HANDLERS": "a.b, c d"}, "handlers", ("a.b", "c", "d")),
        ({"GATEWAY_API_KEYS": f"{'a' * 16} {'b' * 16}"}, "api_keys", ("a" * 16, "b" * 16)),
        (
            {"GATEWAY_ALLOWED_ORIGINS": "https://a.example *"},
            "allowed_origins",
            ("https://a.example", "*"),
        ),
        (
            {"GATEWAY_TRUSTED_PROXIES": "10.0.0.1,::1"},
            "trusted_proxies",
            ("10.0.0.1/32", "::1/128"),
        ),
        ({"GATEWAY_WEBHOOK_SECRET": WHSEC}, "webhook_secrets", (WHSEC,)),
        ({"GATEWAY_JOB_TIMEOUTS": "sleep=30,x=1.5"}, "job_timeouts", {"sleep": 30.0, "x": 1.5}),
        ({"GATEWAY_CHANNEL_POLICY": "news=open/none"}, "channel_rules", {"news": ("open", "none")}),
        ({"GATEWAY_RETENTION": "room=5/6/70000"}, "retention", {"room": Retention(5, 6, 70000)}),
        ({"GATEWAY_LOG_LEVEL": "DEBUG"}, "log_level", "debug"),
        ({"GATEWAY_DATA_DIR": "/tmp/d"}, "data_dir", Path("/tmp/d")),
        ({"REDIS_URL": "unix:///run/redis.sock"}, "redis_url", "unix:///run/redis.sock"),
        ({"GATEWAY_PORT": "   "}, "port", 8000),  # blank counts as unset
    ],
)
def test_every_type_is_parsed_and_round_trips_through_to_env(
    env: dict[str, str], attribute: str, value: object
) -> None:
    settings = Settings.from_env(env)
    assert getattr(settings, attribute) == value
    assert Settings.from_env(settings.to_env()) == settings


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"GATEWAY_PORT": "65536"}, "GATEWAY_PORT='65536': must be between 0 and 65535"),
        ({"GATEWAY_WORKERS": "0"}, "GATEWAY_WORKERS='0': must be between 1 and 64"),
        ({"GATEWAY_MAX_WAIT": "-1"}, "GATEWAY_MAX_WAIT='-1': must be between 0 and 3600"),
        ({"PORT": "x"}, "PORT='x': "),
        ({"GATEWAY_MAX_BODY": "big"}, "GATEWAY_MAX_BODY='big': "),
        ({"GATEWAY_REQUIRE_AUTH": "maybe"}, "expected 1/0, true/false, yes/no or on/off"),
        ({"GATEWAY_LOG_LEVEL": "loud"}, "GATEWAY_LOG_LEVEL='loud': expected one of critical"),
        ({"GATEWAY_WEBHOOK_SECRET": "whsec_!"}, "GATEWAY_WEBHOOK_SECRET='whsec_!': the part"),
        ({"GATEWAY_JOB_TIMEOUTS": "sleep"}, "GATEWAY_JOB_TIMEOUTS='sleep': 'sleep': expected"),
        ({"GATEWAY_JOB_TIMEOUTS": "sleep=0"}, "seconds must be positive"),
        ({"GATEWAY_TRUSTED_PROXIES": "*"}, "GATEWAY_TRUSTED_PROXIES='*': '*' is not an IP"),
        ({"GATEWAY_WORKERS": "2"}, "--workers N > 1 needs REDIS_URL"),
        ({"GATEWAY_REQUIRE_AUTH": "1"}, "GATEWAY_API_KEYS is empty"),
    ],
)
def test_bad_values_raise_a_settings_error_naming_the_variable(
    env: dict[str, str], message: str
) -> None:
    with pytest.raises(SettingsError, match=re.escape(message)):
        Settings.from_env(env)


def test_aliases_win_over_the_variables_they_stand_for() -> None:
    assert Settings.from_env({"GATEWAY_PORT": "1", "PORT": "2"}).port == 2
    both = {"REDIS_URL": "redis://a:1/0", "GATEWAY_REDIS_URL": "redis://b:2/0"}
    assert Settings.from_env(both).redis_url == "redis://b:2/0"
    assert Settings.from_env({"REDIS_URL": "redis://a:1/0"}).redis_url == "redis://a:1/0"


def test_overrides_win_over_the_environment_and_none_means_not_given() -> None:
    env = {"GATEWAY_PORT": "1", "GATEWAY_HOST": "0.0.0.0"}
    settings = Settings.from_env(env, port=2, host=None)
    assert (settings.port, settings.host) == (2, "0.0.0.0")
    assert Settings.from_env({}, port="3").port == 3  # text, as a flag gives it
    with pytest.raises(SettingsError, match=re.escape("--port (GATEWAY_PORT)='x'")):
        Settings.from_env({}, port="x")


def test_cli_flags_come_from_the_declarations() -> None:
    parser = build_parser()
    args = parser.parse_args(
        ["serve", "--port", "9", "--handlers", "a", "--handlers", "b", "--no-embedded-worker"]
    )
    given = overrides(args, "serve")
    assert given["port"] == "9" and given["handlers"] == ["a", "b"]
    assert given["embedded_worker"] is False and given["require_auth"] is None
    settings = Settings.from_env({}, **given)
    assert (settings.port, settings.handlers, settings.embedded_worker) == (9, ("a", "b"), False)
    worker = overrides(parser.parse_args(["worker", "--concurrency", "7"]), "worker")
    assert worker == {"concurrency": "7", "handlers": None}
    flagged = {d.option for d in declared().values() if d.flag}
    assert flagged == {
        "--host", "--port", "--workers", "--embedded-worker", "--concurrency", "--handlers",
        "--require-auth", "--ssl-certfile", "--ssl-keyfile",
    }  # fmt: skip
    assert isinstance(args, argparse.Namespace)


def test_to_env_leaves_out_an_unset_embedded_worker() -> None:
    assert "GATEWAY_EMBEDDED_WORKER" not in Settings().to_env()
    assert Settings(embedded_worker=True).to_env()["GATEWAY_EMBEDDED_WORKER"] == "1"
    assert set(Settings().to_env()) == {d.env for d in declared().values()} - {
        "GATEWAY_EMBEDDED_WORKER",
        "GATEWAY_SSL_CERTFILE",
        "GATEWAY_SSL_KEYFILE",
    }
    tls = Settings(ssl_certfile=Path("/c.pem"), ssl_keyfile=Path("/k.pem")).to_env()
    assert (tls["GATEWAY_SSL_CERTFILE"], tls["GATEWAY_SSL_KEYFILE"]) == ("/c.pem", "/k.pem")


def test_replace_changes_attributes_and_keeps_the_rest() -> None:
    settings = Settings(port=1).replace(host="h")
    assert (settings.port, settings.host) == (1, "h")


def test_limits_take_their_defaults_from_the_settings() -> None:
    limits, settings = Limits(), Settings()
    assert (limits.publish.rate, limits.publish.burst) == (
        settings.publish_rate,
        settings.publish_burst,
    )
    assert (limits.submit.rate, limits.submit.burst) == (
        settings.submit_rate,
        settings.submit_burst,
    )
    assert limits.connections.limit == settings.max_connections_per_client
