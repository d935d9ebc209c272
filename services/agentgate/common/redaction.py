"""Secrets never reach a file, a database or an event (docs/troubleshooting.md): they become `[REDACTED]`.

What is redacted (docs/security.md, "Redaction", says the same for users):
- well-known token shapes: GitHub (`ghp_…`, `gho_…`, `ghu_…`, `ghs_…`, `ghr_…`,
  `github_pat_…`), `sk-…` API keys (OpenAI, Anthropic), AWS access key ids (`AKIA…`, …) and
  secret keys given by name (`aws_secret_access_key=…`), private key blocks
  (`-----BEGIN … PRIVATE KEY-----` to its END line), `Authorization:` header values and
  `Bearer …` tokens. The shapes with a distinctive prefix (GitHub, `sk-ant-`/`sk-proj-`,
  AWS ids) match even glued to other text (`xAKIA…X`, `my_sk-ant-…`): an agent that wants a
  secret through only has to add a character to break a word boundary;
- every configured token value: `AGENTGATE_TOKEN`, `AGENTGATE_GITHUB_TOKEN` and any variable
  whose name ends in one of `SECRET_ENV_SUFFIXES`, when its value has at least
  `MIN_SECRET_LENGTH` characters (shorter values would redact ordinary words). A value is
  found anywhere in the text (glued to other characters), split over line breaks within one
  text (`"abc\ndef"`; each piece becomes [REDACTED], the lines stay), and as its base64
  (standard and URL-safe, at each of the three byte alignments it can take inside a longer
  encoded string) or hex (lower and upper case) encoding.

`redact_message` walks any protobuf message generically (strings, repeated strings, maps,
nested messages, `google.protobuf.Struct`), so a field added to a proto later is covered
without touching this module.
"""

from __future__ import annotations

import base64
import os
import re
from bisect import bisect_right
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any

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


def _sk_key_start(match: re.Match[str]) -> bool:
    """An `sk-` key: a vendor prefix (`sk-ant-`, `sk-proj-` ...) is specific enough anywhere;
    a bare `sk-` must not continue a word of letters or digits ("task-…", "disk-…"), though
    an underscore may come before it (`my_sk-…` is a name glued to a key)."""
    if match.group("vendor"):
        return True
    start = match.start()
    return start == 0 or not match.string[start - 1].isalnum()


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
    #: A match is redacted only when this says so (None: every match).
    accept: Callable[[re.Match[str]], bool] | None = None

    def apply(self, text: str) -> str:
        accept = self.accept
        if accept is None:
            return self.pattern.sub(self.replacement, text)

        def replace(match: re.Match[str]) -> str:
            return match.expand(self.replacement) if accept(match) else match.group(0)

        return self.pattern.sub(replace, text)


