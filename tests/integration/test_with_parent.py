"""services.with_parent: what the supervisor starts ends when the supervisor is killed outright."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0): read its state.
    state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    return state != "Z"


def test_a_child_started_through_it_ends_when_its_parent_is_killed(tmp_path: Path) -> None:
    (tmp_path / "sleeper.py").write_text("import sys, time\nprint(sys.argv[1:], flush=True)\ntime.sleep(120)\n")
    # The parent starts the child as the supervisor does (own session), prints the child's pid, waits.
    parent_code = (
        "import os, subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-m', 'services.with_parent', str(os.getpid()), 'sleeper',"
        " '--port', '7'], start_new_session=True)\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(120)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(tmp_path)])}
    parent = subprocess.Popen([sys.executable, "-c", parent_code], stdout=subprocess.PIPE, text=True, env=env,
                              cwd=ROOT)
    assert parent.stdout is not None
    child_pid = int(parent.stdout.readline())
    assert parent.stdout.readline().strip() == "['--port', '7']"     # the module ran with its arguments

    parent.send_signal(signal.SIGKILL)
    parent.wait(timeout=10)

    deadline = time.monotonic() + 10
    while _alive(child_pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child_pid), "the child outlived its killed parent"


def test_it_refuses_to_start_when_its_parent_is_already_gone() -> None:
    reply = subprocess.run([sys.executable, "-m", "services.with_parent", "1", "json.tool"], cwd=ROOT,
                           capture_output=True, text=True, timeout=30, check=False)
    assert reply.returncode == 1 and "parent process 1 is gone" in reply.stderr
