"""Paced publisher: ~200-byte events carrying `"ts":<µs since epoch>` at a fixed offered rate.

Targets:
  gateway  `gateway.publish(channel, ...)` straight into Redis (the Python publisher: the same
           Lua script as the gateway, so history and live delivery both happen)
  http     `POST /channels/{ch}/events` on a running gateway (one keep-alive connection, a raw
           client: bench/rawhttp.py)
  http-batch  `POST /events/batch`, `--batch` events per request
  python-many `gateway.publish_many(...)`, `--batch` events per call
  redis    plain `PUBLISH ch <json>` (the raw-websockets peer)
  sio      `PUBLISH socket.io#/# <msgpack>` in the @socket.io/redis-emitter wire format

`--channels K` spreads events round-robin over K channels (`{channel}{i}` with `{i}` in the
name). `--rate 0` publishes as fast as one sequential client can (the publish-throughput
scenario). Bounded by --duration and --max-count; prints a JSON summary on stdout.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import Any

PAD = "x" * 400


def make_data(seq: int, size: int) -> dict[str, Any]:
    ts = time.time_ns() // 1000
    head = 60  # approximate size of the other fields
    return {
        "ts": ts,
        "seq": seq,
        "user": f"u{seq % 1000000:06d}",
        "pad": PAD[: max(0, size - head)],
    }


def make_sender(args: Any) -> Callable[[int], int | None]:
    """A function publishing event(s) from `seq` on; returns how many (None: one)."""
    channels = (
        [args.channel.replace("{i}", str(i)) for i in range(args.channels)]
        if "{i}" in args.channel
        else [args.channel]
    )
    k = len(channels)
    if args.target == "gateway":
        import os

        os.environ["REDIS_URL"] = args.redis_url
        from gateway.publish import publish

        def send(seq: int) -> None:
            publish(channels[seq % k], "notification", make_data(seq, args.size))

        return send
    if args.target == "python-many":
        import os

        os.environ["REDIS_URL"] = args.redis_url
        import gateway

        publish_many: Any = gateway.publish_many  # type: ignore[attr-defined]

        def send_many(seq: int) -> int:
            publish_many(
                [
                    (channels[(seq + i) % k], "notification", make_data(seq + i, args.size))
                    for i in range(args.batch)
                ]
            )
            return int(args.batch)

        return send_many
    if args.target in ("http", "http-batch"):
        import orjson
        from rawhttp import RawHTTP  # bench/, this script's folder

        if args.target == "http" and args.connections > 1:
            from rawhttp import RawHTTPWave

            wave = RawHTTPWave(args.url, args.connections)

            def send_wave(seq: int) -> int:
                body = orjson.dumps({"type": "notification", "data": make_data(seq, args.size)})
                for status, answer in wave.post(f"/channels/{channels[seq % k]}/events", body):
                    if status != 202:
                        raise RuntimeError(f"publish failed: {status} {answer[:200]!r}")
                return int(args.connections)

            return send_wave
        client = RawHTTP(args.url)

        def send_http(seq: int) -> None:
            status, body = client.post(
                f"/channels/{channels[seq % k]}/events",
                orjson.dumps({"type": "notification", "data": make_data(seq, args.size)}),
            )
            if status != 202:
                raise RuntimeError(f"publish failed: {status} {body[:200]!r}")

        def send_batch(seq: int) -> int:
            events = [
                {
                    "channel": channels[(seq + i) % k],
                    "type": "notification",
                    "data": make_data(seq + i, args.size),
                }
                for i in range(args.batch)
            ]
            status, body = client.post("/events/batch", orjson.dumps({"events": events}))
            if status not in (200, 202, 207):
                raise RuntimeError(f"batch publish failed: {status} {body[:200]!r}")
            return int(args.batch)

        return send_http if args.target == "http" else send_batch
    import redis

    r = redis.Redis.from_url(args.redis_url)
    if args.target == "redis":

        def send_redis(seq: int) -> None:
            r.publish(
                channels[seq % k], json.dumps(make_data(seq, args.size), separators=(",", ":"))
            )

        return send_redis
    import msgpack

    opts = {"rooms": [], "flags": {}, "except": []}

    def send_sio(seq: int) -> None:
        pkt = {"type": 2, "data": ["msg", make_data(seq, args.size)], "nsp": "/"}
        r.publish("socket.io#/#", msgpack.packb(["emitter", pkt, opts]))

    return send_sio


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument(
        "--target",
        choices=["gateway", "http", "http-batch", "python-many", "redis", "sio"],
        required=True,
    )
    p.add_argument("--batch", type=int, default=100, help="http-batch, python-many: per call")
    p.add_argument(
        "--connections", type=int, default=1, help="http: requests in flight on as many connections"
    )
    p.add_argument("--channel", default="ch")
    p.add_argument("--channels", type=int, default=1)
    p.add_argument("--rate", type=float, default=0)
    p.add_argument("--duration", type=float, default=5)
    p.add_argument("--size", type=int, default=200)
    p.add_argument("--max-count", type=int, default=2_000_000)
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379")
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.add_argument("--rates", default="", help="several steps: comma-separated rates")
    p.add_argument("--gap", type=float, default=1.0, help="seconds between steps")
    args = p.parse_args()
    send = make_sender(args)
    send(-1)  # warm-up: connection, script load (its ts is outside every step's window)
    rates = [float(r) for r in args.rates.split(",") if r] or [args.rate]
    for i, rate in enumerate(rates):
        if i:
            time.sleep(args.gap)
        print(json.dumps(run_step(args, send, rate)), flush=True)


def run_step(args: Any, send: Callable[[int], int | None], rate: float) -> dict[str, Any]:
    """Publish at `rate` events/s (0: as fast as possible) for --duration seconds."""
    seq = 0
    t0 = time.time()
    t_end = t0 + args.duration
    start_us = time.time_ns() // 1000
    cpu0 = time.process_time()
    if rate <= 0:
        calls = 0
        while seq < args.max_count:
            if (calls & 15) == 0 and time.time() >= t_end:
                break
            seq += send(seq) or 1
            calls += 1
    else:
        while seq < args.max_count:
            now = time.time()
            if now >= t_end:
                break
            due = int((now - t0) * rate) + 1
            while seq < due and seq < args.max_count:
                seq += send(seq) or 1
            delay = t0 + seq / rate - time.time()
            if delay > 0:
                time.sleep(min(delay, 0.01))
    end_us = time.time_ns() // 1000
    return {
        "target": args.target,
        "rate": rate,
        "count": seq,
        "start_us": start_us,
        "end_us": end_us,
        "achieved_rate": seq / max(1e-6, (end_us - start_us) / 1e6),
        "cpu_s": time.process_time() - cpu0,
    }


if __name__ == "__main__":
    main()