_RULES: tuple[_Rule, ...] = (
    # A whole key block; a block cut before its END line is redacted to the end of the text.
    _Rule(re.compile(_KEY_BLOCK_BEGIN + r".*?(?:" + _KEY_BLOCK_END + r"|\Z)", re.S), triggers=("PRIVATE KEY",)),
    # Specific enough to match even glued to other text.
    _Rule(re.compile(r"gh[pousr]_[A-Za-z0-9]{20,}"), probe=re.compile(r"gh[pousr]_")),
    _Rule(re.compile(r"github_pat_[A-Za-z0-9_]{20,}"), triggers=("github_pat_",)),
    # `sk-` continues ordinary words ("risk-assessment-…"): a bare `sk-` key starts a word and
    # holds a digit; a vendor's prefix (Anthropic, OpenAI project/service/admin keys) matches
    # anywhere (see `_sk_key_start`).
    _Rule(
        re.compile(
            r"sk-(?:(?P<vendor>(?:ant|proj|svcacct|admin)-)[A-Za-z0-9_-]{20,}"
            r"|(?=[A-Za-z0-9_-]*\d)[A-Za-z0-9][A-Za-z0-9_-]{19,})"
        ),
        triggers=("sk-",),
        accept=_sk_key_start,
    ),
    # No word boundary on either side: "xAKIAIOSFODNN7EXAMPLEX" is still a key id. Ordinary
    # text seldom has one of these prefixes followed by 16 capitals or digits (git hashes
    # are lower case).
    _Rule(
        re.compile(r"(?:AKIA|ASIA|ABIA|ACCA|AGPA|AIDA|AIPA|ANPA|ANVA|AROA|APKA)[A-Z0-9]{16}"),
        # One scan for the 11 prefixes (they share the "A"), not 11 substring searches.
        probe=re.compile(r"A(?:KIA|SIA|BIA|CCA|GPA|IDA|IPA|NPA|NVA|ROA|PKA)"),
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
        accept=_word_start,
    ),
    _Rule(
        re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]{8,}"),
        folded_triggers=("bearer",),
        replacement=r"\1" + REDACTED,
        accept=_word_start,
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


_LINE_BREAKS = re.compile(r"[\r\n]")
_NOT_LINE_BREAKS = re.compile(r"[^\r\n]+")
_URLSAFE = str.maketrans("+/", "-_")


def _without_line_breaks(text: str) -> str:
    if "\r" in text:
        text = text.replace("\r", "")
    return text.replace("\n", "")


def encoded_forms(value: str) -> set[str]:
    """`value` and the encodings of it that redaction also looks for: base64 (standard and
    URL-safe) at each of the three alignments it can take inside a longer encoded string,
    and hex (lower and upper case).

    Inside base64 of `prefix + value + suffix`, only the characters made from the value's
    bits alone are the same whatever surrounds it: the first one or two characters (which
    share bits with the prefix) and the last one (shared with the suffix or the padding)
    are left out. Forms shorter than MIN_SECRET_LENGTH are dropped (they would match
    ordinary text)."""
    raw = value.encode("utf-8")
    forms = {value, raw.hex(), raw.hex().upper()}
    for shift in range(3):
        # Zero bytes stand for whatever precedes or follows; the slice keeps only
        # characters all of whose 6 bits come from `raw`.
        encoded = base64.b64encode(b"\0" * shift + raw + b"\0\0").decode("ascii")
        start = -(-8 * shift // 6)
        end = 8 * (shift + len(raw)) // 6
        core = encoded[start:end]
        forms.add(core)
        forms.add(core.translate(_URLSAFE))
    return {form for form in forms if len(form) >= MIN_SECRET_LENGTH}


class Redactor:
    """Replaces secrets in text and in protobuf messages.

    `secrets` are exact values to hide (configured tokens), on top of the token patterns;
    each is also looked for split over line breaks and in its encoded forms
    (`encoded_forms`).
    """

    def __init__(self, secrets: Iterable[str] = ()):
        forms: set[str] = set()
        for secret in secrets:
            if len(secret) >= MIN_SECRET_LENGTH:
                # Looked for in text whose line breaks are removed (see `_redact_values`),
                # so a value holding a line break is looked for without it too.
                forms.update(_without_line_breaks(form) for form in encoded_forms(secret))
        values = sorted((form for form in forms if len(form) >= MIN_SECRET_LENGTH), key=len, reverse=True)
        # Longest first, so a token that contains another is hidden whole.
        self._value_list = tuple(values)
        # One string to look a line's first or last characters up in (see `split_edges`).
        self._joined_values = "\n".join(values)
        self.secret_count = len({s for s in secrets if len(s) >= MIN_SECRET_LENGTH})

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None, extra: Iterable[str] = ()) -> Redactor:
        """A redactor for the configured tokens of `environ` (default: os.environ) plus `extra`."""
        return cls([*configured_secrets(environ), *extra])

    def redact_text(self, text: str) -> str:
        """`text` with every secret replaced by [REDACTED].

        Cost on text without secrets (the common case, megabytes of agent output): one
        substring search per configured value and encoded form (on a copy without line
        breaks when the text has any), one scan per rule (see `_Rule`) and one lowercased
        copy for the case-insensitive rules, made only when reached."""
        if not text:
            return text
        if self._value_list:
            text = self._redact_values(text)
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

    def split_edges(self, line: str) -> tuple[int, int, str]:
        """Pieces of configured values (and their encoded forms) at the edges of `line`, one
        line of an output that arrives line by line: `(head, tail, rest)`.

        `head` is the length of the longest start of `line` that is the end of a value
        (the second piece of a value split over lines); `tail` the length of the longest end
        of `line` that is the start of one, and `rest` what of that value is still to come.
        A piece counts from MIN_SECRET_LENGTH characters, like a value (0 and '' when none):
        the start of a value that ends a line is most of a secret whether or not the rest
        follows."""
        head = tail = 0
        rest = ""
        n = MIN_SECRET_LENGTH
        if len(line) < n:
            return head, tail, rest
        # A piece at the start holds the line's first n characters, one at the end its last
        # n: two substring searches rule out almost every line.
        start = line[:n]
        check_head = start in self._joined_values
        check_tail = line[-n:] in self._joined_values
        if not (check_head or check_tail):
            return head, tail, rest
        for value in self._value_list:
            if len(value) <= n:
                continue
            j = value.find(start, 1) if check_head else -1
            while j > 0:
                if len(value) - j > head and line.startswith(value[j:]):
                    head = len(value) - j
                j = value.find(start, j + 1)
            probe = value[:n]
            i = line.find(probe, max(0, len(line) - len(value) + 1)) if check_tail else -1
            while i >= 0:
                if len(line) - i > tail and value.startswith(line[i:]):
                    tail, rest = len(line) - i, value[len(line) - i :]
                i = line.find(probe, i + 1)
        return head, tail, rest

    def _redact_values(self, text: str) -> str:
        """Replaces the configured values and their encoded forms, also where line breaks
        split them: they are searched in `text` without its line breaks, and each match is
        mapped back to the pieces of `text` it came from."""
        joined = _without_line_breaks(text) if ("\n" in text or "\r" in text) else text
        # A long literal is found much faster than the alternation of all of them scans.
        present = [value for value in self._value_list if value in joined]
        if not present:
            return text
        if joined is text:
            if len(present) == 1:
                return text.replace(present[0], REDACTED)
            return re.compile("|".join(re.escape(v) for v in present)).sub(REDACTED, text)
        # Where each removed break sat in `joined`: a joined index j is index
        # j + bisect_right(shifts, j) of `text`.
        shifts = [match.start() - n for n, match in enumerate(_LINE_BREAKS.finditer(text))]
        pieces: list[str] = []
        done = 0
        for match in re.finditer("|".join(re.escape(v) for v in present), joined):
            start = match.start() + bisect_right(shifts, match.start())
            last = match.end() - 1
            end = last + bisect_right(shifts, last) + 1
            pieces.append(text[done:start])
            # Every piece of the secret becomes [REDACTED]; the line breaks between stay.
            pieces.append(_NOT_LINE_BREAKS.sub(REDACTED, text[start:end]))
            done = end
        pieces.append(text[done:])
        return "".join(pieces)

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
                assert field.message_type is not None  # set on every message field
                if field.message_type.GetOptions().map_entry:
                    changed += self._redact_map(field, value)
                elif field.is_repeated:
                    for item in value:
                        changed += self.redact_message(item)
                else:
                    changed += self.redact_message(value)
        return changed

    def _redact_map(self, field: FieldDescriptor, mapping: MutableMapping[Any, Any]) -> int:
        changed = 0
        assert field.message_type is not None  # a map field's entry message
        key_is_text = field.message_type.fields_by_name["key"].type == FieldDescriptor.TYPE_STRING
        value_field = field.message_type.fields_by_name["value"]
        for key in list(mapping):
            if value_field.type == FieldDescriptor.TYPE_MESSAGE:
                changed += self.redact_message(mapping[key])
            elif value_field.type == FieldDescriptor.TYPE_STRING:
                clean = self.redact_text(mapping[key])
                if clean != mapping[key]:
                    mapping[key] = clean
                    changed += 1
            if key_is_text:
                clean_key = self.redact_text(key)
                if clean_key != key:
                    # A map key cannot be changed in place: move the entry.
                    if value_field.type == FieldDescriptor.TYPE_MESSAGE:
                        mapping[clean_key].CopyFrom(mapping[key])
                    else:
                        mapping[clean_key] = mapping[key]
                    del mapping[key]
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
