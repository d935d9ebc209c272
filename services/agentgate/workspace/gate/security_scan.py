"""The security scan of a change (docs/verify-yaml.md, L0 check of kind `security`).

It looks only at what the run changed — the diff between the run's base snapshot and the
snapshot being verified — so secrets already in the user's history do not fail every run:

- forbidden files added or modified (`.env`, private keys, credential files);
- secret patterns in added lines (cloud keys, GitHub/Slack/Stripe/OpenAI tokens, private
  key blocks, URLs with a password);
- high-entropy strings in added lines (random-looking tokens no pattern knows).

Findings name the file and line; the secret itself is always masked. An allowlist in the
gate plan (`security.allowlist`) silences findings by path, secret or rule.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path

from agentgate.v1 import common_pb2
from agentgate.workspace import git as gitops
from agentgate.workspace.gate.plan import AllowEntry, Security

CHECK_NAME = "security-scan"
CHECK_KIND = "security"
#: Findings listed in the check's output (the count is always given).
MAX_LISTED_FINDINGS = 50
#: Lines longer than this are scanned only in their first part (minified files).
MAX_LINE_CHARS = 4096

#: File names (or patterns on the name) that must never be committed by an agent.
FORBIDDEN_NAMES = (
    ".env",
    ".env.*",
    "*.pem",
    "*.key",
    "*.p12",
    "*.pfx",
    "*.jks",
    "*.keystore",
    "id_rsa",
    "id_dsa",
    "id_ecdsa",
    "id_ed25519",
    ".netrc",
    ".pgpass",
    ".git-credentials",
    "credentials",
    "credentials.json",
    "service-account*.json",
    ".npmrc",
    ".pypirc",
)
#: Names that match FORBIDDEN_NAMES but are templates, meant to be committed.
TEMPLATE_SUFFIXES = (".example", ".sample", ".template", ".dist", ".tmpl")

#: Lock files: full of hashes that look random and are not secrets.
ENTROPY_SKIPPED_NAMES = (
    "package-lock.json",
    "yarn.lock",
    "pnpm-lock.yaml",
    "poetry.lock",
    "Pipfile.lock",
    "uv.lock",
    "Cargo.lock",
    "go.sum",
    "composer.lock",
    "Gemfile.lock",
)

# Each rule: (name, regex, group holding the secret). Sources for the token shapes: the
# vendors' own documentation of their key prefixes (AWS AKIA/ASIA access key ids, GitHub
# ghp_/gho_/ghu_/ghs_/ghr_ and github_pat_, Slack xox*-, Stripe sk_/rk_ live/test keys).
SECRET_PATTERNS: tuple[tuple[str, re.Pattern[str], int], ...] = (
    ("aws-access-key", re.compile(r"\b((?:AKIA|ASIA)[0-9A-Z]{16})\b"), 1),
    (
        "aws-secret-key",
        re.compile(r"(?i)aws_?secret_?(?:access_?)?key\W{0,5}[=:]\s*[\"']?([A-Za-z0-9/+=]{40})(?![A-Za-z0-9/+=])"),
        1,
    ),
    ("google-api-key", re.compile(r"\b(AIza[0-9A-Za-z_\-]{35})(?![0-9A-Za-z_\-])"), 1),
    ("github-token", re.compile(r"\b(gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{22,255})\b"), 1),
    ("slack-token", re.compile(r"\b(xox[abposr]-[A-Za-z0-9-]{10,})"), 1),
    (
        "slack-webhook",
        re.compile(r"(https://hooks\.slack\.com/services/T[A-Za-z0-9_]+/B[A-Za-z0-9_]+/[A-Za-z0-9_]+)"),
        1,
    ),
    ("stripe-key", re.compile(r"\b((?:sk|rk)_(?:live|test)_[0-9A-Za-z]{16,})\b"), 1),
    ("openai-key", re.compile(r"\b(sk-(?:proj-|ant-)?[A-Za-z0-9_\-]{32,})"), 1),
    ("private-key", re.compile(r"(-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----)"), 1),
    # scheme://user:password@host — the password is the secret; ${VAR} and $VAR are references.
    ("url-password", re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.\-]{1,20}://[^\s:/@\"'`]+:([^\s:/@\"'`$]{3,})@[^\s/\"'`]+"), 1),
)
#: Values of url-password that are placeholders, not passwords.
PLACEHOLDER_PASSWORDS = re.compile(r"(?i)^(?:\*+|x+|password|pass|passwd|secret|changeme|<[^>]*>|\{[^}]*\})$")

#: Candidates for the entropy check: long runs of base64/url-safe characters.
ENTROPY_TOKEN = re.compile(r"[A-Za-z0-9+/=_\-]{20,}")
HEX_TOKEN = re.compile(r"^[0-9a-fA-F]+$")
#: Bits per character above which a token counts as random (base64 alphabet: 6 bits max).
BASE64_ENTROPY_THRESHOLD = 4.5
#: Hex strings are only flagged next to a word that says "secret": hashes are everywhere.
HEX_ENTROPY_THRESHOLD = 3.0
SECRET_WORDS = re.compile(r"(?i)(secret|token|passw|pwd|api_?key|apikey|auth|credential|private)")


@dataclass(frozen=True)
class Finding:
    """One problem of the scan. `secret` is the raw text and is never shown."""

    rule: str
    path: str
    line: int
    secret: str
    detail: str = ""

    def describe(self) -> str:
        """`path:line: rule: masked` — file-level findings have no line."""
        where = f"{self.path}:{self.line}" if self.line else self.path
        shown = f" {mask(self.secret)}" if self.secret else ""
        detail = f" ({self.detail})" if self.detail else ""
        return f"{where}: {self.rule}:{shown}{detail}"


def mask(secret: str) -> str:
    """The secret with all but its first 4 characters hidden (short ones hidden whole)."""
    if len(secret) <= 8:
        return "*" * len(secret)
    return f"{secret[:4]}{'*' * 8} ({len(secret)} chars)"


def shannon_entropy(text: str) -> float:
    """Bits per character of `text`."""
    if not text:
        return 0.0
    counts: dict[str, int] = {}
    for char in text:
        counts[char] = counts.get(char, 0) + 1
    total = len(text)
    return -sum(n / total * math.log2(n / total) for n in counts.values())


def _name_matches(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatchcase(name, pattern) for pattern in patterns)


def forbidden_file_findings(paths: Iterable[str]) -> list[Finding]:
    """Added or modified files whose name is a secret store (templates excepted)."""
    found = []
    for path in paths:
        name = path.rsplit("/", 1)[-1]
        if name.endswith(TEMPLATE_SUFFIXES) or name.endswith(".pub"):
            continue
        if _name_matches(name, FORBIDDEN_NAMES) or path.endswith(".aws/credentials"):
            found.append(Finding("forbidden-file", path, 0, "", "files like this hold secrets; do not commit them"))
    return found


def _high_entropy_tokens(line: str) -> Iterator[str]:
    for match in ENTROPY_TOKEN.finditer(line):
        token = match.group(0).strip("=")
        if len(token) < 20:
            continue
        if HEX_TOKEN.match(token):
            if len(token) >= 32 and shannon_entropy(token) >= HEX_ENTROPY_THRESHOLD and SECRET_WORDS.search(line):
                yield token
            continue
        # Words, paths and identifiers: random tokens mix letters and digits.
        if not (re.search(r"[0-9]", token) and re.search(r"[A-Za-z]", token)):
            continue
        if token.count("/") > 2 or token.count("_") > 3 or token.count("-") > 3:
            continue
        if shannon_entropy(token) >= BASE64_ENTROPY_THRESHOLD:
            yield token


def scan_line(path: str, number: int, line: str, high_entropy: bool = True) -> list[Finding]:
    """Findings in one added line."""
    line = line[:MAX_LINE_CHARS]
    found: list[Finding] = []
    claimed: list[str] = []
    for rule, pattern, group in SECRET_PATTERNS:
        for match in pattern.finditer(line):
            secret = match.group(group)
            if rule == "url-password" and PLACEHOLDER_PASSWORDS.match(secret):
                continue
            found.append(Finding(rule, path, number, secret))
            claimed.append(secret)
    name = path.rsplit("/", 1)[-1]
    if high_entropy and name not in ENTROPY_SKIPPED_NAMES:
        for token in _high_entropy_tokens(line):
            if any(token in secret or secret in token for secret in claimed):
                continue
            found.append(Finding("high-entropy", path, number, token, f"{shannon_entropy(token):.1f} bits/char"))
    return found


_HUNK = re.compile(r"^@@ -\d+(?:,\d+)? \+(\d+)(?:,\d+)? @@")
_C_ESCAPES = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v", "\\": "\\", '"': '"'}


def unquote_path(text: str) -> str:
    """A path as git prints it in diff headers: C-quoted when it holds special characters."""
    if not (text.startswith('"') and text.endswith('"')):
        return text
    body, out, i = text[1:-1], bytearray(), 0
    while i < len(body):
        char = body[i]
        if char == "\\" and i + 1 < len(body):
            nxt = body[i + 1]
            if nxt in "01234567" and i + 4 <= len(body):
                out.append(int(body[i + 1 : i + 4], 8))
                i += 4
                continue
            out += _C_ESCAPES.get(nxt, nxt).encode()
            i += 2
            continue
        out += char.encode()
        i += 1
    return out.decode("utf-8", errors="replace")


def added_lines(diff: str) -> Iterator[tuple[str, int, str]]:
    """(path, line number in the new file, text) of every added line of a unified diff."""
    path: str | None = None
    number = 0
    in_hunk = False
    for raw in diff.split("\n"):
        if raw.startswith("diff --git "):
            path, in_hunk = None, False
        elif not in_hunk and raw.startswith("+++ "):
            target = raw[4:]
            path = None if target == "/dev/null" else unquote_path(target).removeprefix("b/")
        elif raw.startswith("@@"):
            match = _HUNK.match(raw)
            if match:
                number, in_hunk = int(match.group(1)), True
        elif in_hunk and path is not None:
            if raw.startswith("+"):
                yield path, number, raw[1:]
                number += 1
            elif raw.startswith(" "):
                number += 1
            # "-" lines and "\ No newline at end of file" do not move the new-file count.


def is_allowed(finding: Finding, allowlist: Iterable[AllowEntry]) -> bool:
    """True when an allowlist entry matches every part it gives."""
    from agentgate.workspace.gate.runner import glob_match

    for entry in allowlist:
        if entry.path and not glob_match(finding.path, entry.path):
            continue
        if entry.rule and entry.rule != finding.rule:
            continue
        if entry.secret and (not finding.secret or re.fullmatch(entry.secret, finding.secret) is None):
            continue
        return True
    return False


def scan_diff(changed: Iterable[str], diff: str, settings: Security) -> tuple[list[Finding], int]:
    """Findings of a change (allowlist applied) and how many the allowlist silenced."""
    findings = forbidden_file_findings(changed)
    for path, number, text in added_lines(diff):
        findings.extend(scan_line(path, number, text, settings.high_entropy))
    kept = [f for f in findings if not is_allowed(f, settings.allowlist)]
    return kept, len(findings) - len(kept)


def report(findings: list[Finding], allowed: int, files: int, note: str = "") -> str:
    """The check's output: one line per finding (masked), then counts."""
    lines = [f.describe() for f in findings[:MAX_LISTED_FINDINGS]]
    if len(findings) > MAX_LISTED_FINDINGS:
        lines.append(f"... and {len(findings) - MAX_LISTED_FINDINGS} more")
    summary = (
        f"{len(findings)} finding(s) in the change ({files} changed file(s) scanned)"
        if findings
        else f"no secrets found in the change ({files} changed file(s) scanned)"
    )
    if allowed:
        summary += f"; {allowed} finding(s) allowed by security.allowlist"
    if findings:
        summary += ". Remove the secret (and rotate it if it was real); read it from the environment instead."
    lines.append(summary)
    if note:
        lines.append(note)
    return "\n".join(lines)


