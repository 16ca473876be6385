"""Paced publisher for the `busy` scenario: events round-robin over many channels, pipelined.

Each event goes through the gateway's own publish script (history and live delivery, as
`gateway.publish` does), but the events due at each wake-up are sent in one pipeline (at most
`--batch`), so the publisher keeps up with the thousands of events per second that many busy
channels make on one core; a sequential `gateway.publish` loop tops out near 300/s on the
loaded reference machine. Events that are due together reach the gateway together, which is
what a busy Redis looks like to it. Prints one JSON line per step, like `publisher.py`.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import redis

from bench.publisher import make_data
from gateway.backends.redis_keys import PUBLISH_LUA, publish_call
from gateway.settings import Settings


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--target", default="gateway", help="ignored: always the publish script")
    p.add_argument("--url", default="", help="ignored")
    p.add_argument("--channel", required=True, help="a name with {i}: channel i of --channels")
    p.add_argument("--channels", type=int, default=1)
    p.add_argument("--rates", required=True, help="offered events/s per step, comma-separated")
    p.add_argument("--duration", type=float, default=4)
    p.add_argument("--gap", type=float, default=1.0, help="seconds between steps")
    p.add_argument("--size", type=int, default=200)
    p.add_argument("--batch", type=int, default=50, help="most events in one pipeline")
    p.add_argument("--redis-url", required=True)
    args = p.parse_args()
    settings = Settings(redis_url=args.redis_url)
    client = redis.Redis.from_url(args.redis_url)
    sha = client.script_load(PUBLISH_LUA)
    channels = [args.channel.replace("{i}", str(i)) for i in range(args.channels)]

    def send(first: int, count: int) -> None:
        pipe = client.pipeline(transaction=False)
        for seq in range(first, first + count):
            channel = channels[seq % len(channels)]
            data = make_data(seq, args.size)
            keys, call_args, _ = publish_call(settings, channel, "notification", data, None, None)
            pipe.evalsha(sha, len(keys), *keys, *call_args)
        pipe.execute()

    send(0, 1)  # warm-up (its ts is outside every step's window)
    for i, rate in enumerate(float(r) for r in args.rates.split(",") if r):
        if i:
            time.sleep(args.gap)
        print(json.dumps(run_step(args, send, rate)), flush=True)


def run_step(args: Any, send: Any, rate: float) -> dict[str, Any]:
    seq = 0
    t0 = time.time()
    t_end = t0 + args.duration
    start_us = time.time_ns() // 1000
    cpu0 = time.process_time()
    while time.time() < t_end:
        due = int((time.time() - t0) * rate) + 1
        while seq < due:
            count = min(due - seq, args.batch)
            send(seq, count)
            seq += count
        delay = t0 + seq / rate - time.time()
        if delay > 0:
            time.sleep(min(delay, 0.01))
    end_us = time.time_ns() // 1000
    return {
        "target": "gateway-pipelined",
        "rate": rate,
        "count": seq,
        "start_us": start_us,
        "end_us": end_us,
        "achieved_rate": seq / max(1e-6, (end_us - start_us) / 1e6),
        "cpu_s": time.process_time() - cpu0,
    }


if __name__ == "__main__":
    main()
