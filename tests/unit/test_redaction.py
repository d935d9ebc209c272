"""Redaction of secrets in text, in any protobuf message, and across agent output events."""

from __future__ import annotations

import pytest
from google.protobuf import struct_pb2

from agentgate.common.events import AGENT_OUTPUT, AGENT_STARTED, RUN_FAILED, make_event
from agentgate.common.redaction import REDACTED, Redactor, configured_secrets
from agentgate.persistence.event_redaction import EventRedactor
from agentgate.v1 import common_pb2, events_pb2

GHP = "ghp_" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8"
PAT = "github_pat_" + "11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz"
SK = "sk-" + "proj-Abc123Def456Ghi789Jkl012Mno345"
ANTHROPIC = "sk-ant-api03-" + "x" * 40
AWS_ID = "AKIA" + "IOSFODNN7EXAMPLE"
AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
KEY_BLOCK = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA7\nabcdef==\n-----END RSA PRIVATE KEY-----"

redactor = Redactor(["configured-token-value-123"])


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        (f"token={GHP} end", GHP),
        (f"export GH={PAT}", PAT),
        (f"OPENAI_API_KEY={SK}", SK),
        (f"key: {ANTHROPIC}", ANTHROPIC),
        (f"aws id {AWS_ID}.", AWS_ID),
        (f"aws_secret_access_key = {AWS_SECRET}", AWS_SECRET),
        (f'{{"AWS_SECRET_ACCESS_KEY": "{AWS_SECRET}"}}', AWS_SECRET),
        (f"before\n{KEY_BLOCK}\nafter", "MIIEowIBAAKCAQEA7"),
        ("Authorization: Bearer abc.def.ghi-123", "abc.def.ghi-123"),
        ("authorization: Basic dXNlcjpwYXNzd29yZA==", "dXNlcjpwYXNzd29yZA=="),
        ("{'Authorization': 'token 0123456789abcdef'}", "0123456789abcdef"),
        ("curl -H 'Bearer eyJhbGciOiJIUzI1NiJ9.payload'", "eyJhbGciOiJIUzI1NiJ9.payload"),
        ("the configured-token-value-123 leaked", "configured-token-value-123"),
    ],
)
def test_secrets_are_replaced(text: str, secret: str) -> None:
    clean = redactor.redact_text(text)
    assert secret not in clean
    assert REDACTED in clean


def test_what_names_a_secret_stays_readable() -> None:
    assert redactor.redact_text("Authorization: Bearer abcdefghijkl") == f"Authorization: Bearer {REDACTED}"
    assert redactor.redact_text(f"aws_secret_access_key={AWS_SECRET}") == f"aws_secret_access_key={REDACTED}"
    assert redactor.redact_text(f"before\n{KEY_BLOCK}\nafter") == f"before\n{REDACTED}\nafter"


def test_a_key_block_cut_before_its_end_is_redacted_to_the_end() -> None:
    assert redactor.redact_text("x\n-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1r") == f"x\n{REDACTED}"


@pytest.mark.parametrize(
    "text",
    [
        "sk-learn is a package; ghp_ alone; github_pat_ too short",
        "task-1234567890abcdefghijklmn and disk-0123456789abcdef0123",
        "a risk-assessment-for-the-whole-project and the-sk-assessment-for-everyone",
        "AKIA lower akiaiosfodnn7example",
        "no secrets here: 3 failed, 1 passed in 0.05s",
    ],
)
def test_ordinary_text_is_left_alone(text: str) -> None:
    assert redactor.redact_text(text) == text


def test_redaction_is_idempotent() -> None:
    text = f"Authorization: Bearer xyzxyzxyzxyz {GHP} {SK}\n{KEY_BLOCK}"
    once = redactor.redact_text(text)
    assert redactor.redact_text(once) == once


