"""Whether a process id still names a live process: the supervisor's pid files and the
sandbox's sweep of cgroups left by crashed services both ask it."""

from __future__ import annotations

import os


def pid_alive(pid: int) -> bool:
    """Whether process `pid` exists (one of another user counts). A zombie child of ours
    still answers kill(0), so it is reaped here and reported dead."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return True
