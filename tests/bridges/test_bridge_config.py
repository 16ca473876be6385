"""The bridge's configuration and mapping rules, without brokers: bad keys are named at start,
wildcards and templates behave per broker syntax, a message that can be no event is refused."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gateway.bridges.config import load
from gateway.bridges.routes import AMQP, MQTT, NATS, Route, Routes, TopicPattern
from gateway.errors import MalformedMessage, SettingsError

GOOD = """
redis_url = "redis://127.0.0.1:6379/0"

[[sources]]
kind = "mqtt"
name = "sensors"
url = "mqtt://127.0.0.1:1883"
client_id = "gateway-bridge"
topics = ["sensors/#"]

[[sources.routes]]
match = "sensors/+/temperature"
channel = "sensor:{1}"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bridge.toml"
    path.write_text(text)
    return path


def test_a_good_file_loads(tmp_path: Path) -> None:
    config = load(write(tmp_path, GOOD))
    assert config.sources[0].name == "sensors" and config.sources[0].prefetch == 100


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (
            ('channel = "sensor:{1}"', 'chanel = "sensor:{1}"'),
            "sources[0].routes[0].chanel: unknown",
        ),
        (('channel = "sensor:{1}"', 'channel = "sensor:{2}"'), "sources[0].routes[0]: {2}"),
        (('kind = "mqtt"', 'kind = "kafka"'), "sources[0]"),
        (('client_id = "gateway-bridge"', ""), "sources[0].client_id: Field required"),
        (('topics = ["sensors/#"]', 'topics = ["sensors/#"]\nprefetch = 0'), "sources[0].prefetch"),
        (('match = "sensors/+/temperature"', 'match = "sensors/#/x"'), "sources[0].routes[0]"),
        (('redis_url = "redis://127.0.0.1:6379/0"', 'redis_url = "http://x"'), "redis_url"),
        (('redis_url = "redis://127.0.0.1:6379/0"', 'redis_url = "memory://"'), "redis_url"),
        (
            ('redis_url = "redis://127.0.0.1:6379/0"', 'redis_url = "redis+cluster://a:1,b"'),
            "redis_url: Value error, REDIS_URL: redis+cluster:// takes host:port",
        ),
    ],
)
def test_a_bad_key_is_named(tmp_path: Path, change: tuple[str, str], named: str) -> None:
    old, new = change
    with pytest.raises(SettingsError) as raised:
        load(write(tmp_path, GOOD.replace(old, new)))
    assert named in str(raised.value)


def test_a_redis_cluster_url_is_taken_as_gateway_serve_takes_it(tmp_path: Path) -> None:
    url = "redis+cluster://127.0.0.1:7000,127.0.0.1:7001"
    config = load(write(tmp_path, GOOD.replace("redis://127.0.0.1:6379/0", url)))
    assert config.redis_url == url


def test_not_toml_and_a_missing_file_are_refused(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="not TOML"):
        load(write(tmp_path, "sources = ["))
    with pytest.raises(SettingsError, match="No such file"):
        load(tmp_path / "absent.toml")


def test_the_command_refuses_a_bad_file_before_connecting(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("channel =", "chanel ="))
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "bridge", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode != 0
    assert "sources[0].routes[0].chanel: unknown key" in result.stderr


@pytest.mark.parametrize(
    ("syntax", "pattern", "topic", "matches"),
    [
        (AMQP, "orders.*.status", "orders.42.status", ("42",)),
        (AMQP, "orders.*.status", "orders.42.x.status", None),
        (AMQP, "orders.#", "orders", ("",)),
        (AMQP, "orders.#", "orders.a.b", ("a.b",)),
        (AMQP, "#", "anything.at.all", ("anything.at.all",)),
        (MQTT, "sensors/+/temp", "sensors/k1/temp", ("k1",)),
        (MQTT, "sensors/#", "sensors/k1/temp", ("k1/temp",)),
        (MQTT, "sensors/+", "sensors.k1", None),
        (NATS, "orders.>", "orders.a.b", ("a.b",)),
        (NATS, "orders.>", "orders", None),
        (NATS, "orders.*", "orders.a", ("a",)),
    ],
)
def test_wildcards_match_as_each_broker_means_them(
    syntax: object, pattern: str, topic: str, matches: tuple[str, ...] | None
) -> None:
    assert TopicPattern(pattern, syntax).match(topic) == matches  # type: ignore[arg-type]


def test_templates_make_the_channel_and_type_and_fields_pick_type_and_data() -> None:
    routes = Routes(
        [
            Route("orders.*.*", "order:{1}", AMQP, type="order.{2}"),
            Route("raw.*", "log:{1}", AMQP, format="text"),
            Route("env.#", "env:x", AMQP, type_field="kind", data_field="body"),
        ]
    )
    paid = routes.map("orders.42.paid", b'{"total": 3}')
    assert (paid.channel, paid.type, paid.data) == ("order:42", "order.paid", {"total": 3})
    assert routes.map("raw.web", b"GET /").data == "GET /"
    enveloped = routes.map("env.a", b'{"kind": "k.v", "body": [1]}')
    assert (enveloped.type, enveloped.data) == ("k.v", [1])


@pytest.mark.parametrize(
    ("topic", "body", "reason"),
    [
        ("orders.42.paid", b"{oops", "not JSON"),
        ("raw.web", b"\xff\xfe", "not UTF-8"),
        ("nowhere", b"{}", "no route"),
        ("orders.a b.paid", b"{}", "no channel name"),
        ("orders.42.pa id", b"{}", "not an event type"),
        ("env.a", b"[1]", "not a JSON object"),
        ("env.a", b'{"body": 1}', "no 'kind' field"),
    ],
)
def test_a_message_that_can_be_no_event_is_malformed(topic: str, body: bytes, reason: str) -> None:
    routes = Routes(
        [
            Route("orders.*.*", "order:{1}", AMQP, type="order.{2}"),
            Route("raw.*", "log:{1}", AMQP, format="text"),
            Route("env.#", "env:x", AMQP, type_field="kind", data_field="body"),
        ]
    )
    with pytest.raises(MalformedMessage, match=reason):
        routes.map(topic, body)
