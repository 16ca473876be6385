"""static/gateway.d.ts: type-checked by TypeScript against an example; in step with the module."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NODE_DIR = ROOT / "tests" / "node"
STATIC = ROOT / "static"


def _node_tools() -> Path:
    if shutil.which("node") is None:
        pytest.skip("node is not installed: apt-get install nodejs")
    tsc = NODE_DIR / "node_modules" / ".bin" / "tsc"
    if not tsc.exists():
        reason = "tests/node/node_modules is absent: npm ci --prefix tests/node"
        if os.environ.get("CI"):
            pytest.fail(f"{reason} (CI is set, so the TypeScript check must run)", pytrace=False)
        pytest.skip(reason)
    return tsc


def test_the_example_type_checks_against_the_declarations() -> None:
    """`tsc --noEmit` over tests/node/gateway_example.ts, which uses every part of the API and
    expects the mistakes it marks (`@ts-expect-error`) to be refused."""
    _node_tools()
    result = subprocess.run(
        ["npx", "--no-install", "tsc", "--noEmit", "-p", str(NODE_DIR / "tsconfig.json")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=NODE_DIR,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _exports(text: str) -> set[str]:
    pattern = r"^export\s+(?:declare\s+)?(?:async\s+)?(?:function|class|const|let)\s+(\w+)"
    return set(re.findall(pattern, text, re.M))


def test_every_export_of_the_module_is_declared() -> None:
    module = _exports((STATIC / "gateway.js").read_text())
    declared = _exports((STATIC / "gateway.d.ts").read_text())
    assert module == declared
