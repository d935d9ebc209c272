"""Secrets never reach a file, a database or an event (SPEC §3): they become `[REDACTED]`.

What is redacted:
- well-known token shapes: GitHub (`ghp_…`, `gho_…`, `ghu_…`, `ghs_…`, `ghr_…`,
  `github_pat_…`), `sk-…` API keys (OpenAI, Anthropic), AWS access key ids (`AKIA…`, …) and
  secret keys given by name (`aws_secret_access_key=…`), private key blocks
  (`-----BEGIN … PRIVATE KEY-----` to its END line), `Authorization:` header values and
  `Bearer …` tokens;
- every configured token value: `AGENTGATE_TOKEN`, `AGENTGATE_GITHUB_TOKEN` and any variable
  whose name ends in one of `SECRET_ENV_SUFFIXES`, when its value has at least
  `MIN_SECRET_LENGTH` characters (shorter values would redact ordinary words).

`redact_message` walks any protobuf message generically (strings, repeated strings, maps,
nested messages, `google.protobuf.Struct`), so a field added to a proto later is covered
without touching this module.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

REDACTED = "[REDACTED]"

#: Variables that always hold a token of AgentGate itself.
TOKEN_ENV_VARS = ("AGENTGATE_TOKEN", "AGENTGATE_GITHUB_TOKEN")
#: Any variable named like these holds a secret.
SECRET_ENV_SUFFIXES = ("_TOKEN", "_API_KEY", "_SECRET", "_SECRET_KEY", "_ACCESS_KEY", "_PASSWORD")
MIN_SECRET_LENGTH = 8

_KEY_BLOCK_BEGIN = r"-----BEGIN[A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----"
_KEY_BLOCK_END = r"-----END[A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----"
KEY_BLOCK_BEGIN = re.compile(_KEY_BLOCK_BEGIN)
KEY_BLOCK_END = re.compile(_KEY_BLOCK_END)


def _word_start(match: re.Match[str]) -> bool:
    """True when the match does not continue a word ("risk-…" is not an `sk-` key)."""
    start = match.start()
    return start == 0 or not (match.string[start - 1].isalnum() or match.string[start - 1] == "_")


@dataclass(frozen=True)
class _Rule:
    """One secret shape, with a cheap test that must pass for the pattern to be tried at
    all: most output holds no secret, and a regex without a literal start (the
    case-insensitive ones) scans megabytes slowly.

    The test is, in order of preference: `probe` (a case-sensitive regex with a literal
    start, which `re` scans for as fast as a substring search: one pass instead of one per
    trigger), or `triggers` found in the text as it is, or `folded_triggers` (lowercase)
    found in the lowercased text. Each is implied by the pattern, so skipping a rule whose
    test fails never misses a secret. `replacement` keeps what names the secret (the
    header, the variable) so a reader still sees what was there."""

    pattern: re.Pattern[str]
    triggers: tuple[str, ...] = ()
    folded_triggers: tuple[str, ...] = ()
    probe: re.Pattern[str] | None = None
    replacement: str = REDACTED
    word_start: bool = False

    def apply(self, text: str) -> str:
        if not self.word_start:
            return self.pattern.sub(self.replacement, text)

        def replace(match: re.Match[str]) -> str:
            return match.expand(self.replacement) if _word_start(match) else match.group(0)

        return self.pattern.sub(replace, text)


_RULES: tuple[_Rule, ...] = (
    # A whole key block; a block cut before its END line is redacted to the end of the text.
    _Rule(re.compile(_KEY_BLOCK_BEGIN + r".*?(?:" + _KEY_BLOCK_END + r"|\Z)", re.S), triggers=("PRIVATE KEY",)),
    # Specific enough to match even glued to other text.
    _Rule(re.compile(r"gh[pousr]_[A-Za-z0-9]{20,}"), probe=re.compile(r"gh[pousr]_")),
    _Rule(re.compile(r"github_pat_[A-Za-z0-9_]{20,}"), triggers=("github_pat_",)),
    # `sk-` continues ordinary words ("risk-assessment-…"): a key starts a word, holds a digit.
    _Rule(re.compile(r"sk-(?=[A-Za-z0-9_-]*\d)[A-Za-z0-9][A-Za-z0-9_-]{19,}"), triggers=("sk-",), word_start=True),
    _Rule(
        re.compile(r"(?:AKIA|ASIA|ABIA|ACCA|AGPA|AIDA|AIPA|ANPA|ANVA|AROA|APKA)[A-Z0-9]{16}(?![A-Za-z0-9])"),
        # One scan for the 11 prefixes (they share the "A"), not 11 substring searches.
        probe=re.compile(r"A(?:KIA|SIA|BIA|CCA|GPA|IDA|IPA|NPA|NVA|ROA|PKA)"),
        word_start=True,
    ),
    _Rule(
        re.compile(r"(?i)(aws_?secret_?access_?key|aws_?session_?token)([\"']?\s*[:=]\s*[\"']?)[A-Za-z0-9/+=]{16,}"),
        folded_triggers=("aws",),
        replacement=r"\1\2" + REDACTED,
    ),
    # Header values: HTTP, gRPC metadata, JSON or a Python dict; the scheme stays visible.
    _Rule(
        re.compile(
            r"(?i)((?:proxy-)?authorization[\"']?\s*[:=]\s*[\"']?(?:(?:bearer|basic|token|digest)\s+)?)[^\s\"',}]+"
        ),
        folded_triggers=("authorization",),
        replacement=r"\1" + REDACTED,
        word_start=True,
    ),
    _Rule(
        re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]{8,}"),
        folded_triggers=("bearer",),
        replacement=r"\1" + REDACTED,
        word_start=True,
    ),
)


#: Secrets this process read from files (the client token, the service key): they are not in
#: its environment (agentgate.common.security keeps them out of /proc), yet must be hidden too.
_registered: set[str] = set()


def register_secret(value: str) -> None:
    """Adds a secret read from elsewhere than the environment to `configured_secrets()`."""
    if len(value.strip()) >= MIN_SECRET_LENGTH:
        _registered.add(value.strip())


def configured_secrets(environ: Mapping[str, str] | None = None) -> list[str]:
    """The token values configured in `environ` (default: this process's environment, plus
    the secrets registered with `register_secret`)."""
    env = os.environ if environ is None else environ
    found: set[str] = set(_registered) if environ is None else set()
    for name, value in env.items():
        upper = name.upper()
        if upper in TOKEN_ENV_VARS or upper.endswith(SECRET_ENV_SUFFIXES):
            value = value.strip()
            if len(value) >= MIN_SECRET_LENGTH:
                found.add(value)
    return sorted(found)


class Redactor:
    """Replaces secrets in text and in protobuf messages.

    `secrets` are exact values to hide (configured tokens), on top of the token patterns.
    """

    def __init__(self, secrets: Iterable[str] = ()):
        values = sorted({s for s in secrets if len(s) >= MIN_SECRET_LENGTH}, key=len, reverse=True)
        # Longest first, so a token that contains another is hidden whole.
        self._values = re.compile("|".join(re.escape(v) for v in values)) if values else None
        self._value_list = tuple(values)
        self.secret_count = len(values)

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None, extra: Iterable[str] = ()) -> Redactor:
        """A redactor for the configured tokens of `environ` (default: os.environ) plus `extra`."""
        return cls([*configured_secrets(environ), *extra])

    def redact_text(self, text: str) -> str:
        """`text` with every secret replaced by [REDACTED].

        Cost on text without secrets (the common case, megabytes of agent output): one
        substring search per configured value, one scan per rule (see `_Rule`) and one
        lowercased copy for the case-insensitive rules, made only when reached."""
        if not text:
            return text
        if self._values is not None:
            # A long literal is found much faster than the alternation of all of them scans.
            present = [value for value in self._value_list if value in text]
            if len(present) == 1:
                text = text.replace(present[0], REDACTED)
            elif present:
                text = self._values.sub(REDACTED, text)
        folded: str | None = None
        for rule in _RULES:
            if rule.probe is not None:
                if rule.probe.search(text) is None:
                    continue
            elif rule.triggers:
                if not any(trigger in text for trigger in rule.triggers):
                    continue
            else:
                # Rules only remove text or add "[REDACTED]", so a trigger (letters only)
                # absent from an earlier lowercased copy cannot have appeared since.
                if folded is None:
                    folded = text.lower()
                if not any(trigger in folded for trigger in rule.folded_triggers):
                    continue
            text = rule.apply(text)
        return text

    def redact_message(self, message: Message) -> int:
        """Redacts every string of `message` in place, recursively; returns how many
        strings changed."""
        changed = 0
        for field, value in message.ListFields():
            if field.type == FieldDescriptor.TYPE_STRING:
                if field.is_repeated:
                    for index, item in enumerate(value):
                        clean = self.redact_text(item)
                        if clean != item:
                            value[index] = clean
                            changed += 1
                else:
                    clean = self.redact_text(value)
                    if clean != value:
                        setattr(message, field.name, clean)
                        changed += 1
            elif field.type == FieldDescriptor.TYPE_MESSAGE:
                if field.message_type.GetOptions().map_entry:
                    changed += self._redact_map(field, value)
                elif field.is_repeated:
                    for item in value:
                        changed += self.redact_message(item)
                else:
                    changed += self.redact_message(value)
        return changed

    def _redact_map(self, field: FieldDescriptor, mapping: object) -> int:
        changed = 0
        key_is_text = field.message_type.fields_by_name["key"].type == FieldDescriptor.TYPE_STRING
        value_field = field.message_type.fields_by_name["value"]
        for key in list(mapping):  # type: ignore[call-overload]
            if value_field.type == FieldDescriptor.TYPE_MESSAGE:
                changed += self.redact_message(mapping[key])  # type: ignore[index]
            elif value_field.type == FieldDescriptor.TYPE_STRING:
                clean = self.redact_text(mapping[key])  # type: ignore[index]
                if clean != mapping[key]:  # type: ignore[index]
                    mapping[key] = clean  # type: ignore[index]
                    changed += 1
            if key_is_text:
                clean_key = self.redact_text(key)
                if clean_key != key:
                    # A map key cannot be changed in place: move the entry.
                    if value_field.type == FieldDescriptor.TYPE_MESSAGE:
                        mapping[clean_key].CopyFrom(mapping[key])  # type: ignore[index]
                    else:
                        mapping[clean_key] = mapping[key]  # type: ignore[index]
                    del mapping[key]  # type: ignore[attr-defined]
                    changed += 1
        return changed


_default: tuple[tuple[str, ...], Redactor] | None = None


def default_redactor() -> Redactor:
    """A process-wide redactor for the token values configured in the environment now
    (rebuilt only when they changed: a token set after start is still hidden)."""
    global _default
    secrets = tuple(configured_secrets())
    if _default is None or _default[0] != secrets:
        _default = (secrets, Redactor(secrets))
    return _default[1]