def test_configured_secrets_from_the_environment() -> None:
    env = {
        "AGENTGATE_TOKEN": "service-token-1",
        "AGENTGATE_GITHUB_TOKEN": "gh-configured-2",
        "MY_API_KEY": "abcdefgh",
        "DB_SECRET": "s3cr3t-value",
        "SHORT_TOKEN": "1234567",  # under 8 characters: would redact ordinary words
        "PATH": "/usr/bin:/bin",
        "TOKEN_SUFFIX_NOT": "not-a-secret-name",
    }
    assert configured_secrets(env) == sorted(
        ["service-token-1", "gh-configured-2", "abcdefgh", "s3cr3t-value"]
    )
    env_redactor = Redactor.from_environment(env)
    assert env_redactor.secret_count == 4
    assert env_redactor.redact_text("x service-token-1 y abcdefgh z 1234567") == f"x {REDACTED} y {REDACTED} z 1234567"


def test_a_longer_secret_containing_a_shorter_one_is_hidden_whole() -> None:
    both = Redactor(["abcdefgh", "abcdefgh-and-more"])
    assert both.redact_text("value abcdefgh-and-more!") == f"value {REDACTED}!"


def test_every_string_of_a_message_is_redacted() -> None:
    result = common_pb2.AgentResult(run_id="run-1", stdout=f"out {GHP}", stderr=f"err {SK}", model="m")
    call = result.tool_calls.add(tool="Bash", output=f"printed {GHP}")
    call.input.update({"command": f"echo {SK}", "nested": {"list": [f"{GHP}", 1, True]}})
    result.structured_output.update({"token": GHP})
    changed = redactor.redact_message(result)
    assert changed >= 6
    text = str(result)
    assert GHP not in text and SK not in text
    assert result.run_id == "run-1" and result.model == "m"
    assert call.input["nested"]["list"][0] == REDACTED


def test_maps_repeated_fields_and_keys() -> None:
    iteration = common_pb2.IterationData(
        levels_run=["L0", f"L1 {GHP}"],
        error_details={"stderr": f"key {SK}", GHP: "the key itself is a secret"},
    )
    iteration.decision.metadata["note"] = f"saw {GHP}"
    redactor.redact_message(iteration)
    assert iteration.levels_run[0] == "L0"
    assert GHP not in iteration.levels_run[1]
    assert iteration.error_details["stderr"] == f"key {REDACTED}"
    assert GHP not in iteration.error_details and iteration.error_details[REDACTED] == "the key itself is a secret"
    assert GHP not in iteration.decision.metadata["note"]


def test_struct_values_and_events() -> None:
    value = struct_pb2.Struct()
    value.update({"a": {"b": [GHP]}})
    redactor.redact_message(value)
    assert GHP not in str(value)
    event = make_event(RUN_FAILED, "wo-1", "run-1", run_ended=events_pb2.RunEnded(error=f"x {SK}"))
    event.run_ended.build_error.stderr_tail = f"tail {GHP}"
    redactor.redact_message(event)
    assert SK not in str(event) and GHP not in str(event)


def _line(text: str, iteration: int = 1, stream: int = events_pb2.OUTPUT_STREAM_STDOUT) -> events_pb2.RunEvent:
    return make_event(
        AGENT_OUTPUT, "wo-1", "run-1", iteration=iteration, agent_output=events_pb2.AgentOutput(stream=stream, text=text)
    )


def test_a_key_block_spread_over_output_events_is_redacted_line_by_line() -> None:
    events = EventRedactor(Redactor())
    lines = ["before", "-----BEGIN PRIVATE KEY-----", "MIIEvQIBADANBgkqhkiG9w0BAQEFAASC", "abcdEFGH==",
             "-----END PRIVATE KEY----- trailing", "after"]
    out = []
    for text in lines:
        event = _line(text)
        events.redact(event)
        out.append(event.agent_output.text)
    assert out[0] == "before"
    assert out[1] == REDACTED
    assert out[2] == REDACTED and out[3] == REDACTED
    assert out[4] == REDACTED + " trailing"
    assert out[5] == "after"


