"""Load client: N WebSocket / Socket.IO (EIO4) / SSE connections to 127.0.0.1 in one process.

Hand-written protocol parsing (server frames are unmasked, no permessage-deflate offered) so the
client costs little CPU per message. Every message carries `"ts":<µs since epoch>` (set by the
publisher); the client records, per received message, the send timestamp and the latency.

Prints `READY <connected> <failed> <connect_s>` once all connections are up, records until
SIGTERM/SIGINT or --max-seconds, then writes `<out>.json` (summary) and `<out>.ts` / `<out>.lat`
(int64 arrays: send timestamp µs, latency µs) for the orchestrator to slice into steps.

`--path` may contain `{i}` (the connection's index, offset by --index-base) so that each
connection subscribes to its own channel, and `{c0}`..`{c<K-1>}` with `--channel-count C`: the
K channel numbers of connection i, (i + j*(C//K)) % C, spread evenly over C channels (the
`busy` scenario: each client on K of C busy channels).
"""

from __future__ import annotations

import argparse
import array
import asyncio
import base64
import contextlib
import json
import os
import re
import resource
import signal
import time
from typing import Any

PAT = re.compile(rb'"ts":(\d+)')


def now_us() -> int:
    return time.time_ns() // 1000


class Stats:
    def __init__(self) -> None:
        self.recording = False
        self.ts = array.array("q")
        self.lat = array.array("q")
        self.total = 0
        self.pre_ready = 0
        self.closed = 0
        self.pings = 0


def masked_frame(opcode: int, payload: bytes) -> bytes:
    mask = os.urandom(4)
    n = len(payload)
    if n < 126:
        hdr = bytes([0x80 | opcode, 0x80 | n])
    elif n < 65536:
        hdr = bytes([0x80 | opcode, 0x80 | 126]) + n.to_bytes(2, "big")
    else:
        hdr = bytes([0x80 | opcode, 0x80 | 127]) + n.to_bytes(8, "big")
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return hdr + mask + masked


class BaseProto(asyncio.Protocol):
    def __init__(self, st: Stats, ready: asyncio.Future[bool], args: Any, path: str) -> None:
        self.st = st
        self.ready = ready
        self.args = args
        self.path = path
        self.buf = b""
        self.hs_done = False
        self.t: Any = None

    def connection_lost(self, exc: Exception | None) -> None:
        self.st.closed += 1
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"closed before ready: {exc!r}"))

    def account(self, data: bytes, end: int) -> None:
        st = self.st
        found = PAT.findall(data, 0, end)
        if not found:
            return
        if not st.recording:
            st.pre_ready += len(found)
            return
        now = now_us()
        st.total += len(found)
        sent = [int(m) for m in found]
        st.ts.extend(sent)
        st.lat.extend([now - s for s in sent])


class WSProto(BaseProto):
    """Plain WebSocket (kind=ws) or engine.io v4 / socket.io v4 over WebSocket (kind=sio)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.t = transport
        key = base64.b64encode(os.urandom(16)).decode()
        proto = (
            f"Sec-WebSocket-Protocol: {self.args.subprotocol}\r\n" if self.args.subprotocol else ""
        )
        req = (
            f"GET {self.path} HTTP/1.1\r\nHost: 127.0.0.1:{self.args.port}\r\n"
            f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            f"Sec-WebSocket-Version: 13\r\n{proto}\r\n"
        )
        self.t.write(req.encode())
        self.sio_state = 0  # 0: waiting for engine.io open "0{...}", 1: waiting "40", 2: ready

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        if not self.hs_done:
            i = buf.find(b"\r\n\r\n")
            if i < 0:
                self.buf = buf
                return
            status = buf[: buf.find(b"\r\n")]
            if b" 101 " not in status:
                self.t.close()
                if not self.ready.done():
                    self.ready.set_exception(ConnectionError(status.decode(errors="replace")))
                return
            self.hs_done = True
            buf = buf[i + 4 :]
            if self.args.kind == "ws" and not self.args.ready_token and not self.ready.done():
                self.ready.set_result(True)
        n = len(buf)
        i = 0
        sio = self.args.kind == "sio"
        token = self.args.ready_token.encode() if self.args.ready_token else b""
        while n - i >= 2:
            b0 = buf[i]
            ln = buf[i + 1] & 0x7F
            h = 2
            if ln == 126:
                if n - i < 4:
                    break
                ln = int.from_bytes(buf[i + 2 : i + 4], "big")
                h = 4
            elif ln == 127:
                if n - i < 10:
                    break
                ln = int.from_bytes(buf[i + 2 : i + 10], "big")
                h = 10
            if i + h + ln > n:
                break
            op = b0 & 0x0F
            if op >= 8:
                payload = buf[i + h : i + h + ln]
                if op == 9:
                    self.t.write(masked_frame(0xA, payload))
                    self.st.pings += 1
                elif op == 8:
                    self.t.close()
            elif token and not self.ready.done():
                if token in buf[i + h : i + h + ln]:
                    self.ready.set_result(True)
            elif sio and (ln <= 2 or self.sio_state < 2):
                payload = buf[i + h : i + h + ln]
                if payload == b"2":  # engine.io ping
                    self.t.write(masked_frame(0x1, b"3"))
                    self.st.pings += 1
                elif self.sio_state == 0 and payload[:1] == b"0":
                    self.sio_state = 1
                    self.t.write(masked_frame(0x1, b"40"))
                elif self.sio_state == 1 and payload[:2] == b"40":
                    self.sio_state = 2
                    if not self.ready.done():
                        self.ready.set_result(True)
            i += h + ln
        if i:
            self.account(buf, i)
        self.buf = buf[i:]


class SSEProto(BaseProto):
    """HTTP/1.1 SSE stream with chunked transfer-encoding decoding."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.t = transport
        self.chunked = False
        self.raw = b""
        self.chunk_left = 0
        self.need_crlf = False
        req = (
            f"GET {self.path} HTTP/1.1\r\nHost: 127.0.0.1:{self.args.port}\r\n"
            f"Accept: text/event-stream\r\nCache-Control: no-cache\r\n\r\n"
        )
        self.t.write(req.encode())

    def dechunk(self, data: bytes) -> bytes:
        raw = self.raw + data if self.raw else data
        out = []
        i = 0
        n = len(raw)
        while i < n:
            if self.chunk_left:
                take = min(self.chunk_left, n - i)
                out.append(raw[i : i + take])
                i += take
                self.chunk_left -= take
                if self.chunk_left:
                    break
                self.need_crlf = True
            if self.need_crlf:
                if n - i < 2:
                    break
                i += 2
                self.need_crlf = False
            j = raw.find(b"\r\n", i)
            if j < 0:
                break
            size = int(raw[i:j].split(b";")[0], 16)
            i = j + 2
            if size == 0:
                break
            self.chunk_left = size
        self.raw = raw[i:]
        return b"".join(out)

    def data_received(self, data: bytes) -> None:
        if not self.hs_done:
            buf = self.buf + data if self.buf else data
            i = buf.find(b"\r\n\r\n")
            if i < 0:
                self.buf = buf
                return
            status = buf[: buf.find(b"\r\n")]
            if b" 200 " not in status:
                self.t.close()
                if not self.ready.done():
                    self.ready.set_exception(ConnectionError(status.decode(errors="replace")))
                return
            self.hs_done = True
            self.chunked = b"transfer-encoding: chunked" in buf[:i].lower()
            data = buf[i + 4 :]
            self.buf = b""
        if self.chunked:
            data = self.dechunk(data)
        buf = self.buf + data if self.buf else data
        if not self.ready.done() and buf:
            # the first bytes of the stream (a comment line) arrive once the stream is set up
            self.ready.set_result(True)
        j = buf.rfind(b"\n")
        if j >= 0:
            self.account(buf, j + 1)
            self.buf = buf[j + 1 :]
        else:
            self.buf = buf


