"""Harness profiles (docs/profiles.md): built-ins, YAML files with `extends`, resolution order,
and every bad key or value refused with the key named."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from agentgate.harness import profiles
from agentgate.harness.profiles import ProfileError, find_profile, harness_to_dict, parse_profile
from agentgate.harness.resolution import HarnessError, resolve, resolve_harness
from agentgate.v1 import common_pb2

M = common_pb2.LoopStrategyMode


@pytest.fixture
def pdir(tmp_path: Path) -> Path:
    path = tmp_path / "profiles"
    path.mkdir()
    return path


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / f"{name}.yaml"
    path.write_text(text)
    return path


def resolved(directory: Path | None, **inline) -> common_pb2.HarnessSettings:
    result = resolve(common_pb2.HarnessSettings(**inline), directory)
    assert result.violations == []
    return result.harness


def violations(directory: Path | None, harness: common_pb2.HarnessSettings) -> list[tuple[str, str]]:
    return [(v.field, v.description) for v in resolve(harness, directory).violations]


class TestBuiltins:
    def test_default(self, pdir):
        harness = resolved(pdir)
        assert harness.profile == "default"
        loop = harness.loop_strategy
        assert (loop.mode, loop.max_iterations, loop.no_change_limit) == (M.LOOP_STRATEGY_MODE_FIXED, 3, 2)
        assert (harness.limits.max_wall_clock_seconds, harness.limits.agent_timeout_seconds) == (3600, 300)
        assert not harness.limits.HasField("max_total_tokens")
        assert harness.retry.preset == "default"

    def test_fast_is_one_fixed_iteration_without_retry(self, pdir):
        harness = resolved(pdir, profile="fast")
        assert (harness.loop_strategy.mode, harness.loop_strategy.max_iterations) == (M.LOOP_STRATEGY_MODE_FIXED, 1)
        assert harness.retry.preset == "none"

    def test_reliable_is_hybrid_with_aggressive_retry(self, pdir):
        loop = (harness := resolved(pdir, profile="reliable")).loop_strategy
        assert loop.mode == M.LOOP_STRATEGY_MODE_HYBRID
        assert (loop.base_iterations, loop.max_bonus_iterations, loop.max_iterations) == (3, 2, 5)
        assert loop.progress_threshold == pytest.approx(0.1)
        assert harness.retry.preset == "aggressive"

    def test_ralph_defaults(self, pdir):
        loop = resolved(pdir, loop_strategy=common_pb2.LoopStrategySettings(mode=M.LOOP_STRATEGY_MODE_RALPH)).loop_strategy
        assert (loop.min_iterations, loop.max_iterations, loop.window_size) == (2, 10, 3)
        assert loop.convergence_threshold == pytest.approx(0.95)

    def test_orchestrator_resolution_adds_delivery_and_retry_numbers(self, pdir):
        harness = resolve_harness(common_pb2.HarnessSettings(profile="reliable"), pdir)
        assert harness.retry.max_attempts == 6  # the aggressive preset's numbers filled in
        assert harness.git_ops.mode == common_pb2.GIT_MODE_LOCAL


class TestFilesAndResolutionOrder:
    def test_default_less_than_chain_less_than_inline(self, pdir):
        write(pdir, "team", """
description: the team's settings
loop_strategy: {mode: ralph, max_iterations: 8, window_size: 4}
limits: {max_total_tokens: 50000, agent_timeout_seconds: 120}
verification: {skip_levels: [L3], gate_plan_source: auto}
retry: {preset: aggressive, max_attempts: 4}
""")
        write(pdir, "team-strict", """
