"""`agentgate profiles list|show NAME|validate FILE`: harness profiles (docs/profiles.md).

Profiles are read where the CLI runs, from $AGENTGATE_HOME/profiles (the folder the
services read when they share the home, as `agentgate up` arranges), plus the built-ins.
`show` prints the harness a work order with that profile and no inline settings gets,
as stored with its run.

The profile machinery, yaml and rich load inside the commands, so other commands do not
pay for them at start-up.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from agentgate.client.cli_shared import EXIT_USAGE, JsonFlag, console, err_console, fail

if TYPE_CHECKING:
    from agentgate.harness.profiles import Profile

app = typer.Typer(help="Harness profiles: the built-ins and $AGENTGATE_HOME/profiles/NAME.yaml.", no_args_is_help=True)


def profile_row(name: str, directory: Path) -> dict[str, Any]:
    """One line of `profiles list`: where the profile comes from and whether it resolves."""
    from agentgate.harness import profiles
    from agentgate.harness.profiles import ProfileError
    from agentgate.harness.resolution import resolve
    from agentgate.v1 import common_pb2

    row: dict[str, Any] = {"name": name, "source": "", "extends": "", "description": "", "valid": True, "error": ""}
    try:
        profile = profiles.find_profile(name, directory)
    except ProfileError as exc:
        row.update(source=exc.source, valid=False, error=str(exc))
        return row
    row.update(
        source=profile.source,
        extends=profile.extends,
        description=profile.description,
        overrides_builtin=not profile.builtin and name in profiles.BUILTIN_PROFILES,
    )
    resolution = resolve(common_pb2.HarnessSettings(), directory, prefix="harness", top=profile)
    if resolution.violations:
        row.update(valid=False, error="; ".join(v.description for v in resolution.violations))
    return row


@app.command("list")
def list_profiles(json_output: JsonFlag = False) -> None:
    """The built-in profiles and the profile files, each with its source and whether it is valid."""
    from agentgate.harness import profiles

    directory = profiles.profiles_dir()
    rows = [profile_row(name, directory) for name in profiles.known_profile_names(directory)]
    if json_output:
        print(json.dumps({"directory": str(directory), "profiles": rows}))
        return
    from rich.table import Table

    table = Table("name", "source", "extends", "description", "valid")
    for row in rows:
        source = row["source"] + (" (in place of the built-in)" if row.get("overrides_builtin") else "")
        valid = "yes" if row["valid"] else f"[red]no[/red]: {row['error']}"
        table.add_row(row["name"], source, row["extends"], row["description"], valid)
    console().print(table)
    console().print(f"profile files: {directory}/NAME.yaml")


def _chain_json(chain: list[Profile]) -> list[dict[str, str]]:
    return [{"name": p.name, "source": p.source} for p in chain]


@app.command("show")
def show(
    name: Annotated[str, typer.Argument(help="Profile name.")],
    json_output: JsonFlag = False,
) -> None:
    """The resolved harness of a profile (built-in default < its extends chain), as profile keys."""
    import yaml

    from agentgate.harness import profiles
    from agentgate.harness.resolution import HarnessError, resolve, resolve_harness
    from agentgate.v1 import common_pb2

    directory = profiles.profiles_dir()
    resolution = resolve(common_pb2.HarnessSettings(profile=name), directory, prefix="harness")
    if resolution.violations:
        for violation in resolution.violations:
            err_console().print(f"[red]invalid[/red] {violation.description}")
        raise typer.Exit(EXIT_USAGE)
    try:
        harness = resolve_harness(common_pb2.HarnessSettings(profile=name), directory)
    except HarnessError as exc:  # the files changed between the two reads
        raise fail(str(exc), EXIT_USAGE) from None
    top = resolution.chain[-1]
    settings = profiles.harness_to_dict(harness)
    if json_output:
        out = {
            "name": name,
            "source": top.source,
            "description": top.description,
            "chain": _chain_json(resolution.chain),
            "settings": settings,
        }
        print(json.dumps(out))
        return
    console().print(f"# profile {name} ({top.source})", highlight=False)
    if top.description:
        console().print(f"# {top.description}", highlight=False)
    console().print(f"# resolved: built-in default <- {profiles.describe_chain(resolution.chain)}", highlight=False)
    console().print(yaml.safe_dump(settings, sort_keys=False).rstrip(), highlight=False, markup=False)


@app.command("validate")
def validate(
    file: Annotated[
        Path, typer.Argument(help="A profile file (NAME.yaml); `extends` is looked up in the profiles folder.")
    ],
    json_output: JsonFlag = False,
) -> None:
    """Checks a profile file: its keys and values, its extends chain and the resolved harness.
    Exit 0 when valid, 2 when not (every problem named by its key)."""
    from agentgate.harness import profiles
    from agentgate.harness.profiles import ProfileError
    from agentgate.harness.resolution import resolve
    from agentgate.v1 import common_pb2

    directory = profiles.profiles_dir()
    name = file.name.removesuffix(profiles.PROFILE_SUFFIX)
    problems: list[str] = []
    chain: list[Profile] = []
    try:
        profile = profiles.load_profile_file(file, name)
    except ProfileError as exc:
        problems = [f"{key}: {message}" if key else message for key, message in exc.problems]
    else:
        resolution = resolve(common_pb2.HarnessSettings(), directory, prefix="harness", top=profile)
        problems = [v.description for v in resolution.violations]
        chain = resolution.chain
    if json_output:
        print(
            json.dumps(
                {
                    "file": str(file),
                    "name": name,
                    "valid": not problems,
                    "problems": problems,
                    "chain": _chain_json(chain),
                }
            )
        )
    elif problems:
        err_console().print(f"[red]{file}: invalid profile {name!r}[/red]", highlight=False)
        for problem in problems:
            err_console().print(f"  {problem}", highlight=False, markup=False)
    else:
        console().print(
            f"{file}: valid profile {name!r} (built-in default <- {profiles.describe_chain(chain)})", highlight=False
        )
    if problems:
        raise typer.Exit(EXIT_USAGE)
