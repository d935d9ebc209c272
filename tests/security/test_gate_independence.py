"""The gate is independent of the change it judges (docs/security.md): each attack is a real
`command` agent run through the four real services in one event loop.

The project's plan (verify.yaml, in the base commit) runs its unit test. Each attack breaks
the code and then tries to weaken the gate from inside its own snapshot: rewrite the plan,
delete it, allowlist its own secret, edit CI, leave nothing to verify, or steer plan
detection. Each test shows the attack held, and shows what it would have achieved without
the protection: the run that passes when the agent's plan is what the harness gives
(which is what the gate did when it read the snapshot's plan), or when the profile allows
the protected change.
"""

from __future__ import annotations

import json
import shlex
import sys
import textwrap
from pathlib import Path

import pytest

from agentgate.v1 import common_pb2
from tests.integration.inprocess_suite import InProcessSuite

PY = shlex.quote(sys.executable)
GOOD_CALC = "def add(a, b):\n    return a + b\n"
TEST_CALC = "from calc import add\n\n\ndef test_add():\n    assert add(2, 3) == 5\n"
BASE_PLAN = f'tests:\n  - {{name: unit, kind: test, command: "{sys.executable} -m pytest -q -p no:cacheprovider test_calc.py"}}\n'
#: The plan an attacker wants: a check that always passes and no secret scan.
WEAK_PLAN = 'tests: [{name: unit, command: "true"}]\nsecurity: {enabled: false}\n'
AWS_KEY = "AKIA" + "QWERTYUIOPASDFGH"  # split so this file itself holds no key
#: The base plan plus an allowlist entry for the agent's own secret.
ALLOWLISTING_PLAN = BASE_PLAN + "security:\n  allowlist: [{path: settings.py}]\n"
BREAK = "open('calc.py', 'w').write('def add(a, b):\\n    return a - b\\n')\n"


@pytest.fixture
async def suite(home: Path):
    running = await InProcessSuite.start(home)
    yield running
    await running.stop()