extends: team
loop_strategy: {convergence_threshold: 0.99, completion_signals: ["TASK COMPLETE"]}
limits: {max_total_tokens: 20000, max_cost_usd: 2.5}
git_ops: {mode: push, branch_pattern: "ai/{run_id}", draft_pr: true, github_mode: best-effort}
""")
        inline = common_pb2.HarnessSettings(profile="team-strict")
        inline.limits.agent_timeout_seconds = 60
        inline.loop_strategy.window_size = 5
        result = resolve(inline, pdir)
        assert result.violations == []
        assert [p.name for p in result.chain] == ["team", "team-strict"]
        harness = result.harness
        loop = harness.loop_strategy
        assert harness.profile == "team-strict"
        assert loop.mode == M.LOOP_STRATEGY_MODE_RALPH  # from team
        assert loop.max_iterations == 8  # team
        assert loop.window_size == 5  # inline beats team
        assert loop.convergence_threshold == pytest.approx(0.99)  # team-strict
        assert loop.min_iterations == 2  # ralph's default fills the rest
        assert list(loop.completion_signals) == ["TASK COMPLETE"]
        assert harness.limits.max_total_tokens == 20000  # team-strict beats team
        assert harness.limits.max_cost_usd == pytest.approx(2.5)
        assert harness.limits.agent_timeout_seconds == 60  # inline beats team
        assert harness.limits.max_wall_clock_seconds == 3600  # built-in default
        assert list(harness.verification.skip_levels) == ["L3"]
        assert harness.verification.gate_plan_source == common_pb2.GATE_PLAN_SOURCE_AUTO
        assert (harness.retry.preset, harness.retry.max_attempts) == ("aggressive", 4)
        assert harness.git_ops.mode == common_pb2.GIT_MODE_PUSH
        assert harness.git_ops.github_mode == common_pb2.GIT_HUB_MODE_BEST_EFFORT
        assert harness.git_ops.branch_pattern == "ai/{run_id}" and harness.git_ops.draft_pr

    def test_a_file_takes_the_place_of_a_builtin(self, pdir):
        write(pdir, "fast", "loop_strategy: {max_iterations: 2}\n")
        assert find_profile("fast", pdir).source == str(pdir / "fast.yaml")
        harness = resolved(pdir, profile="fast")
        assert harness.loop_strategy.max_iterations == 2 and harness.retry.preset == "default"

    def test_lists_replace(self, pdir):
        write(pdir, "base", "verification: {skip_levels: [L2, L3]}\n")
        write(pdir, "child", "extends: base\nverification: {skip_levels: [L0]}\n")
        assert list(resolved(pdir, profile="child").verification.skip_levels) == ["L0"]

    def test_changing_the_mode_starts_its_parameters_afresh(self, pdir):
        write(pdir, "r", "loop_strategy: {mode: ralph, window_size: 4, no_change_limit: 5}\n")
        write(pdir, "h", "extends: r\nloop_strategy: {mode: hybrid, base_iterations: 2}\n")
        loop = resolved(pdir, profile="h").loop_strategy
        assert loop.mode == M.LOOP_STRATEGY_MODE_HYBRID
        assert not loop.HasField("window_size")
        assert (loop.base_iterations, loop.max_bonus_iterations, loop.max_iterations) == (2, 2, 4)
        assert loop.no_change_limit == 5  # shared by every strategy: kept

    def test_changing_the_retry_preset_starts_its_numbers_afresh(self, pdir):
        write(pdir, "a", "retry: {preset: aggressive, max_attempts: 9}\n")
        write(pdir, "b", "extends: a\nretry: {preset: none}\n")
        retry = resolved(pdir, profile="b").retry
        assert retry.preset == "none" and retry.max_attempts == 1  # none's, not a's 9

    def test_empty_file_is_an_empty_profile(self, pdir):
        write(pdir, "blank", "")
        assert resolved(pdir, profile="blank").loop_strategy.max_iterations == 3


class TestRefusals:
    def test_unknown_top_level_key(self, pdir):
        path = write(pdir, "x", "loop: {mode: fixed}\n")
        [(field, message)] = violations(pdir, common_pb2.HarnessSettings(profile="x"))
        assert field == "spec.harness.profile"
        assert message.startswith(f"profile 'x' ({path}): loop: unknown key (known keys: extends, description,")

    def test_unknown_nested_key(self, pdir):
        write(pdir, "x", "loop_strategy: {mood: fixed}\n")
        [(_, message)] = violations(pdir, common_pb2.HarnessSettings(profile="x"))
        assert "loop_strategy.mood: unknown key (known keys: mode, max_iterations," in message

    def test_bad_enum_value(self, pdir):
        write(pdir, "x", "loop_strategy: {mode: turbo}\ngit_ops: {github_mode: maybe}\n")
        [(_, message)] = violations(pdir, common_pb2.HarnessSettings(profile="x"))
        assert "loop_strategy.mode: unknown value 'turbo' (expected one of fixed, hybrid, ralph)" in message
        assert "git_ops.github_mode: unknown value 'maybe' (expected one of fail_fast, best_effort, disabled)" in message

    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("limits: {max_total_tokens: lots}", "limits.max_total_tokens: must be an integer, got 'lots'"),
            ("limits: {max_cost_usd: -1}", "limits.max_cost_usd: must be 0 or more, got -1"),
            ("limits: {network_allowed: 1}", "limits.network_allowed: must be true or false, got 1"),
            ("limits: {network_allowed: true}", "limits.network_allowed: true is not supported"),
            ("sandbox: maybe", "sandbox.mode: unknown value 'maybe' (expected one of on, off)"),
            ("sandbox: {read_only_paths: [relative/dir]}", "sandbox.read_only_paths: must be absolute paths"),
            ("sandbox: {allowed_hosts: ['evil host']}", "sandbox.allowed_hosts: must be host names (or *.domain)"),
            ("sandbox: {max_processes: -1}", "sandbox.max_processes: must be greater than 0"),
            ("sandbox: {writable_paths: [/]}", "sandbox.writable_paths: unknown key"),
            ("loop_strategy: {progress_threshold: 1.5}", "loop_strategy.progress_threshold: must be greater than 0 and at most 1"),
            ("loop_strategy: {max_iterations: 0}", "loop_strategy.max_iterations: must be between 1 and 100, got 0"),
            ("loop_strategy: {window_size: 1}", "loop_strategy.window_size: must be between 2 and 100, got 1"),
            ("loop_strategy: {completion_signals: ['']}", "loop_strategy.completion_signals: a completion signal must not be blank"),
            ("verification: {skip_levels: [L9]}", "verification.skip_levels: unknown level(s) 'L9'"),
            ("verification: {gate_plan_source: web}", "verification.gate_plan_source: unknown value 'web' (expected one of auto, file, inline)"),
            ("retry: {preset: yolo}", "retry.preset: unknown preset 'yolo' (expected default, aggressive, none)"),
            ("retry: {retryable_errors: [agent_crash, cosmic_rays]}", "retry.retryable_errors: unknown value 'cosmic_rays'"),
            ("retry: {backoff_multiplier: 0.5}", "retry.backoff_multiplier: must be between 1 and 10, got 0.5"),
            ("git_ops: {branch_pattern: fixed-branch}", "git_ops.branch_pattern: 'fixed-branch' must contain {run_id}"),
            ("limits: [1, 2]", "limits: must be a mapping of max_wall_clock_seconds"),
            ("extends: ../etc", "extends: must be a profile name, got '../etc'"),
            ("description: [1]", "description: must be text"),
            ("- a list", "must be a mapping with the keys extends, description,"),
            ("loop_strategy: {mode: fixed\n", "not valid YAML at line"),
        ],
    )
    def test_bad_values_name_their_key(self, text, expected):
        with pytest.raises(ProfileError) as err:
            parse_profile(text, "p", "p.yaml")
        assert expected in str(err.value)

    def test_every_problem_of_a_file_is_reported(self):
        with pytest.raises(ProfileError) as err:
            parse_profile("color: red\nlimits: {max_total_tokens: -5, agent_timeout_seconds: 0}\n", "p", "p.yaml")
        assert [key for key, _ in err.value.problems] == ["color", "limits.agent_timeout_seconds", "limits.max_total_tokens"]

    def test_cycle_in_extends(self, pdir):
        write(pdir, "a", "extends: b\n")
        write(pdir, "b", "extends: c\n")
        write(pdir, "c", "extends: a\n")
        [(field, message)] = violations(pdir, common_pb2.HarnessSettings(profile="a"))
        assert field == "spec.harness.profile"
        assert "extends: cycle: a -> b -> c -> a" in message

    def test_extending_itself_is_a_cycle(self, pdir):
        write(pdir, "me", "extends: me\n")
        [(_, message)] = violations(pdir, common_pb2.HarnessSettings(profile="me"))
        assert "extends: cycle: me -> me" in message

    def test_unknown_or_bad_parent(self, pdir):
        write(pdir, "child", "extends: ghost\n")
        [(_, message)] = violations(pdir, common_pb2.HarnessSettings(profile="child"))
        assert "extends: child -> ghost: unknown profile 'ghost'" in message
        write(pdir, "ghost", "limits: {max_cost_usd: free}\n")
        [(_, message)] = violations(pdir, common_pb2.HarnessSettings(profile="child"))
        assert "limits.max_cost_usd: must be a number, got 'free'" in message

    def test_unknown_and_invalid_names(self, pdir):
        [(field, message)] = violations(pdir, common_pb2.HarnessSettings(profile="nope"))
        assert field == "spec.harness.profile"
        assert message == f"unknown profile 'nope' (known: default, fast, reliable; files are looked for in {pdir})"
        [(_, message)] = violations(pdir, common_pb2.HarnessSettings(profile="../../etc/passwd"))
        assert "is not a valid profile name" in message

    def test_inline_settings_are_named_by_their_field(self, pdir):
        inline = common_pb2.HarnessSettings()
        inline.loop_strategy.mode = M.LOOP_STRATEGY_MODE_HYBRID
        inline.loop_strategy.max_iterations = 4
        inline.loop_strategy.progress_threshold = 2
        inline.limits.max_total_tokens = -1
        assert violations(pdir, inline) == [
            ("spec.harness.loop_strategy.progress_threshold", "must be greater than 0 and at most 1, got 2"),
            ("spec.harness.limits.max_total_tokens", "must be 0 or more, got -1"),
            ("spec.harness.loop_strategy.max_iterations", "is a parameter of fixed and ralph, but the loop strategy is hybrid"),
        ]

    def test_a_parameter_of_another_mode_in_a_profile(self, pdir):
        write(pdir, "h", "loop_strategy: {mode: hybrid, window_size: 3}\n")
        [(field, message)] = violations(pdir, common_pb2.HarnessSettings(profile="h"))
        assert field == "spec.harness.profile"
        assert "loop_strategy.window_size: is a parameter of ralph, but the loop strategy is hybrid" in message

    def test_checks_across_fields(self, pdir):
        write(pdir, "r", "loop_strategy: {mode: ralph, max_iterations: 3}\n")
        inline = common_pb2.HarnessSettings(profile="r")
        inline.loop_strategy.min_iterations = 5
        assert violations(pdir, inline) == [
            ("spec.harness.loop_strategy.min_iterations", "5 is more than max_iterations (3)")
        ]
        write(pdir, "r2", "loop_strategy: {mode: ralph, max_iterations: 3, window_size: 4}\n")
        assert violations(pdir, common_pb2.HarnessSettings(profile="r2")) == [
            ("spec.harness.profile", "profile 'r2': loop_strategy.window_size: 4 is more than max_iterations (3): it could never converge")
        ]
        inline = common_pb2.HarnessSettings()
        inline.verification.gate_plan_source = common_pb2.GATE_PLAN_SOURCE_INLINE
        assert violations(pdir, inline) == [
            ("spec.harness.verification.gate_plan_source", "inline needs the work order's inline gate plan (gate_plan_yaml)")
        ]
        inline.verification.gate_plan_yaml = "version: '1'\n"
        assert violations(pdir, inline) == []
        write(pdir, "slow", "retry: {initial_backoff: 10, max_backoff: 5}\n")
        [(field, message)] = violations(pdir, common_pb2.HarnessSettings(profile="slow"))
        assert (field, message) == ("spec.harness.profile", "profile 'slow': retry.max_backoff: 5 is less than initial_backoff (10)")

    def test_orchestrator_refuses_what_the_queue_refuses(self, pdir):
        write(pdir, "x", "loop_strategy: {mode: turbo}\n")
        with pytest.raises(HarnessError, match="loop_strategy.mode: unknown value 'turbo'"):
            resolve_harness(common_pb2.HarnessSettings(profile="x"), pdir)
        # Built-ins only: what a run whose profile broke after submit is carried on.
        assert resolve_harness(common_pb2.HarnessSettings(), read_files=False).loop_strategy.max_iterations == 3


class TestListingAndShowing:
    def test_known_names(self, pdir):
        write(pdir, "zeta", "")
        write(pdir, "fast", "")
        (pdir / "notes.txt").write_text("not a profile")
        assert profiles.known_profile_names(pdir) == ["default", "fast", "reliable", "zeta"]
        assert profiles.known_profile_names(pdir / "missing") == ["default", "fast", "reliable"]

    def test_harness_to_dict_reads_back_as_the_same_settings(self, pdir):
        write(pdir, "team", """
