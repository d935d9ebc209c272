"""`agentgate submit|exec|demo`: submitting a work order, and following it to its outcome.

`submit` and `exec` take the same ~20 flags: they are the fields of `WorkOrderFlags`,
declared once and given to both commands by `work_order_command`. `demo` is its own sub-app
so that `--help` lists it last, after the commands of cli_work_orders. grpc, rich and the
stubs load inside the commands (see docs/benchmarks.md, "CLI start-up").
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import time
import typing
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from agentgate.client.cli_shared import (
    EXIT_FAILED,
    EXIT_USAGE,
    JsonFlag,
    console,
    err_console,
    fail,
    open_client,
    unreachable,
)
from agentgate.client.cli_work_orders import follow, result_json

if TYPE_CHECKING:
    from agentgate.client.sync_client import AgentGateClient
    from agentgate.v1 import common_pb2

app = typer.Typer()
#: `agentgate demo`, listed after the commands of cli_work_orders.
demo_app = typer.Typer()


@dataclasses.dataclass(frozen=True)
class WorkOrderFlags:
    """The flags of `submit` and `exec`: each field is one option, in the order of `--help`."""

    path: Annotated[Path | None, typer.Option("--path", help="Local directory to work on (copied, never written).")] = (
        None
    )
    git_url: Annotated[str | None, typer.Option("--git-url", help="Git URL to clone instead of --path.")] = None
    ref: Annotated[str | None, typer.Option("--ref", help="Branch, tag or commit of --git-url or --github.")] = None
    include_ignored: Annotated[
        bool, typer.Option("--include-ignored", help="With --path: also copy what git ignores (node_modules, ...).")
    ] = False
    prompt: Annotated[str | None, typer.Option("--prompt", help="The task.")] = None
    prompt_file: Annotated[Path | None, typer.Option("--prompt-file", help="Read the task from a file.")] = None
    agent: Annotated[str, typer.Option("--agent", help="Agent driver: command, scripted, ...")] = ""
    agent_option: Annotated[
        list[str] | None, typer.Option("--agent-option", help="Driver option KEY=VALUE (repeatable).")
    ] = None
    max_iterations: Annotated[int | None, typer.Option("--max-iterations", help="Iterations at most.")] = None
    priority: Annotated[int, typer.Option("--priority", help="Higher runs first.")] = 0
    max_wait: Annotated[int, typer.Option("--max-wait", help="Seconds it may wait in the queue (0 = no limit).")] = 0
    github: Annotated[
        str | None,
        typer.Option("--github", help="GitHub repository owner/name to clone (with AGENTGATE_GITHUB_TOKEN)."),
    ] = None
    git_mode: Annotated[
        str | None, typer.Option("--git-mode", help="Delivery: local (default), push (the run's branch) or pr.")
    ] = None
    github_mode: Annotated[
        str | None,
        typer.Option(
            "--github-mode",
            help="What a failed push/PR does: fail_fast, best_effort or disabled (default: by --git-mode).",
        ),
    ] = None
    draft_pr: Annotated[bool, typer.Option("--draft-pr", help="Open the pull request as a draft.")] = False
    base: Annotated[
        str | None,
        typer.Option("--base", help="Branch the pull request targets (default: --ref, else the default branch)."),
    ] = None
    retry_preset: Annotated[
        str | None, typer.Option("--retry-preset", help="Retry of transient failures: default, aggressive or none.")
    ] = None
    max_attempts: Annotated[
        int | None, typer.Option("--max-attempts", help="Tries of a failing step, the first included (1 = no retry).")
    ] = None
    agent_timeout: Annotated[
        int | None, typer.Option("--agent-timeout", help="Seconds one agent execution may take (default 300).")
    ] = None
    profile: Annotated[
        str | None, typer.Option("--profile", help="Harness profile: default, fast, reliable, ...")
    ] = None
    loop_strategy: Annotated[
        str | None, typer.Option("--loop-strategy", help="Loop strategy: fixed, hybrid or ralph.")
    ] = None
    sandbox: Annotated[
        str | None,
        typer.Option("--sandbox", help="on (default) or off: the explicit opt-out, shown in every status."),
    ] = None
    sandbox_read_only: Annotated[
        list[str] | None,
        typer.Option("--sandbox-read-only", help="An absolute path agents and checks may read (repeatable)."),
    ] = None

    keep_workspace: Annotated[
        bool,
        typer.Option("--keep-workspace", help="Keep the workspace on disk when the run ends (default: deleted)."),
    ] = False

    def spec(self) -> common_pb2.WorkOrderSpec:
        """The work order these flags describe (`UsageError` names a wrong flag)."""
        from agentgate.client.spec_builder import build_spec

        return build_spec(
            prompt=self.prompt,
            prompt_file=self.prompt_file,
            path=self.path,
            git_url=self.git_url,
            ref=self.ref,
            include_ignored=self.include_ignored,
            agent=self.agent,
            agent_options=self.agent_option or [],
            max_iterations=self.max_iterations,
            priority=self.priority,
            max_wait=self.max_wait,
            github=self.github,
            git_mode=self.git_mode,
            github_mode=self.github_mode,
            draft_pr=self.draft_pr,
            base=self.base,
            retry_preset=self.retry_preset,
            max_attempts=self.max_attempts,
            agent_timeout=self.agent_timeout,
            profile=self.profile,
            loop_strategy=self.loop_strategy,
            sandbox=self.sandbox,
            sandbox_read_only=self.sandbox_read_only or [],
            keep_workspace=self.keep_workspace,
        )


def work_order_command(command: Callable[..., None]) -> Callable[..., None]:
    """`command(flags: WorkOrderFlags, **own)` as a function typer can register: its options
    are the fields of WorkOrderFlags, then the command's own parameters after `flags`."""
    flag_types = typing.get_type_hints(WorkOrderFlags, include_extras=True)
    own_types = typing.get_type_hints(command, include_extras=True)
    flag_names = [field.name for field in dataclasses.fields(WorkOrderFlags)]
    keyword = inspect.Parameter.KEYWORD_ONLY
    parameters = [
        inspect.Parameter(field.name, keyword, default=field.default, annotation=flag_types[field.name])
        for field in dataclasses.fields(WorkOrderFlags)
    ]
    own = list(inspect.signature(command).parameters.values())[1:]
    parameters += [p.replace(kind=keyword, annotation=own_types[p.name]) for p in own]

    @functools.wraps(command)
    def registered(**options: Any) -> None:
        command(WorkOrderFlags(**{name: options.pop(name) for name in flag_names}), **options)

    registered.__signature__ = inspect.Signature(parameters, return_annotation=None)  # type: ignore[attr-defined]  # typer reads it
    registered.__annotations__ = {p.name: p.annotation for p in parameters} | {"return": None}
    return registered