def test_key_block_state_is_per_stream_and_ends_with_a_new_execution() -> None:
    events = EventRedactor(Redactor())
    events.redact(_line("-----BEGIN EC PRIVATE KEY-----"))
    stderr = _line("an error line", stream=events_pb2.OUTPUT_STREAM_STDERR)
    events.redact(stderr)
    assert stderr.agent_output.text == "an error line"
    events.redact(make_event(AGENT_STARTED, "wo-1", "run-1", iteration=1))
    fresh = _line("normal output again")
    events.redact(fresh)
    assert fresh.agent_output.text == "normal output again"


def test_default_redactor_follows_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from agentgate.common.redaction import default_redactor

    monkeypatch.delenv("LATE_API_KEY", raising=False)
    assert default_redactor().redact_text("late-value-123") == "late-value-123"
    assert default_redactor() is default_redactor()  # cached while nothing changed
    monkeypatch.setenv("LATE_API_KEY", "late-value-123")
    assert default_redactor().redact_text("late-value-123") == REDACTED


# -- variants an agent can print to get a secret past redaction (issue 22) -------------

KNOWN = "Zq9xK2LmP0aB7cDe4FgH"  # a configured token value
known = Redactor([KNOWN])


@pytest.mark.parametrize(
    "text",
    [
        f"x{KNOWN}X",  # glued on both sides
        f"my_{KNOWN}",
        f"prefix{KNOWN[:7]}\n{KNOWN[7:]}suffix",  # split over one line break
        f"{KNOWN[:3]}\r\n{KNOWN[3:12]}\n{KNOWN[12:]}",  # over several, CRLF too
    ],
)
def test_a_known_value_is_found_glued_and_split_over_lines(text: str) -> None:
    clean = known.redact_text(text)
    assert REDACTED in clean
    assert KNOWN not in _without_breaks(clean)
    # No piece of it stays on any line.
    for piece in (KNOWN[:7], KNOWN[7:], KNOWN[12:]):
        assert piece not in clean


def _without_breaks(text: str) -> str:
    return text.replace("\r", "").replace("\n", "")


def test_split_lines_keep_their_breaks_and_other_text() -> None:
    text = f"line one\ntoken: {KNOWN[:10]}\n{KNOWN[10:]} rest\nlast"
    assert known.redact_text(text) == f"line one\ntoken: {REDACTED}\n{REDACTED} rest\nlast"


@pytest.mark.parametrize("shift", [0, 1, 2])
@pytest.mark.parametrize("urlsafe", [False, True])
def test_base64_of_a_known_value_at_every_alignment(shift: int, urlsafe: bool) -> None:
    import base64

    secret = "s3cr3t/value+with?odd>bytes"  # encodes to + and / in standard base64
    raw = b"ab"[:shift] + secret.encode() + b"--tail"
    encode = base64.urlsafe_b64encode if urlsafe else base64.b64encode
    encoded = encode(raw).decode()
    clean = Redactor([secret]).redact_text(f"echo {encoded} | base64 -d")
    assert REDACTED in clean
    # What is left of the encoding is at most the characters shared with the neighbours:
    # no 8 characters made from the secret's bits alone remain.
    first, last = -(-8 * shift // 6), 8 * (shift + len(secret)) // 6
    own = encoded[first:last]
    assert not any(own[i : i + 8] in clean for i in range(len(own) - 7))


def test_base64_wrapped_over_lines_and_hex_of_a_known_value() -> None:
    import base64

    encoded = base64.b64encode(KNOWN.encode() * 3).decode()
    wrapped = "\n".join(encoded[i : i + 16] for i in range(0, len(encoded), 16))
    clean = known.redact_text(wrapped)
    assert base64.b64encode(KNOWN.encode()).decode()[:16] not in clean
    assert known.redact_text(f"hex {KNOWN.encode().hex()}!") == f"hex {REDACTED}!"
    assert known.redact_text(f"HEX {KNOWN.encode().hex().upper()}") == f"HEX {REDACTED}"


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        (f"x{AWS_ID}X", AWS_ID),
        (f"id:{AWS_ID}ABC", AWS_ID),
        (f"my_{ANTHROPIC}", ANTHROPIC),
        (f"key{ANTHROPIC}", ANTHROPIC),
        (f"x{SK}", SK),
        (f"my_sk-{'A1b2C3d4' * 4}", "sk-" + "A1b2C3d4" * 4),
        (f"xx{GHP}yy", GHP[:30]),
        (f"url=https://x:{PAT}@github.com", PAT),
    ],
)
def test_token_shapes_glued_to_other_text(text: str, secret: str) -> None:
    clean = redactor.redact_text(text)
    assert secret not in clean and REDACTED in clean


