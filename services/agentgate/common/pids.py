"""Whether a process id still names a live process: the supervisor's pid files and the
sandbox's sweep of cgroups left by crashed services both ask it."""

from __future__ import annotations

import os


def pid_alive(pid: int) -> bool:
    """Whether process `pid` exists (one of another user counts). A zombie still answers
    kill(0): one that is our child is reaped here, any other (a detached service waiting
    for init to reap it) is read from /proc; both are reported dead."""
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
        return not _zombie(pid)


def _zombie(pid: int) -> bool:
    """Whether /proc says `pid` has exited and waits to be reaped (False where /proc is absent)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat_file:
            stat = stat_file.read()
    except OSError:
        return False
    # The state follows the command name, which is in parentheses and may hold ") " itself.
    end = stat.rfind(b")")
    return stat[end + 2 : end + 3] == b"Z"
