"""The security scan of a change: diff parsing, secret patterns, entropy, masking, allowlist."""

from __future__ import annotations

import pytest

from agentgate.workspace.gate.plan import AllowEntry, Security
from agentgate.workspace.gate.security_scan import (
    Change,
    added_lines,
    forbidden_file_findings,
    mask,
    scan_change,
    scan_diff,
    scan_line,
    shannon_entropy,
    unquote_path,
)

# Test secrets are built from pieces so that this file holds none.
AWS = "AKIA" + "Z7XQ3MNB4VLK2PQR"
GITHUB = "ghp_" + "aB3dE5fG7hJ9kL1mN3pQ5rS7tU9vW1xY3zA5"
GITHUB_PAT = "github_pat_" + "11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz0123456789ABCDEF"
SLACK = "xoxb-" + "123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx"
STRIPE = "sk_live_" + "4eC39HqLyjWDarjtT1zdp7dc"
OPENAI = "sk-proj-" + "Ab1Cd2Ef3Gh4Ij5Kl6Mn7Op8Qr9St0Uv1Wx2Yz3"
GOOGLE = "AIza" + "SyD-9tSrke72PouQMnMX-a7eZSW0jkFMBWY"
RANDOM = "q8Zr3LxV0pT6wN2yK9sB4mF7hJ1dG5cA"


@pytest.mark.parametrize(
    ("line", "rule", "secret"),
    [
        (f"aws_key = '{AWS}'", "aws-access-key", AWS),
        (f"aws_secret_access_key = {'wJalrXUtnFEMI/K7MDENG/bPxRfiCY' + 'EXAMPLEKEY'}", "aws-secret-key",
         "wJalrXUtnFEMI/K7MDENG/bPxRfiCY" + "EXAMPLEKEY"),
        (f'token: "{GITHUB}"', "github-token", GITHUB),
        (f"GH={GITHUB_PAT}", "github-token", GITHUB_PAT),
        (f"slack = '{SLACK}'", "slack-token", SLACK),
        (f"stripe.api_key = '{STRIPE}'", "stripe-key", STRIPE),
        (f"OPENAI_API_KEY={OPENAI}", "openai-key", OPENAI),
        (f"maps_key = '{GOOGLE}'", "google-api-key", GOOGLE),
        ("-----BEGIN RSA PRIVATE KEY-----", "private-key", "-----BEGIN RSA PRIVATE KEY-----"),
        ("-----BEGIN OPENSSH PRIVATE KEY-----", "private-key", "-----BEGIN OPENSSH PRIVATE KEY-----"),
        ("DB = 'postgres://app:s3cr3tPassw0rd@db.internal:5432/app'", "url-password", "s3cr3tPassw0rd"),
        (f"signing_secret = '{RANDOM}'", "high-entropy", RANDOM),
    ],
)
def test_each_rule_finds_its_secret(line: str, rule: str, secret: str) -> None:
    findings = scan_line("app/config.py", 7, line)
    assert [(f.rule, f.secret, f.line) for f in findings] == [(rule, secret, 7)]


@pytest.mark.parametrize(
    "line",
    [
        "DB = 'postgres://user:${DB_PASSWORD}@localhost/app'",
        "DB = 'postgres://user:password@localhost/app'",
        "url = 'https://example.com/a/b/c?page=2'",
        "def test_something_with_a_very_long_descriptive_name():",
        "commit = '4b825dc642cb6eb9a060e54bf8d69288fbee4904'",  # a hash, no secret word near it
        "import os; KEY = os.environ['AWS_SECRET_ACCESS_KEY']",
        "path = 'src/agentgate/workspace/gate/security_scan.py'",
    ],
)
def test_ordinary_lines_are_not_findings(line: str) -> None:
    assert scan_line("app/config.py", 1, line) == []


def test_hex_secret_next_to_a_secret_word_is_found() -> None:
    [finding] = scan_line("a.py", 1, "api_secret = '9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08'")
    assert finding.rule == "high-entropy"


def test_entropy_is_skipped_in_lock_files_and_when_disabled() -> None:
    line = f"  integrity: sha512-{RANDOM}"
    assert scan_line("package-lock.json", 3, line) == []
    assert scan_line("a.py", 3, f"x = '{RANDOM}'", high_entropy=False) == []


def test_shannon_entropy() -> None:
    assert shannon_entropy("") == 0.0
    assert shannon_entropy("aaaa") == 0.0
    assert shannon_entropy("abcd") == 2.0