@dataclass(frozen=True)
class Change:
    """What a run changed: the files added or modified, and their diff without context."""

    base: str
    commit: str
    changed: list[str]
    diff: str

    def added_lines(self) -> Iterator[tuple[str, int, str]]:
        """(path, line, text) of every added line."""
        return added_lines(self.diff)


async def load_change(repo: Path, base: str, commit: str) -> Change:
    """The change `base..commit` of the git directory `repo` (deleted files left out)."""
    if base == commit:
        return Change(base, commit, [], "")
    # The paths come with the statuses the snapshot (or the patch export) asked for already.
    changes, diff = await asyncio.gather(
        gitops.changes(repo, base, commit),
        gitops.git(
            # Every output option explicit: the user's git configuration must not change the format.
            "diff", "--no-color", "--no-ext-diff", "--no-textconv", "--no-renames", "--diff-filter=d",
            "--unified=0", "--src-prefix=a/", "--dst-prefix=b/", base, commit, cwd=repo, git_dir=repo,
        ),
    )
    return Change(base, commit, [path for status, path in changes if status != "D"], diff.stdout)


def scan_change(change: Change, settings: Security) -> common_pb2.CheckResult:
    """The security check of a change (CPU only; call off-loop for big diffs)."""
    started = time.monotonic()
    findings, allowed = scan_diff(change.changed, change.diff, settings)
    return common_pb2.CheckResult(
        name=CHECK_NAME,
        kind=CHECK_KIND,
        command=f"scan of the change {change.base[:12]}..{change.commit[:12]}",
        passed=not findings,
        exit_code=0 if not findings else 1,
        expected_exit=0,
        output=report(findings, allowed, len(change.changed)),
        duration_seconds=time.monotonic() - started,
    )