def _submit(client: AgentGateClient, flags: WorkOrderFlags) -> common_pb2.WorkOrder:
    import grpc

    from agentgate.client.shared import SubmitError
    from agentgate.client.spec_builder import UsageError

    try:
        spec = flags.spec()
    except UsageError as exc:
        raise fail(str(exc), EXIT_USAGE) from None
    try:
        work_order, _ = client.submit(spec)
    except SubmitError as exc:
        for violation in exc.violations or []:
            err_console().print(f"[red]invalid[/red] {violation.field}: {violation.description}")
        raise fail(f"work order refused ({exc.code.name}): {exc}", EXIT_USAGE) from None
    except grpc.RpcError as exc:
        if exc.code() == grpc.StatusCode.FAILED_PRECONDITION:
            # e.g. the agent's CLI is not installed where the services run.
            raise fail(f"work order refused (FAILED_PRECONDITION): {exc.details()}", EXIT_USAGE) from None
        raise unreachable(exc) from None
    return work_order


@app.command()
@work_order_command
def submit(flags: WorkOrderFlags, json_output: JsonFlag = False) -> None:
    """Submit a work order and return at once."""
    with open_client() as client:
        work_order = _submit(client, flags)
        if json_output:
            from agentgate.client.render import work_order_summary

            print(json.dumps(work_order_summary(work_order)))
        else:
            console().print(f"submitted [bold]{work_order.id}[/bold] (run {work_order.run_id})")


