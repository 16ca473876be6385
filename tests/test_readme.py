"""The README's commands, run as written on a copy of the project, so the README cannot rot."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import httpx
import orjson
import pytest

from tests.support import free_port, wait_until

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
DEBIAN_PYTHON = Path("/usr/bin/python3")
NOT_SOURCE = shutil.ignore_patterns(
    ".git", ".venv", "node_modules", "build", "dist", "*.egg-info", "__pycache__", ".*_cache"
)


def code_block_after(heading: str) -> str:
    section = README.split(heading, 1)[1]
    match = re.search(r"```sh\n(.*?)```", section, re.S)
    assert match, f"no sh block after {heading!r}"
    return match.group(1).strip()


VENV_SETUP = "python3 -m venv .venv && . .venv/bin/activate && "


def test_ci_runs_the_readme_test_command() -> None:
    command = code_block_after("## Test it")
    assert command.startswith(VENV_SETUP), "the test command sets up its own virtualenv"
    ci = (ROOT / ".ci" / "run").read_text()
    assert command in ci.splitlines(), ".ci/run must run the README's test command verbatim"


def test_readme_says_what_debian_needs() -> None:
    run_section = README.split("## Run it", 1)[1].split("\n## ", 1)[0]
    assert "python3-venv" in run_section


def python3_like_debians(bin_dir: Path) -> None:
    """Put Debian's own (externally managed) python3 first on PATH when this machine has it:
    that is the interpreter on which `pip install` outside a virtualenv fails."""
    bin_dir.mkdir()
    if list(DEBIAN_PYTHON.parent.parent.glob("lib/python3*/EXTERNALLY-MANAGED")):
        (bin_dir / "python3").symlink_to(DEBIAN_PYTHON)
    python3 = shutil.which("python3", path=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    assert python3 is not None
    check = subprocess.run([python3, "-c", "import ensurepip"], capture_output=True)
    if check.returncode != 0:
        pytest.skip(f"{python3} cannot make virtualenvs: apt-get install python3-venv")


@pytest.mark.timeout(600)
def test_run_and_use_commands_work_in_a_fresh_virtualenv(tmp_path: Path) -> None:
    project = tmp_path / "project"
    shutil.copytree(ROOT, project, ignore=NOT_SOURCE)
    python3_like_debians(tmp_path / "bin")
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("GATEWAY_", "VIRTUAL_ENV", "PYTHON", "PIP_")) and k != "REDIS_URL"
    }
    env["PATH"] = f"{tmp_path / 'bin'}{os.pathsep}{env['PATH']}"
    port = free_port()
    env["GATEWAY_PORT"] = str(port)
    run_line = code_block_after("## Run it")
    assert run_line == VENV_SETUP + "pip install -e . && gateway serve"
    log = (tmp_path / "serve.log").open("wb")
    server = subprocess.Popen(
        ["bash", "-c", run_line],
        cwd=project,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:

        def up() -> bool:
            assert server.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(up, 400, "the README's `gateway serve` to answer")
        assert (project / ".venv" / "bin" / "gateway").exists(), "installed in the virtualenv"
        # An editable install serves the checkout's dashboard and client.
        for path, name in (("/", "index.html"), ("/static/gateway.js", "gateway.js")):
            page = httpx.get(f"http://127.0.0.1:{port}{path}")
            assert page.status_code == 200, page.text
            assert page.content == (project / "static" / name).read_bytes()
        use = code_block_after("## Use it").replace("localhost:8000", f"localhost:{port}")
        post = " ".join(line.rstrip("\\").strip() for line in use.splitlines()[:2])
        assert post.startswith("curl -si -X POST")
        response = subprocess.run(shlex.split(post), capture_output=True, text=True, timeout=30)
        assert "202 Accepted" in response.stdout
        job_id = re.search(r"location: /jobs/(\w+)", response.stdout, re.I).group(1)  # type: ignore[union-attr]
        follow = next(line for line in use.splitlines() if line.startswith("curl -N"))
        follow = follow.split("#")[0].strip().replace("3f2c9a...", job_id)
        stream = subprocess.run(shlex.split(follow), capture_output=True, text=True, timeout=30)
        assert stream.returncode == 0
        data = re.findall(r"^data: (.+)$", stream.stdout, re.M)
        events = [orjson.loads(line)["type"] for line in data]
        assert events == ["job.queued", "job.started"] + ["job.progress"] * 6 + ["job.completed"]
        status = httpx.get(f"http://127.0.0.1:{port}/jobs/{job_id}").json()
        assert status["status"] == "completed" and status["result_url"]
        result = httpx.get(f"http://127.0.0.1:{port}{status['result_url']}").json()
        assert result["result"] == {"slept": 3.0, "steps": 6}
    finally:
        os.killpg(server.pid, 15)
        server.wait(20)
        log.close()
