"""Installed from a wheel (what `pip install .`, a Docker image or a PaaS build does), the gateway
serves its dashboard and browser client, and `--handlers` finds modules in the working directory.

The wheel is built from a copy of this checkout and installed into a fresh virtualenv that sees
the test environment's packages (a `.pth` line, so no dependency is downloaded); the
gateway under test is the wheel's, never the checkout's, which the tests assert.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.support import free_port, gateway_env, wait_until

ROOT = Path(__file__).resolve().parent.parent
NOT_SOURCE = shutil.ignore_patterns(
    ".git",
    ".venv",
    "node_modules",
    "build",
    "dist",
    "*.egg-info",
    "__pycache__",
    ".*_cache",
    ".hypothesis",
    ".schemathesis",
    "test-artifacts",
)


class InstalledGateway:
    """A virtualenv with the gateway installed from a freshly built wheel."""

    def __init__(self, venv: Path, wheel: Path) -> None:
        self.venv = venv
        self.wheel = wheel
        self.bin = venv / "bin"

    def env(self, **extra: str) -> dict[str, str]:
        """The test environment minus anything that would import the checkout instead."""
        env = {
            k: v
            for k, v in gateway_env(**extra).items()
            if k not in {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"}
        }
        env["PATH"] = f"{self.bin}{os.pathsep}{env.get('PATH', '')}"
        return env


def _run(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{args}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> InstalledGateway:
    if importlib.util.find_spec("ensurepip") is None:
        pytest.skip(f"{sys.executable} cannot make virtualenvs: apt-get install python3-venv")
    work = tmp_path_factory.mktemp("install")
    source = work / "source"
    shutil.copytree(ROOT, source, ignore=NOT_SOURCE)
    _run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(work / "dist"), "."],
        source,
    )
    (wheel,) = (work / "dist").glob("gateway-*.whl")
    venv = work / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], work)
    # The dependencies come from the test environment's own site-packages, added by a .pth
    # line (after the venv's own, so the wheel's gateway wins; the test environment's .pth
    # files, such as an editable install's, are not run). `--system-site-packages` would give
    # the base interpreter's packages instead, which a test virtualenv does not have.
    venv_purelib = Path(
        sysconfig.get_paths(vars={"base": str(venv), "platbase": str(venv)})["purelib"]
    )
    (venv_purelib / "test_environment.pth").write_text(
        "\n".join(sorted({sysconfig.get_paths()[k] for k in ("purelib", "platlib")})) + "\n"
    )
    installed = InstalledGateway(venv, wheel)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps"]
    _run([*pip, "--ignore-installed", str(wheel)], work, installed.env())
    return installed


@contextlib.contextmanager
def _serve(
    installed: InstalledGateway, cwd: Path, *args: str, env: dict[str, str] | None = None
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """`gateway serve` from the venv's own console script, in `cwd`."""
    port = free_port()
    log = cwd / f"serve-{port}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(installed.bin / "gateway"), "serve", "--port", str(port), *args],
            cwd=cwd,
            env=installed.env(**(env or {})),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        assert process.poll() is None, log.read_text()
        try:
            return httpx.get(f"{url}/readyz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(ready, 30, "the installed gateway to start")
        yield url, process
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def test_the_wheel_holds_every_module_and_static_file(installed: InstalledGateway) -> None:
    names = set(zipfile.ZipFile(installed.wheel).namelist())
    modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / "gateway").rglob("*.py")}
    assert modules - names == set(), "add the missing packages to [tool.setuptools] packages"
    static = {f"gateway/static/{p.name}" for p in (ROOT / "static").iterdir() if p.is_file()}
    assert {"gateway/static/index.html", "gateway/static/gateway.js"} <= static
    assert static - names == set()


