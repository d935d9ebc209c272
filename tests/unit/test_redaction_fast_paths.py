"""The cheap pre-checks of redaction never let a secret through: every AWS key id prefix,
case variants of the case-insensitive rules, and any mix of configured values."""

from __future__ import annotations

import pytest

from agentgate.common.redaction import REDACTED, Redactor

AWS_PREFIXES = ("AKIA", "ASIA", "ABIA", "ACCA", "AGPA", "AIDA", "AIPA", "ANPA", "ANVA", "AROA", "APKA")
GHP = "ghp_" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8"
FILLER = "".join(f"{i:08d} compiling module_{i % 97}.py ... ok\n" for i in range(2000))


@pytest.mark.parametrize("prefix", AWS_PREFIXES)
def test_every_aws_key_id_prefix_is_redacted(prefix: str) -> None:
    key = prefix + "IOSFODNN7EXAMPLE"
    assert Redactor().redact_text(f"{FILLER}id {key} end") == f"{FILLER}id {REDACTED} end"


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("AUTHORIZATION: BEARER abcdefghijkl", "abcdefghijkl"),
        ("AuThOrIzAtIoN: token 0123456789abcdef", "0123456789abcdef"),
        ("BeArEr eyJhbGciOiJIUzI1NiJ9.payload", "eyJhbGciOiJIUzI1NiJ9.payload"),
        ("AWS_Secret_Access_Key=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "wJalrXUtnFEMI/K7MDENG"),
        ("x -----BEGIN EC PRIVATE KEY-----\nabc\n-----END EC PRIVATE KEY----- y", "abc"),
        (f"glued{GHP}", GHP),
    ],
)
def test_case_and_position_variants_are_redacted(text: str, secret: str) -> None:
    clean = Redactor().redact_text(FILLER + text + FILLER)
    assert secret not in clean
    assert REDACTED in clean


def test_rules_after_an_earlier_redaction_still_apply() -> None:
    # The lowercased copy is taken once; later case-insensitive rules must still match.
    text = f"{GHP} Authorization: Bearer abcdefghijkl and bearer zyxwvutsrq"
    assert Redactor().redact_text(text) == f"{REDACTED} Authorization: Bearer {REDACTED} and bearer {REDACTED}"


def test_configured_values_one_present_several_present_and_nested() -> None:
    redactor = Redactor(["first-secret-value", "second-secret-value", "second-secret-value-long"])
    assert redactor.redact_text("a first-secret-value b") == f"a {REDACTED} b"
    assert redactor.redact_text("first-secret-value second-secret-value") == f"{REDACTED} {REDACTED}"
    # Longest first: the longer value that contains another is hidden whole.
    assert redactor.redact_text("x second-secret-value-long y") == f"x {REDACTED} y"
    assert redactor.redact_text("nothing configured here") == "nothing configured here"


def test_output_without_secrets_is_unchanged() -> None:
    text = FILLER * 3
    assert Redactor(["configured-token-value"]).redact_text(text) is text
