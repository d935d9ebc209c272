"""The sandbox around every agent execution and gate check (bubblewrap): see docs/sandbox.md.

Plain Python and asyncio. `Sandbox(SandboxSpec(...))` is handed to
`processes.run_process(..., sandbox=...)`, which runs the command inside it.
"""

from agentgate.workspace.sandbox.limits import LIMIT_DISK, LIMIT_MEMORY, LIMIT_PIDS, Limits
from agentgate.workspace.sandbox.proxy import AllowlistProxy, Refusal, host_allowed
from agentgate.workspace.sandbox.runner import Prepared, Sandbox, find_bwrap
from agentgate.workspace.sandbox.spec import SandboxSpec, SandboxUnavailable, bwrap_args

__all__ = [
    "LIMIT_DISK",
    "LIMIT_MEMORY",
    "LIMIT_PIDS",
    "AllowlistProxy",
    "Limits",
    "Prepared",
    "Refusal",
    "Sandbox",
    "SandboxSpec",
    "SandboxUnavailable",
    "bwrap_args",
    "find_bwrap",
    "host_allowed",
]
