"""The gateway server imports no job-queue library and no integration: they are extras for
the users' own processes."""

from __future__ import annotations

import subprocess
import sys

CHECK = """
import sys
import gateway, gateway.app, gateway.cli, gateway.jobs.worker
loaded = [m for m in sys.modules if m.split(".")[0] in {"celery", "kombu", "rq", "arq"}
          or m.startswith("gateway.integrations")]
print(loaded)
sys.exit(1 if loaded else 0)
"""


def test_the_server_imports_no_queue_library() -> None:
    answer = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True)
    assert answer.returncode == 0, answer.stdout + answer.stderr