def test_installed_wheel_serves_dashboard_and_client(
    installed: InstalledGateway, tmp_path: Path
) -> None:
    where = _run(
        [str(installed.bin / "python"), "-c", "import gateway; print(gateway.__file__)"],
        tmp_path,
        installed.env(),
    )
    assert Path(where.strip()).is_relative_to(installed.venv), where
    with _serve(installed, tmp_path) as (url, _):
        index = httpx.get(f"{url}/")
        assert index.status_code == 200, index.text
        assert index.headers["content-type"].startswith("text/html")
        assert index.content == (ROOT / "static" / "index.html").read_bytes()
        client = httpx.get(f"{url}/static/gateway.js")
        assert client.status_code == 200, client.text
        assert "javascript" in client.headers["content-type"]
        assert client.content == (ROOT / "static" / "gateway.js").read_bytes()
        for path in (ROOT / "static").iterdir():
            served = httpx.get(f"{url}/static/{path.name}")
            assert (served.status_code, served.content) == (200, path.read_bytes()), path.name


def test_handlers_module_in_the_working_directory(
    installed: InstalledGateway, tmp_path: Path
) -> None:
    """The README's own handler example, as written, loaded by `--handlers myapp.handlers`
    from the project directory with no PYTHONPATH (the console script's sys.path does not
    hold the working directory)."""
    _write_readme_handlers(tmp_path)
    with _serve(installed, tmp_path, "--handlers", "myapp.handlers") as (url, process):
        types = httpx.get(f"{url}/job-types").json()["job_types"]
        assert "resize" in {job_type["name"] for job_type in types}
        _resize_completes(url)
        assert process.poll() is None


def test_worker_handlers_module_in_the_working_directory(
    installed: InstalledGateway, tmp_path: Path, redis_url: str
) -> None:
    """`gateway worker --handlers myapp.handlers`, the README's command, on Redis (the gateway
    gets the same modules: it checks submissions against the job types it knows; with Redis it
    runs no embedded worker, so the job runs on the worker)."""
    _write_readme_handlers(tmp_path)
    with (
        (tmp_path / "worker.log").open("wb") as log,
        _serve(
            installed, tmp_path, "--handlers", "myapp.handlers", env={"REDIS_URL": redis_url}
        ) as (url, _),
    ):
        worker = subprocess.Popen(
            [str(installed.bin / "gateway"), "worker", "--handlers", "myapp.handlers"],
            cwd=tmp_path,
            env=installed.env(REDIS_URL=redis_url),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:

            def worker_alive() -> None:
                assert worker.poll() is None, (tmp_path / "worker.log").read_text()

            _resize_completes(url, worker_alive)
        finally:
            worker.terminate()
            worker.wait(20)


def _write_readme_handlers(directory: Path) -> None:
    """The README's handler example, as written, at the path it names (no __init__.py)."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("### Your own job handlers", 1)[1]
    match = re.search(r"```python\n# (myapp/handlers\.py)\n(.*?)```", section, re.S)
    assert match, "the README's handler example moved"
    module = directory / match.group(1)
    module.parent.mkdir()
    module.write_text(match.group(2))


def _resize_completes(url: str, check: Callable[[], None] = lambda: None) -> None:
    refused = httpx.post(f"{url}/jobs", json={"type": "resize", "data": {}})
    assert refused.status_code == 422, refused.text  # the README's input model is in force
    assert refused.json()["errors"][0]["loc"] == "data.url", refused.text
    data = {"url": "https://example.com/cat.png", "width": 64}
    accepted = httpx.post(f"{url}/jobs", json={"type": "resize", "data": data})
    assert accepted.status_code == 202, accepted.text
    job_url = f"{url}/jobs/{accepted.json()['id']}"

    def completed() -> bool:
        check()
        job = httpx.get(job_url).json()
        assert job["status"] not in {"failed", "cancelled"}, job
        return bool(job["status"] == "completed")

    wait_until(completed, 30, "the README's resize handler to complete the job")
    assert httpx.get(f"{job_url}/result").json()["result"] == {"ok": True, "width": 64}
