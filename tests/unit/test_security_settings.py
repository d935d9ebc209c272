"""Security settings (agentgate.common.security): the loopback rule, flags over environment,
and the mistakes that must stop a service at start."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from agentgate.common.config import ConfigError
from agentgate.common.security import (
    ServerSecurity,
    TokenAuth,
    add_server_flags,
    client_credentials,
    client_options,
    client_token,
    is_loopback,
)


@pytest.fixture(autouse=True)
def _user_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Settings loaded from an empty environment fall back to ~/.agentgate: keep it in tmp.
    monkeypatch.setenv("HOME", str(tmp_path / "user"))


@pytest.mark.parametrize(
    ("address", "loopback"),
    [
        ("127.0.0.1:50051", True),
        ("127.3.4.5:1", True),
        ("localhost:50051", True),
        ("[::1]:50051", True),
        ("0.0.0.0:50051", False),
        ("[::]:50051", False),
        ("192.168.1.10:50051", False),
        ("queue:50051", False),
    ],
)
def test_loopback_addresses(address: str, loopback: bool):
    assert is_loopback(address) is loopback


def test_remote_bind_needs_a_token_or_an_explicit_allowance():
    with pytest.raises(ConfigError, match="AGENTGATE_TOKEN"):
        ServerSecurity().check_bind("0.0.0.0:50051")
    ServerSecurity().check_bind("127.0.0.1:50051")
    ServerSecurity(token="s3cret").check_bind("0.0.0.0:50051")
    ServerSecurity(allow_insecure_remote=True).check_bind("0.0.0.0:50051")


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_server_flags(parser)
    return parser.parse_args(list(argv))


def test_flags_win_over_the_environment(tmp_path: Path):
    env = {
        "AGENTGATE_TOKEN": " tok ",
        "AGENTGATE_TLS_CERT": "/env/cert.pem",
        "AGENTGATE_TLS_KEY": "/env/key.pem",
        "AGENTGATE_ALLOW_INSECURE_REMOTE": "yes",
    }
    from_env = ServerSecurity.load(None, env)
    assert from_env.token == "tok" and from_env.tls_cert == Path("/env/cert.pem") and from_env.allow_insecure_remote
    flagged = ServerSecurity.load(parse("--tls-cert", "c.pem", "--tls-key", "k.pem", "--tls-client-ca", "ca.pem"), env)
    assert (flagged.tls_cert, flagged.tls_key, flagged.tls_client_ca) == (Path("c.pem"), Path("k.pem"), Path("ca.pem"))
    assert flagged.tls
    assert ServerSecurity.load(parse("--allow-insecure-remote"), {}).allow_insecure_remote
    assert not ServerSecurity.load(parse(), {}).tls
    # Auth is on without any setting: the token and key files of the home are made.
    assert [type(i) for i in ServerSecurity.load(parse(), {}).interceptors()] == [TokenAuth]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--tls-cert", "c.pem"], "give both"),
        (["--tls-key", "k.pem"], "give both"),
        (["--tls-client-ca", "ca.pem"], "needs --tls-cert"),
    ],
)
def test_incomplete_tls_settings_are_refused(argv: list[str], message: str):
    with pytest.raises(ConfigError, match=message):
        ServerSecurity.load(parse(*argv), {})


def test_unreadable_certificate_names_the_flag(tmp_path: Path):
    security = ServerSecurity(tls_cert=tmp_path / "missing.pem", tls_key=tmp_path / "key.pem")
    with pytest.raises(ConfigError, match="--tls-cert: cannot read"):
        security.credentials()


def test_client_settings_come_from_the_environment(tmp_path: Path):
    assert client_token({"AGENTGATE_TOKEN": "abc\n"}) == "abc"
    assert client_token({}) == ""
    assert client_credentials({}) is None
    assert client_options({"AGENTGATE_TLS_SERVER_NAME": "queue.internal"}) == [
        ("grpc.ssl_target_name_override", "queue.internal")
    ]
    assert client_options({}) == []
    ca = tmp_path / "ca.pem"
    ca.write_text("not really a certificate")
    with pytest.raises(ConfigError, match="give both"):
        client_credentials({"AGENTGATE_TLS_CA": str(ca), "AGENTGATE_TLS_CLIENT_CERT": str(ca)})
    with pytest.raises(ConfigError, match="AGENTGATE_TLS_CA: cannot read"):
        client_credentials({"AGENTGATE_TLS_CA": str(tmp_path / "nope.pem")})
