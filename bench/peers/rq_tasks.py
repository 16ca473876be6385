"""RQ's no-op job (its default forking worker, `rq worker`, runs it)."""

from __future__ import annotations


def noop() -> None:
    return None
