"""`agentgate apply` with a hostile stored patch (docs/results.md): the patch is the agent's
work, so it may name paths outside the target or inside `.git`. Each test first shows the
attack works without the protection (`git apply --unsafe-paths`; `patch -p1` for a hook in
`.git`), then that `apply_change` refuses it and writes nothing."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from agentgate.client.results import ApplyRefused, apply_change
from agentgate.v1 import common_pb2

ESCAPE = b"""diff --git a/../escaped.txt b/../escaped.txt
new file mode 100644
--- /dev/null
+++ b/../escaped.txt
@@ -0,0 +1 @@
+owned
"""
HOOK = b"""diff --git a/.git/hooks/post-checkout b/.git/hooks/post-checkout
new file mode 100755
--- /dev/null
+++ b/.git/hooks/post-checkout
@@ -0,0 +1,2 @@
+#!/bin/sh
+touch /tmp/owned-by-agent
"""


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=U", "-c", "user.email=u@example.com", "-c", "init.defaultBranch=main", *args],
        cwd=cwd, check=True, capture_output=True, text=True,
    ).stdout.strip()


def repository(root: Path) -> Path:
    root.mkdir()
    (root / "a.txt").write_text("a\n")
    git(root, "init", "-q")
    git(root, "add", "-A")
    git(root, "commit", "-qm", "start")
    return root


def naive_apply(target: Path, patch: bytes) -> None:
    subprocess.run(["patch", "-p1", "--batch", "--silent"], cwd=target, input=patch, check=False, capture_output=True)


@pytest.mark.parametrize("kind", ["plain", "repository"])
def test_a_patch_escaping_the_target_is_refused(tmp_path: Path, kind: str) -> None:
    naive = tmp_path / "naive"
    (naive / "inner").mkdir(parents=True)
    subprocess.run(
        ["git", "apply", "--unsafe-paths", "-"], cwd=naive / "inner", input=ESCAPE, check=True,
        env={"PATH": "/usr/bin:/bin", "GIT_CEILING_DIRECTORIES": str(naive)},
    )
    assert (naive / "escaped.txt").read_text() == "owned\n"  # the attack works without the path check

    target = tmp_path / "target"
    if kind == "repository":
        repository(target)
        base = git(target, "rev-parse", "HEAD")
    else:
        target.mkdir()
        base = ""
    run = common_pb2.Run(id="run-evil")
    with pytest.raises(ApplyRefused):
        apply_change(run, common_pb2.RunPatch(patch=ESCAPE, from_commit=base), target)
    assert not (tmp_path / "escaped.txt").exists()
    if kind == "repository":
        assert "agentgate/run-evil" not in git(target, "branch", "--list")


@pytest.mark.skipif(shutil.which("patch") is None, reason="the naive baseline needs patch(1)")
def test_a_patch_writing_a_git_hook_is_refused(tmp_path: Path) -> None:
    naive = repository(tmp_path / "naive")
    naive_apply(naive, HOOK)
    assert (naive / ".git" / "hooks" / "post-checkout").exists()  # the attack works without git apply

    target = repository(tmp_path / "target")
    patch = common_pb2.RunPatch(patch=HOOK, from_commit=git(target, "rev-parse", "HEAD"))
    with pytest.raises(ApplyRefused):
        apply_change(common_pb2.Run(id="run-evil"), patch, target, checkout=True)
    assert not (target / ".git" / "hooks" / "post-checkout").exists()
    assert "agentgate/run-evil" not in git(target, "branch", "--list")
