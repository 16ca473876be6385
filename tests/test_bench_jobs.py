"""The pure parts of `python -m bench jobs`: the raw HTTP client's response parsing, and the
summary (median and range over rounds, ratios against the gateway). The benchmark itself is not
a test."""

from __future__ import annotations

import socket
import threading
from pathlib import Path
from typing import Any

import pytest

from bench import jobs
from bench.rawhttp import RawHTTP, RawHTTPError, parse_head


def test_parse_head_reads_status_length_and_keep_alive() -> None:
    head = b"HTTP/1.1 202 Accepted\r\ncontent-type: application/json\r\nContent-Length: 17"
    assert parse_head(head) == (202, 17, True)
    assert parse_head(b"HTTP/1.1 200 OK\r\nConnection: close\r\ncontent-length: 0") == (
        200,
        0,
        False,
    )
    assert parse_head(b"HTTP/1.0 200 OK\r\ncontent-length: 2") == (200, 2, False)


def test_parse_head_refuses_what_it_cannot_read() -> None:
    with pytest.raises(RawHTTPError):
        parse_head(b"SSH-2.0-OpenSSH_9.2")
    with pytest.raises(RawHTTPError):
        parse_head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked")


def test_raw_client_keeps_one_connection_and_splits_pipelined_answers() -> None:
    """Two answers arriving in one segment are two responses, on one connection."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    accepted: list[int] = []
    requests: list[bytes] = []

    def serve() -> None:
        conn, _ = listener.accept()
        accepted.append(1)
        with conn:
            data = b""
            while data.count(b"\r\n\r\n") < 1 or not data.endswith(b'{"n":1}'):
                data += conn.recv(65536)
            requests.append(data)
            # both answers at once: the second belongs to the next request
            conn.sendall(
                b'HTTP/1.1 202 Accepted\r\ncontent-length: 8\r\n\r\n{"a":1}\n'
                b"HTTP/1.1 404 Not Found\r\ncontent-length: 2\r\n\r\n{}"
            )
            conn.recv(65536)  # the second request
        listener.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    client = RawHTTP(f"http://127.0.0.1:{port}")
    assert client.post("/jobs", b'{"n":1}') == (202, b'{"a":1}\n')
    assert client.post("/jobs", b'{"n":2}') == (404, b"{}")
    client.close()
    thread.join(10)
    assert len(accepted) == 1
    assert requests[0].startswith(b"POST /jobs HTTP/1.1\r\n")
    assert b"Content-Length: 7\r\n" in requests[0]


def _enqueue(system: str, api: str, rate: int, rnd: int) -> dict[str, Any]:
    return {
        "scenario": "enqueue",
        "system": system,
        "api": api,
        "jobs": rate,
        "jobs_s": rate,
        "round": rnd,
        "cpu_ms_per_job": {"producer": 0.1, "redis": 0.05},
    }


def test_summary_takes_median_and_range_and_compares_like_with_like() -> None:
    rows = [
        *(_enqueue("gateway", "http", r, i) for i, r in enumerate((900, 1000, 1100))),
        *(_enqueue("gateway", "submit-many", r, i) for i, r in enumerate((40_000, 50_000))),
        *(_enqueue("bullmq", "add", r, i) for i, r in enumerate((2000, 3000, 2500))),
        _enqueue("bullmq", "addBulk", 25_000, 0),
        {
            "scenario": "roundtrip",
            "system": "gateway",
            "jobs": 100,
            "ms": {"p50": 4.0, "p99": 9.0, "max": 12.0},
        },
        {
            "scenario": "roundtrip",
            "system": "arq",
            "jobs": 100,
            "ms": {"p50": 2.0, "p99": 6.0, "max": 7.0},
        },
    ]
    summary = jobs.summarize(rows)
    jobs.add_ratios(summary)
    by = {(e["scenario"], e["system"], e["variant"]): e for e in summary}
    http = by[("enqueue", "gateway", "POST /jobs")]
    assert http["rate"] == {"median": 1000, "min": 900, "max": 1100}
    assert http["rounds"] == 3
    # one-job calls against one-job calls, batches against batches
    assert by[("enqueue", "bullmq", "add")]["gateway_over_peer"] == 0.4
    assert by[("enqueue", "bullmq", "addBulk")]["gateway_over_peer"] == 1.8
    assert by[("roundtrip", "arq", "one at a time")]["gateway_over_peer"] == {
        "p50": 2.0,
        "p99": 1.5,
    }
    table = jobs.markdown(summary)
    assert "| enqueue | gateway | POST /jobs | 1,000 jobs/s (900\u20131,100) |" in table
    assert "0.4\u00d7" in table


def test_trees_are_named_by_label_or_folder(tmp_path: Path) -> None:
    assert jobs.parse_trees([]) == [("gateway", jobs.ROOT)]
    assert jobs.parse_trees([f"before={tmp_path}", str(tmp_path)]) == [
        ("gateway@before", tmp_path),
        (f"gateway@{tmp_path.name}", tmp_path),
    ]
