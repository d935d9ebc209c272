"""Cutting agent output to the configured size, on a UTF-8 character boundary, and the
order of preparation (count, redact, cut)."""

from __future__ import annotations

import pytest

from agentgate.common.config import ConfigError
from agentgate.common.redaction import REDACTED, Redactor
from agentgate.persistence.output_limits import (
    DEFAULT_MAX_OUTPUT_BYTES,
    count_output_bytes,
    cut_utf8,
    limit_agent_output,
    truncation_marker,
)
from agentgate.persistence.records import RecordPreparer
from agentgate.persistence.settings import MAX_OUTPUT_BYTES_ENV, max_output_bytes
from agentgate.v1 import common_pb2


def test_text_within_the_limit_is_kept_whole() -> None:
    text = "é" * 512  # 1024 bytes
    assert cut_utf8(text, 1024) == (text, False)


@pytest.mark.parametrize("char", ["é", "€", "😀"])
@pytest.mark.parametrize("offset", [0, 1, 2, 3])
def test_cut_falls_back_to_a_character_boundary(char: str, offset: int) -> None:
    text = "x" * offset + char * 1000
    limit = 1000
    cut, truncated = cut_utf8(text, limit)
    assert truncated
    kept, marker = cut.rsplit("\n", 1)
    assert marker == truncation_marker(limit) == f"[TRUNCATED - exceeded {limit} bytes]"
    kept_bytes = kept.encode("utf-8")
    assert limit - len(char.encode()) < len(kept_bytes) <= limit
    assert text.startswith(kept)
    assert "\ufffd" not in cut


def test_limit_agent_output_sets_flags_and_keeps_earlier_ones() -> None:
    result = common_pb2.AgentResult(stdout="a" * 3000, stderr="short", stderr_truncated=True)
    limit_agent_output(result, 1024)
    assert result.stdout_truncated and result.stdout.endswith("[TRUNCATED - exceeded 1024 bytes]")
    assert result.stdout.startswith("a" * 1024 + "\n")
    assert result.stderr == "short" and result.stderr_truncated  # the workspace had cut it


def test_byte_counts_are_filled_only_when_missing() -> None:
    result = common_pb2.AgentResult(stdout="héllo", stderr="x")
    count_output_bytes(result)
    assert (result.stdout_bytes, result.stderr_bytes) == (6, 1)
    reported = common_pb2.AgentResult(stdout="cut", stdout_bytes=5_000_000)
    count_output_bytes(reported)
    assert reported.stdout_bytes == 5_000_000


def test_preparer_redacts_before_cutting_and_leaves_the_request_alone() -> None:
    secret = "ghp_" + "Z" * 36
    # The secret straddles the cut: cutting first would keep a prefix of it.
    request = common_pb2.AgentResult(run_id="run-1", iteration=1, stdout="a" * 1010 + secret + "b" * 100)
    prepared = RecordPreparer(Redactor(), 1024).agent_result(request)
    assert request.stdout.count(secret) == 1  # the caller's message is untouched
    assert "ghp_" not in prepared.stdout and "ZZZZ" not in prepared.stdout
    assert prepared.stdout.startswith("a" * 1010 + REDACTED)
    assert prepared.stdout_bytes == len(request.stdout)
    assert not prepared.stdout_truncated  # redaction made it shorter than the limit


def test_max_output_bytes_from_flag_env_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(MAX_OUTPUT_BYTES_ENV, raising=False)
    assert max_output_bytes() == DEFAULT_MAX_OUTPUT_BYTES == 1024 * 1024
    monkeypatch.setenv(MAX_OUTPUT_BYTES_ENV, "4096")
    assert max_output_bytes() == 4096
    assert max_output_bytes(2048) == 2048  # the flag wins
    monkeypatch.setenv(MAX_OUTPUT_BYTES_ENV, "12")
    with pytest.raises(ConfigError, match=MAX_OUTPUT_BYTES_ENV):
        max_output_bytes()
    monkeypatch.setenv(MAX_OUTPUT_BYTES_ENV, "lots")
    with pytest.raises(ConfigError, match=MAX_OUTPUT_BYTES_ENV):
        max_output_bytes()
    with pytest.raises(ConfigError, match="--max-output-bytes"):
        max_output_bytes(100 * 1024 * 1024)


def test_service_flag_is_checked_at_start(tmp_path) -> None:
    from agentgate.persistence.__main__ import build_app, build_parser

    args = build_parser().parse_args(["--home", str(tmp_path), "--max-output-bytes", "5"])
    with pytest.raises(ConfigError, match="--max-output-bytes"):
        build_app(args)
    app = build_app(build_parser().parse_args(["--home", str(tmp_path), "--max-output-bytes", "4096"]))
    assert app.max_output_bytes == 4096