def project(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def planned_project(tmp_path: Path) -> Path:
    return project(tmp_path / "project", {"calc.py": GOOD_CALC, "test_calc.py": TEST_CALC, "verify.yaml": BASE_PLAN})


def agent(tmp_path: Path, body: str) -> str:
    """The command of an agent running the Python `body` in its workspace."""
    # Its own folder, named read-only for the sandbox as a user's agent script would be.
    script = tmp_path / "agent-bin" / f"agent-{abs(hash(body))}.py"
    script.parent.mkdir(exist_ok=True)
    script.write_text("import os\n" + body)
    return f"{PY} {shlex.quote(str(script))}"


async def run(
    suite: InProcessSuite,
    root: Path,
    command: str,
    profile: str = "",
    **verification: object,
) -> tuple[int, dict]:
    """One iteration of the agent; the work order's status and its verification report."""
    spec = common_pb2.WorkOrderSpec(
        task_prompt="Fix add()",
        agent=common_pb2.AgentSpec(name="command", options={"command": command}),
    )
    spec.source.local_path = str(root)
    spec.harness.loop_strategy.max_iterations = 1
    spec.harness.profile = profile
    spec.harness.sandbox.read_only_paths.append(str(Path(shlex.split(command)[-1]).parent))
    spec.harness.verification.MergeFrom(common_pb2.VerificationSettings(**verification))  # type: ignore[arg-type]
    work_order = await suite.submit(spec)
    final = await suite.wait_terminal(work_order.id, timeout=120)
    report = json.loads((suite.home / "runs" / work_order.run_id / "verification-1.json").read_text())
    return final.status, report


def failed(report: dict) -> dict[str, str]:
    """Failed checks of a report: name -> output."""
    return {
        check["name"]: check.get("output", "")
        for level in report["levels"]
        for check in level.get("checks", [])
        if not check.get("passed", False)
    }


def allow_profile(home: Path, name: str, *globs: str) -> str:
    folder = home / "profiles"
    folder.mkdir(exist_ok=True)
    (folder / f"{name}.yaml").write_text(f"verification: {{allow_protected_changes: {json.dumps(list(globs))}}}\n")
    return name


FAILED = common_pb2.WORK_ORDER_STATUS_FAILED
SUCCEEDED = common_pb2.WORK_ORDER_STATUS_SUCCEEDED


async def test_rewritten_plan_is_ignored_and_named(suite: InProcessSuite, tmp_path: Path) -> None:
    root = planned_project(tmp_path)
    attack = agent(tmp_path, BREAK + f"open('verify.yaml', 'w').write({WEAK_PLAN!r})\n")

    status, report = await run(suite, root, attack)
    assert status == FAILED
    assert "protected:verify.yaml" in failed(report), report["summary"]
    assert "protected:verify.yaml" in report["summary"]

    # Allowed to change the file, the agent still faces the base commit's plan.
    status, report = await run(suite, root, attack, profile=allow_profile(suite.home, "plan-ok", "/verify.yaml"))
    assert status == FAILED
    assert list(failed(report)) == ["unit"] and "1 failed" in failed(report)["unit"]

    # Without the protection: the agent's own plan (given here as the plan the gate uses)
    # accepts the broken code.
    status, report = await run(suite, root, attack, profile="plan-ok", gate_plan_yaml=WEAK_PLAN)
    assert status == SUCCEEDED, report["summary"]


async def test_deleted_plan_is_still_the_plan(suite: InProcessSuite, tmp_path: Path) -> None:
    root = planned_project(tmp_path)
    attack = agent(tmp_path, BREAK + "os.remove('verify.yaml')\n")

    status, report = await run(suite, root, attack)
    assert status == FAILED and "protected:verify.yaml" in failed(report)

    status, report = await run(suite, root, attack, profile=allow_profile(suite.home, "plan-ok", "/verify.yaml"))
    assert status == FAILED and list(failed(report)) == ["unit"]
    assert report["gate_plan_source"] == "verify.yaml"

    # Without the protection the gate sees no plan at all: it passes only when the work
    # order accepts an unverified change (before, it always did).
    bare = project(tmp_path / "bare", {"calc.py": GOOD_CALC})
    status, report = await run(suite, bare, agent(tmp_path, BREAK), allow_unverified=True)
    assert status == SUCCEEDED and report["gate_plan_source"] == "none"


async def test_agent_cannot_allowlist_its_own_secret(suite: InProcessSuite, tmp_path: Path) -> None:
    root = planned_project(tmp_path)
    attack = agent(
        tmp_path,
        f"open('settings.py', 'w').write({f'KEY = {AWS_KEY!r}' + chr(10)!r})\n"
        f"open('verify.yaml', 'w').write({ALLOWLISTING_PLAN!r})\n",
    )
    # The profile lets the plan file change, so the secret scan alone must hold.
    profile = allow_profile(suite.home, "plan-ok", "/verify.yaml")
    status, report = await run(suite, root, attack, profile=profile)
    assert status == FAILED
    assert list(failed(report)) == ["security-scan"]
    assert "settings.py:1: aws-access-key" in failed(report)["security-scan"]

    # Without the protection: the agent's allowlist, trusted, silences its secret.
    status, report = await run(suite, root, attack, profile=profile, gate_plan_yaml=ALLOWLISTING_PLAN)
    assert status == SUCCEEDED, report["summary"]


async def test_ci_workflow_change_fails_l0_unless_the_profile_allows_it(suite: InProcessSuite, tmp_path: Path) -> None:
    root = planned_project(tmp_path)
    attack = agent(
        tmp_path,
        "os.makedirs('.github/workflows', exist_ok=True)\n"
        "open('.github/workflows/x.yml', 'w').write('on: push\\njobs: {}\\n')\n",
    )
    status, report = await run(suite, root, attack)
    assert status == FAILED
    assert "the protected path .github/workflows/x.yml" in failed(report)["protected:.github/workflows/x.yml"]
    assert report["summary"].startswith("L0 failed")

    status, report = await run(suite, root, attack, profile=allow_profile(suite.home, "ci-ok", ".github/workflows/"))
    assert status == SUCCEEDED, report["summary"]


async def test_extra_protected_paths_from_the_harness(suite: InProcessSuite, tmp_path: Path) -> None:
    root = planned_project(tmp_path)
    attack = agent(tmp_path, "open('test_calc.py', 'w').write('def test_add():\\n    pass\\n')\n")
    status, report = await run(suite, root, attack, protected_paths=["test_*.py"])
    assert status == FAILED and "protected:test_calc.py" in failed(report)

    # Without the extra glob the weakened test passes.
    status, report = await run(suite, root, attack)
    assert status == SUCCEEDED, report["summary"]


async def test_nothing_verified_fails_unless_the_work_order_allows_it(suite: InProcessSuite, tmp_path: Path) -> None:
    bare = project(tmp_path / "bare", {"calc.py": GOOD_CALC})
    attack = agent(tmp_path, BREAK)
    status, report = await run(suite, bare, attack)
    assert status == FAILED
    assert "nothing was verified" in failed(report)["nothing-verified"]

    status, report = await run(suite, bare, attack, allow_unverified=True)
    assert status == SUCCEEDED and "allow_unverified" in report["summary"]


async def test_detection_judges_the_base_commit(suite: InProcessSuite, tmp_path: Path) -> None:
    # No plan: the gate detects pytest from the base commit's test file. The agent adds a
    # Makefile whose `test` target does nothing: read from the snapshot, detection would
    # prefer `make test` to pytest.
    makefile = "test:\n\ttrue\n"
    root = project(tmp_path / "detected", {"calc.py": GOOD_CALC, "test_calc.py": TEST_CALC})
    attack = agent(tmp_path, BREAK + f"open('Makefile', 'w').write({makefile!r})\n")
    status, report = await run(suite, root, attack)
    assert status == FAILED
    assert report["gate_plan_source"] == "detected" and list(failed(report)) == ["pytest"]

    # Without the protection: with that Makefile among the detection inputs, the broken
    # code passes.
    steered = project(
        tmp_path / "steered", {"calc.py": GOOD_CALC, "test_calc.py": TEST_CALC, "Makefile": textwrap.dedent(makefile)}
    )
    status, report = await run(suite, steered, agent(tmp_path, BREAK))
    assert status == SUCCEEDED and "Makefile (test target)" in report["summary"]