async def main(args: Any) -> None:
    loop = asyncio.get_running_loop()
    st = Stats()
    proto_cls = SSEProto if args.kind == "sse" else WSProto
    sem = asyncio.Semaphore(args.concurrency)
    transports: list[asyncio.BaseTransport] = []
    failed = 0
    errors: dict[str, int] = {}

    async def one(index: int) -> None:
        nonlocal failed
        path = connection_path(args.path, args.index_base + index, args.channel_count)
        async with sem:
            fut: asyncio.Future[bool] = loop.create_future()
            transport = None
            try:
                transport, _ = await asyncio.wait_for(
                    loop.create_connection(
                        lambda: proto_cls(st, fut, args, path), "127.0.0.1", args.port
                    ),
                    timeout=30,
                )
                await asyncio.wait_for(fut, timeout=30)
                transports.append(transport)
                return
            except Exception as exc:
                if transport is not None:
                    transport.abort()
                name = type(exc).__name__ + ":" + str(exc)[:80]
                errors[name] = errors.get(name, 0) + 1
            failed += 1

    t_start = time.time()
    await asyncio.gather(*(one(i) for i in range(args.n)))
    connect_s = time.time() - t_start
    st.recording = True
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = now_us()
    print(f"READY {args.n - failed} {failed} {connect_s:.2f}", flush=True)

    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=args.max_seconds)
    st.recording = False
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    res = {
        "kind": args.kind,
        "n": args.n,
        "connected": args.n - failed,
        "failed": failed,
        "errors": errors,
        "connect_s": connect_s,
        "t0_us": t0,
        "t_end_us": now_us(),
        "total": st.total,
        "pre_ready": st.pre_ready,
        "closed": st.closed,
        "pings": st.pings,
        "cpu_s": (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime),
        "maxrss_kb": ru1.ru_maxrss,
    }
    dump(args.out, res, st)
    for t in transports:
        t.abort()


SLOT = re.compile(r"\{c(\d+)\}")


def connection_path(template: str, index: int, channel_count: int) -> str:
    path = template.replace("{i}", str(index))
    slots = len(set(SLOT.findall(path)))
    if not slots:
        return path
    stride = max(1, channel_count // slots)
    return SLOT.sub(lambda m: str((index + int(m.group(1)) * stride) % channel_count), path)


def dump(out: str, res: dict[str, Any], st: Stats) -> None:
    with open(out + ".json", "w") as f:
        json.dump(res, f)
    with open(out + ".ts", "wb") as f:
        st.ts.tofile(f)
    with open(out + ".lat", "wb") as f:
        st.lat.tofile(f)


def cli() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--kind", choices=["ws", "sio", "sse"], default="ws")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--path", default="/ws")
    p.add_argument("--subprotocol", default="")
    p.add_argument("--ready-token", default="", help="WS: ready once a frame contains this")
    p.add_argument("-n", type=int, default=1000)
    p.add_argument("--index-base", type=int, default=0)
    p.add_argument("--channel-count", type=int, default=1, help="C for `{cJ}` in --path")
    p.add_argument("--concurrency", type=int, default=100)
    p.add_argument("--max-seconds", type=float, default=300)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(main(args))


if __name__ == "__main__":
    cli()
