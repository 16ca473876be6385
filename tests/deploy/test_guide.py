"""docs/deployment.md shows the files in deploy/ as they are; the systemd units are valid and
start commands the CLI accepts; the README points to the guide."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "docs" / "deployment.md"
SHOWN = [
    *sorted(p for p in (ROOT / "deploy").rglob("*") if p.is_file()),
    ROOT / "Procfile",
]
UNITS = sorted((ROOT / "deploy" / "systemd").glob("*.service"))


def code_blocks(markdown: str) -> list[str]:
    return re.findall(r"^```[a-z]*\n(.*?)^```$", markdown, flags=re.S | re.M)


@pytest.mark.parametrize("path", SHOWN, ids=lambda p: str(p.relative_to(ROOT)))
def test_the_guide_shows_each_file_as_it_is(path: Path) -> None:
    assert path.read_text() in code_blocks(GUIDE.read_text()), (
        f"docs/deployment.md must show {path.relative_to(ROOT)} verbatim in a code block"
    )


def test_the_readme_points_to_the_guide() -> None:
    assert "(docs/deployment.md)" in (ROOT / "README.md").read_text()


def exec_start(unit: Path) -> list[str]:
    line = next(x for x in unit.read_text().splitlines() if x.startswith("ExecStart="))
    return shlex.split(line.removeprefix("ExecStart=").replace("%i", "8001"))


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_a_unit_starts_a_command_the_cli_accepts(unit: Path) -> None:
    program, *args = exec_start(unit)
    assert program == "/opt/gateway/.venv/bin/gateway"
    parsed = build_parser().parse_args(args)
    assert parsed.command in ("serve", "worker")


def test_systemd_accepts_the_units(tmp_path: Path) -> None:
    """`systemd-analyze verify` on the units, with the installed `gateway` in place of the
    /opt path the guide installs to (it checks that the program exists)."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        reason = "systemd-analyze is not installed: apt-get install systemd"
        if os.environ.get("CI"):
            pytest.fail(f"{reason} (CI is set, so the deployment tests must run)", pytrace=False)
        pytest.skip(reason)
    program = Path(sys.executable).with_name("gateway")
    assert program.exists(), "pip install -e . puts the gateway command beside python"
    copies = []
    for unit in UNITS:
        name = unit.name.replace("@.", "@8001.")
        text = unit.read_text().replace("/opt/gateway/.venv/bin/gateway", str(program))
        (tmp_path / name).write_text(text)
        copies.append(str(tmp_path / name))
    done = subprocess.run(
        [analyze, "verify", "--man=no", *copies], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and done.stderr.strip() == "", done.stderr