def test_mask_never_shows_the_secret() -> None:
    assert mask(AWS) == "AKIA******** (20 chars)"
    assert mask("short") == "*****"
    finding = scan_line("settings.py", 3, f"K = '{AWS}'")[0]
    assert finding.describe() == "settings.py:3: aws-access-key: AKIA******** (20 chars)"
    assert AWS not in finding.describe()


def test_forbidden_files() -> None:
    paths = [
        ".env", "config/.env.production", ".env.example", "certs/server.pem", "id_rsa", "id_rsa.pub",
        "home/.aws/credentials", "credentials.json", "src/main.py", "deploy/key.key", ".npmrc",
    ]
    found = [f.path for f in forbidden_file_findings(paths)]
    assert found == [
        ".env", "config/.env.production", "certs/server.pem", "id_rsa", "home/.aws/credentials",
        "credentials.json", "deploy/key.key", ".npmrc",
    ]
    assert forbidden_file_findings([".env"])[0].describe().startswith(".env: forbidden-file: (files like this")


DIFF = """\
diff --git a/app.py b/app.py
index 1111111..2222222 100644
--- a/app.py
+++ b/app.py
@@ -1,0 +2,2 @@ import os
+KEY = 'one'
+TOKEN = 'two'
@@ -10 +12 @@ def f():
-    return 1
+    return 2
diff --git "a/dir/we\\"ird\\tname.py" "b/dir/we\\"ird\\tname.py"
new file mode 100644
--- /dev/null
+++ "b/dir/we\\"ird\\tname.py"
@@ -0,0 +1 @@
+x = 1
diff --git a/gone.py b/gone.py
deleted file mode 100644
--- a/gone.py
+++ /dev/null
@@ -1 +0,0 @@
-y = 2
diff --git a/img.png b/img.png
new file mode 100644
Binary files /dev/null and b/img.png differ
"""


def test_added_lines_carry_their_new_line_numbers() -> None:
    assert list(added_lines(DIFF)) == [
        ("app.py", 2, "KEY = 'one'"),
        ("app.py", 3, "TOKEN = 'two'"),
        ("app.py", 12, "    return 2"),
        ('dir/we"ird\tname.py', 1, "x = 1"),
    ]


def test_unquote_path() -> None:
    assert unquote_path("plain/path.py") == "plain/path.py"
    assert unquote_path('"b/caf\\303\\251.py"') == "b/café.py"


def test_scan_diff_and_allowlist() -> None:
    diff = (
        "diff --git a/tests/fixtures/k.py b/tests/fixtures/k.py\n+++ b/tests/fixtures/k.py\n@@ -0,0 +1 @@\n"
        f"+K = '{AWS}'\n"
        "diff --git a/app.py b/app.py\n+++ b/app.py\n@@ -0,0 +1,2 @@\n"
        f"+T = '{GITHUB}'\n+S = '{STRIPE}'\n"
    )
    changed = ["tests/fixtures/k.py", "app.py", ".env"]
    findings, allowed = scan_diff(changed, diff, Security())
    assert [(f.rule, f.path) for f in findings] == [
        ("forbidden-file", ".env"),
        ("aws-access-key", "tests/fixtures/k.py"),
        ("github-token", "app.py"),
        ("stripe-key", "app.py"),
    ]
    assert allowed == 0
    allowlist = [
        AllowEntry(path="tests/fixtures/**"),
        AllowEntry(rule="forbidden-file", path=".env"),
        AllowEntry(secret="sk_live_[0-9A-Za-z]+", path="app.py"),
        AllowEntry(secret="ghp_nope"),  # must match the whole secret
    ]
    findings, allowed = scan_diff(changed, diff, Security(allowlist=allowlist))
    assert [(f.rule, f.path) for f in findings] == [("github-token", "app.py")]
    assert allowed == 3


def test_scan_change_check() -> None:
    diff = f"+++ b/a.py\n@@ -0,0 +1 @@\n+K = '{AWS}'\n"
    check = scan_change(Change("a" * 40, "b" * 40, ["a.py"], diff), Security())
    assert (check.name, check.kind, check.passed, check.exit_code) == ("security-scan", "security", False, 1)
    assert check.command == "scan of the change aaaaaaaaaaaa..bbbbbbbbbbbb"
    assert check.output == (
        "a.py:1: aws-access-key: AKIA******** (20 chars)\n"
        "1 finding(s) in the change (1 changed file(s) scanned). Remove the secret (and rotate it if it was real); "
        "read it from the environment instead."
    )
    clean = scan_change(Change("a" * 40, "a" * 40, [], ""), Security())
    assert clean.passed and clean.output == "no secrets found in the change (0 changed file(s) scanned)"
