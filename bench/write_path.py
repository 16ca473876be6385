"""CPU per delivery of the direct write path alone, one source checkout against another.

    python -m bench.write_path --tree /path/to/before --tree . --bursts 1,3,10 --rounds 3

Each measurement runs in a fresh process importing `gateway` from one tree (`--tree`, the
first is the baseline): S subscribers (`outbound.Subscriber`, each with a sink that writes to
its own Unix socket pair, a real `write` syscall like the WebSocket fast path's), and per
event-loop iteration B events on B channels every subscriber is on (`--bursts`). It times
`Subscriber.offer` for every event and subscriber plus the end of the iteration (where a tree
with per-connection coalescing flushes), in process CPU time, and reports µs per delivery:
the medians over `--rounds` (trees alternate) and their ratio to the baseline. Bursts of 1
show what coalescing costs when there is nothing to coalesce; larger ones what it saves.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def child(tree: str, subscribers: int, burst: int, iterations: int) -> float:
    sys.path.insert(0, tree)
    import gateway.outbound as outbound
    from gateway.events import Event, ws_wire_frame

    coalescing = hasattr(outbound, "DueWrites")

    async def run() -> float:
        pairs = [socket.socketpair() for _ in range(subscribers)]
        writes = outbound.DueWrites() if coalescing else None  # type: ignore[attr-defined]
        subs = []
        for ours, _theirs in pairs:
            ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
            subscriber = outbound.Subscriber("ws", 1000)
            fd = ours.fileno()

            def sink(items: Any, fd: int = fd) -> bool:
                if not coalescing:
                    os.write(fd, items.ws_wire)  # one item
                elif len(items) == 1:
                    os.write(fd, items[0].ws_wire)
                else:
                    os.write(fd, b"".join(map(ws_wire_frame, items)))
                return True

            subscriber.sink = sink
            if writes is not None:
                subscriber.due_writes = writes  # type: ignore[attr-defined]
            for c in range(burst):
                state = outbound.ChannelState(None)
                state.live, state.buffer = True, None
                subscriber.channels[f"room:c{c}"] = state
            subs.append(subscriber)
        for _ours, theirs in pairs:
            theirs.setblocking(False)
        seq, cpu = 1, 0.0
        pad = b"x" * 150
        for _ in range(iterations):
            events = []
            for c in range(burst):
                envelope = b'{"specversion":"1.0","id":"%d-0","channel":"room:c%d","data":"%s"}' % (
                    seq,
                    c,
                    pad,
                )
                events.append(Event(envelope, id=f"{seq}-0", channel=f"room:c{c}", type="t"))
                seq += 1
            start = time.process_time()
            for event in events:
                for subscriber in subs:
                    subscriber.offer(event)
            await asyncio.sleep(0)  # the end of the iteration: coalesced writes go out
            cpu += time.process_time() - start
            for _ours, theirs in pairs:  # read what was written, outside the timing
                try:
                    while theirs.recv(1 << 20):
                        pass
                except BlockingIOError:
                    pass
        return cpu / (iterations * subscribers * burst) * 1e6

    import uvloop

    return uvloop.run(run())


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.write_path", description=__doc__)
    p.add_argument("--tree", type=Path, action="append", required=True)
    p.add_argument("--subscribers", type=int, default=300)
    p.add_argument("--bursts", default="1,3,10")
    p.add_argument("--iterations", type=int, default=300)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        tree, subscribers, burst, iterations = a.child
        print(child(tree, int(subscribers), int(burst), int(iterations)))
        return
    trees = [str(t.resolve()) for t in a.tree]
    bursts = [int(b) for b in a.bursts.split(",")]
    results: dict[tuple[int, str], list[float]] = {}
    for _ in range(a.rounds):
        for burst in bursts:
            for tree in trees:
                out = subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "--tree",
                        tree,
                        "--child",
                        tree,
                        str(a.subscribers),
                        str(burst),
                        str(a.iterations),
                    ],
                    capture_output=True,
                    text=True,
                    check=True,
                    timeout=600,
                    env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
                )
                results.setdefault((burst, tree), []).append(float(out.stdout.split()[-1]))
    print(
        f"µs per delivery (median of {a.rounds}), {a.subscribers} subscribers; ratio to the first"
    )
    print(f"{'burst':>5}  " + "  ".join(f"{'µs':>6} {'ratio':>6}" for _ in trees) + "  trees")
    for burst in bursts:
        base = statistics.median(results[(burst, trees[0])])
        cells = []
        for tree in trees:
            value = statistics.median(results[(burst, tree)])
            cells.append(f"{value:>6.2f} {value / base:>6.2f}")
        print(f"{burst:>5}  " + "  ".join(cells) + "  " + " ".join(trees))


if __name__ == "__main__":
    main()
