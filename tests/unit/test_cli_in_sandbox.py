"""What a model CLI driver adds to the sandbox for its own CLI: the CLI's install folder
(read-only) and the model endpoint it was configured with (through the proxy); see
docs/sandbox.md, "Model CLIs in the sandbox"."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agentgate.workspace.drivers.codex import configured_endpoints
from agentgate.workspace.drivers.stream import cli_install_paths, endpoint_of
from agentgate.workspace.sandbox import Sandbox, SandboxSpec


def _link(link: Path, target: Path) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("#!/bin/sh\n")
    link.symlink_to(os.path.relpath(target, link.parent))


def test_an_npm_install_shows_its_whole_node_modules(tmp_path: Path) -> None:
    # .bin/codex -> ../@openai/codex/bin/codex.js, whose native binary is in the sibling
    # package @openai/codex-linux-x64: the outermost node_modules holds both.
    modules = tmp_path / "agents" / "node_modules"
    _link(modules / ".bin" / "codex", modules / "@openai" / "codex" / "bin" / "codex.js")
    assert cli_install_paths(str(modules / ".bin" / "codex"), home=tmp_path / "home") == [modules]


def test_a_native_install_shows_its_version_folder_and_the_link(tmp_path: Path) -> None:
    home = tmp_path / "home"
    versions = home / ".local" / "share" / "claude" / "versions"
    _link(home / ".local" / "bin" / "claude", versions / "2.1.332" / "claude")
    assert cli_install_paths(str(home / ".local" / "bin" / "claude"), home=home) == [
        home / ".local" / "bin",
        versions / "2.1.332",
    ]


def test_a_cli_loose_in_the_home_shows_only_itself(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home).mkdir()
    (home / "claude").write_text("#!/bin/sh\n")
    assert cli_install_paths(str(home / "claude"), home=home) == [home / "claude"]


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://127.0.0.1:8080", ("127.0.0.1", 8080)),
        ("https://gateway.example.com/v1", ("gateway.example.com", 443)),
        ("http://LocalHost/anthropic", ("localhost", 80)),
        ("ftp://example.com", None),
        ("not a url", None),
        ("http://example.com:99999", None),
    ],
)
def test_endpoint_of(url: str, expected: tuple[str, int] | None) -> None:
    assert endpoint_of(url) == expected


def test_codex_endpoints_from_its_config_options_and_env(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text(
        'model_provider = "fake"\n[model_providers.fake]\nbase_url = "http://127.0.0.1:9000/v1"\n'
        '[model_providers.other]\nbase_url = "https://other.example/v1"\n'
    )
    assert configured_endpoints(tmp_path, {}, {}) == ["http://127.0.0.1:9000/v1"]
    # `-c` options override the file (TOML values, as codex reads them).
    assert configured_endpoints(tmp_path, {"config.model_provider": '"other"'}, {}) == ["https://other.example/v1"]
    options = {"config.model_providers.fake.base_url": '"http://gw:8000"'}
    assert configured_endpoints(tmp_path, options, {"OPENAI_BASE_URL": "https://proxy.example/v1"}) == [
        "http://gw:8000",
        "https://proxy.example/v1",
    ]
    builtin = {"config.model_provider": '"openai"', "config.openai_base_url": "https://gw.example/v1"}
    assert configured_endpoints(tmp_path, builtin, {}) == ["https://gw.example/v1"]
    assert configured_endpoints(tmp_path / "missing", {}, {}) == []


def test_widened_adds_read_only_paths_and_endpoints_only(tmp_path: Path) -> None:
    spec = SandboxSpec(writable_dir=tmp_path, mode="off", network="proxy", allowed_hosts=("api.openai.com",))
    off = Sandbox(spec)
    assert off.widened(read_only=[tmp_path / "cli"], endpoints=[("127.0.0.1", 9)]) is off  # off stays off
