"""`agentgate demo` on a machine where no suite runs: it starts one, runs, and stops it."""

from __future__ import annotations

import pytest

from agentgate.client.supervisor import check_health

from .conftest import Suite, suite_env

pytestmark = pytest.mark.slow


def test_demo_succeeds_in_two_iterations_and_stops_what_it_started(tmp_path):
    home = tmp_path / "home"
    suite = Suite(home=home, env=suite_env(home))
    result = suite.cli("demo", timeout=240)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}\n{suite.logs()}"
    assert "SUCCEEDED" in result.stdout
    assert "iterations: 2" in result.stdout
    assert "verification:complete" in result.stdout
    assert "run files:" in result.stdout
    for service in ("queue", "orchestrator", "workspace", "persistence"):
        assert check_health(suite.address(service), timeout=0.5) == "UNREACHABLE"
    assert not list((home / "run").glob("*.pid"))
