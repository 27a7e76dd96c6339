"""Run a module as __main__ in a process that ends when its parent does.

    python -m services.with_parent PARENT_PID MODULE [ARGS...]

The supervisor starts every component through this, so that a supervisor killed outright
(SIGKILL) leaves no component behind: the kernel sends the child SIGTERM when its parent dies
(PR_SET_PDEATHSIG). It is set here, in the child, rather than in a `preexec_fn`: that runs between
fork and exec in the supervisor's copy, where gRPC's fork handlers (the supervisor polls health
over gRPC) aborted a starting component now and then ("ev_epoll1_linux.cc Check failed:
wakeup_fd_->ConsumeWakeup().ok()", status -6).
"""

from __future__ import annotations

import ctypes
import os
import runpy
import signal
import sys

_PR_SET_PDEATHSIG = 1


def end_with_parent(parent_pid: int) -> None:
    """Ask for SIGTERM when the parent dies; exit now if it already has (we were re-parented)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:   # not Linux / glibc: the supervisor still stops its children on Ctrl-C
        return
    if os.getppid() != parent_pid:
        sys.exit(f"parent process {parent_pid} is gone; not starting")


def main() -> None:
    if len(sys.argv) < 3:
        sys.exit("usage: python -m services.with_parent PARENT_PID MODULE [ARGS...]")
    end_with_parent(int(sys.argv[1]))
    module = sys.argv[2]
    sys.argv = [module, *sys.argv[3:]]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