PYTEST_LOG = """\
============================= test session starts ==============================
platform linux -- Python 3.11.7, pytest-8.3.4, pluggy-1.5.0
rootdir: /home/user/project
collected 214 items

tests/test_calc.py ........................................            [ 18%]
tests/test_task_runner.py::test_task-1234567890abcdefghijklmn PASSED     [ 19%]
FAILED tests/test_disk.py::test_disk-0123456789abcdef0123 - AssertionError
E       assert 'ASIA' == 'AKIAPACIFIC'
=========== 1 failed, 213 passed, 2 warnings in 3.52s ===========
"""
GIT_LOG = """\
commit 3f92e04b1c9d7a6e5f4b3a2c1d0e9f8a7b6c5d4e
Merge: 0a932b6 ad801d0
Author: Dev <dev@example.com>
    risk-assessment-for-the-whole-project; the-sk-assessment-for-everyone
 src/AKIA_notes.md | 3 ++-
 sha256: E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855
"""


@pytest.mark.parametrize("text", [PYTEST_LOG, GIT_LOG])
def test_ordinary_logs_are_left_alone_with_a_configured_value(text: str) -> None:
    with_values = Redactor([KNOWN, "another-secret-value-1234"])
    assert with_values.redact_text(text) == text


def _stream(redactor_: Redactor, lines: list[str]) -> list[str]:
    events = EventRedactor(redactor_)
    out = []
    for text in lines:
        event = _line(text)
        events.redact(event)
        out.append(event.agent_output.text)
    return out


def test_a_known_value_split_over_output_events_is_redacted_in_each() -> None:
    assert _stream(known, ["before", f"token={KNOWN[:9]}", f"{KNOWN[9:]} after", "next"]) == [
        "before", f"token={REDACTED}", f"{REDACTED} after", "next",
    ]
    # Over three lines, the middle one all secret; a short first piece is caught by the rest.
    assert _stream(known, [f"x {KNOWN[:8]}", KNOWN[8:14], f"{KNOWN[14:]}!"]) == [
        f"x {REDACTED}", REDACTED, f"{REDACTED}!",
    ]
    assert _stream(known, [f"{KNOWN[:3]}", f"{KNOWN[3:]} end"]) == [KNOWN[:3], f"{REDACTED} end"]


def test_base64_wrapped_over_output_events_is_redacted() -> None:
    import base64
    import textwrap

    secret = "a-configured-token-of-some-length-0123456789"
    encoded = base64.b64encode(f"user:{secret}".encode()).decode()
    lines = textwrap.wrap(encoded, 20)
    out = _stream(Redactor([secret]), lines)
    own = encoded[8:-4]  # the characters made from the secret's bytes alone
    assert not any(own[i : i + 8] in "\n".join(out) for i in range(len(own) - 7)), out


def test_output_events_with_no_configured_value_stay() -> None:
    lines = PYTEST_LOG.splitlines() + GIT_LOG.splitlines()
    assert _stream(Redactor([KNOWN, "another-secret-value-1234"]), lines) == lines