def _final_work_order(client: AgentGateClient, work_order_id: str, wait: float = 30.0) -> common_pb2.WorkOrder:
    """The work order once the queue has recorded its end (the worker completes it just
    after the run's last event)."""
    from agentgate.harness.statuses import TERMINAL_STATUSES

    deadline = time.monotonic() + wait
    while True:
        work_order = client.work_order(work_order_id)
        if work_order.status in TERMINAL_STATUSES or time.monotonic() > deadline:
            return work_order
        time.sleep(0.1)


@app.command(name="exec")
@work_order_command
def exec_(flags: WorkOrderFlags, json_output: JsonFlag = False) -> None:
    """Submit a work order and follow it to the end; exit 0 only when it succeeded."""
    from agentgate.v1 import common_pb2

    with open_client() as client:
        work_order = _submit(client, flags)
        if not json_output:
            console().print(f"submitted [bold]{work_order.id}[/bold] (run {work_order.run_id})")
        follow(client, work_order.id, json_lines=False, quiet=json_output)
        final = _final_work_order(client, work_order.id)
        _print_outcome(client, final, json_output)
        if final.status != common_pb2.WORK_ORDER_STATUS_SUCCEEDED:
            raise typer.Exit(EXIT_FAILED)


def _print_outcome(client: AgentGateClient, work_order: common_pb2.WorkOrder, json_output: bool) -> None:
    from agentgate.client.render import status_name
    from agentgate.v1 import common_pb2

    result = result_json(client, work_order)
    if json_output:
        print(json.dumps(result))
        return
    colour = "green" if work_order.status == common_pb2.WORK_ORDER_STATUS_SUCCEEDED else "red"
    console().print(f"[bold {colour}]{status_name(work_order.status)}[/bold {colour}] {work_order.id}")
    if result.get("error"):
        console().print(f"error: {result['error']}")
    console().print(f"run files: {result['run_dir']}")


@demo_app.command()
def demo(
    keep: Annotated[bool, typer.Option("--keep", help="Leave services started for the demo running.")] = False,
) -> None:
    """Run a scripted agent on a small buggy project: it fails verification in iteration 1 and
    fixes the bug in iteration 2."""
    import tempfile

    from agentgate.client.cli_suite import start_missing
    from agentgate.client.demo import DEMO_PROMPT, make_demo_project
    from agentgate.client.render import workspace_text
    from agentgate.client.supervisor import Supervisor
    from agentgate.v1 import common_pb2

    supervisor = Supervisor()
    root = Path(tempfile.mkdtemp(prefix="agentgate-demo-"))
    project, script = make_demo_project(root)
    console().print(f"[bold]AgentGate demo[/bold]: project {project}")
    started = start_missing(supervisor, timeout=30.0)
    flags = WorkOrderFlags(
        prompt=DEMO_PROMPT, path=project, agent="scripted", agent_option=[f"script={script}"], max_iterations=3
    )
    try:
        with open_client() as client:
            work_order = _submit(client, flags)
            console().print(f"submitted [bold]{work_order.id}[/bold] (run {work_order.run_id})")
            follow(client, work_order.id, json_lines=False, quiet=False)
            final = _final_work_order(client, work_order.id)
            _print_outcome(client, final, json_output=False)
            run = client.run(final.run_id)
            if run is not None:
                console().print(f"iterations: {run.iteration_count}; workspace: {workspace_text(run)}")
            succeeded = final.status == common_pb2.WORK_ORDER_STATUS_SUCCEEDED
    finally:
        if not keep:
            for name in supervisor.stop_order(started):
                supervisor.stop(name)
    if not succeeded:
        raise typer.Exit(EXIT_FAILED)