loop_strategy: {mode: ralph, max_iterations: 8, completion_signals: [DONE]}
limits: {max_total_tokens: 50000, max_cost_usd: 1.25, network_allowed: false}
verification: {skip_levels: [L3], wait_for_ci: true, gate_plan_source: file}
git_ops: {mode: pr, draft_pr: true, github_mode: fail_fast}
retry: {preset: aggressive, initial_backoff: 0.5, retryable_errors: [agent_crash, workspace_error]}
""")
        harness = resolved(pdir, profile="team")
        as_dict = profiles.harness_to_dict(harness)
        assert as_dict["loop_strategy"]["mode"] == "ralph"
        assert as_dict["retry"]["retryable_errors"] == ["agent_crash", "workspace_error"]
        again = parse_profile(yaml.safe_dump(as_dict), "again", "again.yaml")
        for section in ("loop_strategy", "limits", "verification", "git_ops", "retry"):
            assert getattr(again.harness, section) == getattr(harness, section), section

    def test_describe_chain(self, pdir):
        write(pdir, "child", "extends: reliable\n")
        chain = resolve(common_pb2.HarnessSettings(profile="child"), pdir).chain
        assert profiles.describe_chain(chain) == "reliable <- child"
        assert chain[0].builtin and not chain[1].builtin


def test_an_unchanged_file_is_parsed_once_and_a_changed_one_again(pdir):
    path = write(pdir, "c", "loop_strategy: {max_iterations: 2}\n")
    first = profiles.load_profile_file(path)
    assert profiles.load_profile_file(path) is first
    path.write_text("loop_strategy: {max_iterations: 7}\n#\n")
    assert profiles.load_profile_file(path).harness.loop_strategy.max_iterations == 7


class TestSandboxSettings:
    """The harness's `sandbox` section (docs/sandbox.md)."""

    @pytest.mark.parametrize("text", ["sandbox: off\n", "sandbox: 'off'\n", "sandbox: {mode: off}\n", "sandbox: {mode: OFF}\n"])
    def test_the_opt_out_is_spelled_any_usual_way(self, text):
        assert parse_profile(text, "p", "p.yaml").harness.sandbox.mode == common_pb2.SANDBOX_MODE_OFF

    def test_on_by_default_and_settings_carried(self):
        assert resolve_harness(common_pb2.HarnessSettings(), read_files=False).sandbox.mode == common_pb2.SANDBOX_MODE_ON
        profile = parse_profile(
            "sandbox: {read_only_paths: [/opt/x], allowed_hosts: ['*.pypi.org'], memory_mb: 512, max_processes: 64}\n",
            "p",
            "p.yaml",
        )
        assert harness_to_dict(profile.harness) == {
            "sandbox": {"read_only_paths": ["/opt/x"], "allowed_hosts": ["*.pypi.org"], "memory_mb": 512, "max_processes": 64}
        }
