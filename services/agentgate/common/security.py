"""Token auth, TLS and the loopback rule (docs/security.md), for servers and for the clients that
call them (CLI, client library, services calling each other).

Servers:
- `AGENTGATE_TOKEN` set: every call must carry `authorization: Bearer <token>` metadata, or
  ends UNAUTHENTICATED. Health and reflection stay open (probes, `buf curl --list-services`).
- `--tls-cert` + `--tls-key` (env AGENTGATE_TLS_CERT / AGENTGATE_TLS_KEY): serve TLS;
  `--tls-client-ca` (AGENTGATE_TLS_CLIENT_CA) also requires client certificates signed by it.
- Listening beyond loopback (0.0.0.0, a LAN address, a host name) needs a token, unless
  `--allow-insecure-remote` (AGENTGATE_ALLOW_INSECURE_REMOTE=1) says otherwise.

Clients (every channel made by `agentgate.common.channels`):
- send the bearer token of AGENTGATE_TOKEN on every call;
- use TLS when AGENTGATE_TLS_CA is set (the CA that signed the servers' certificates), with a
  client certificate from AGENTGATE_TLS_CLIENT_CERT / AGENTGATE_TLS_CLIENT_KEY when set, and
  AGENTGATE_TLS_SERVER_NAME as the name to check when it differs from the address's host.
"""

from __future__ import annotations

import argparse
import hmac
import ipaddress
import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from agentgate.common.config import ConfigError

log = logging.getLogger(__name__)

TOKEN_ENV = "AGENTGATE_TOKEN"
TLS_CERT_ENV = "AGENTGATE_TLS_CERT"
TLS_KEY_ENV = "AGENTGATE_TLS_KEY"
TLS_CLIENT_CA_ENV = "AGENTGATE_TLS_CLIENT_CA"
ALLOW_INSECURE_REMOTE_ENV = "AGENTGATE_ALLOW_INSECURE_REMOTE"
TLS_CA_ENV = "AGENTGATE_TLS_CA"
TLS_CLIENT_CERT_ENV = "AGENTGATE_TLS_CLIENT_CERT"
TLS_CLIENT_KEY_ENV = "AGENTGATE_TLS_CLIENT_KEY"
TLS_SERVER_NAME_ENV = "AGENTGATE_TLS_SERVER_NAME"

#: Methods anyone may call: health checks (probes, load balancers) and reflection.
OPEN_METHOD_PREFIXES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)

_TRUE = {"1", "true", "yes", "on"}


def is_loopback(address: str) -> bool:
    """True when `address` (host:port) can only be reached from this machine."""
    host = address.rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: may resolve to anything


def _read(path: Path | None, what: str) -> bytes | None:
    if path is None:
        return None
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{what}: cannot read {path}: {exc.strerror}") from None


@dataclass(frozen=True)
class ServerSecurity:
    """How a server authenticates callers and protects the connection."""

    token: str = ""
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    allow_insecure_remote: bool = False

    @classmethod
    def load(cls, args: argparse.Namespace | None = None, env: Mapping[str, str] | None = None) -> ServerSecurity:
        """From the flags `add_server_flags` added (when given) > environment > off."""
        env = os.environ if env is None else env

        def path(flag: str, key: str) -> Path | None:
            raw = getattr(args, flag, None) or env.get(key, "")
            return Path(raw).expanduser() if raw else None

        security = cls(
            token=env.get(TOKEN_ENV, "").strip(),
            tls_cert=path("tls_cert", TLS_CERT_ENV),
            tls_key=path("tls_key", TLS_KEY_ENV),
            tls_client_ca=path("tls_client_ca", TLS_CLIENT_CA_ENV),
            allow_insecure_remote=bool(getattr(args, "allow_insecure_remote", False))
            or env.get(ALLOW_INSECURE_REMOTE_ENV, "").strip().lower() in _TRUE,
        )
        if (security.tls_cert is None) != (security.tls_key is None):
            raise ConfigError("--tls-cert and --tls-key: give both or neither")
        if security.tls_client_ca is not None and security.tls_cert is None:
            raise ConfigError("--tls-client-ca: needs --tls-cert and --tls-key")
        return security

    @property
    def tls(self) -> bool:
        """True when the server speaks TLS."""
        return self.tls_cert is not None

    def check_bind(self, address: str) -> None:
        """Refuses to listen beyond loopback without a token (unless allowed)."""
        if is_loopback(address):
            return
        if not self.token and not self.allow_insecure_remote:
            raise ConfigError(
                f"refusing to listen on {address} without {TOKEN_ENV}: anyone who can reach it could "
                f"submit work. Set {TOKEN_ENV}, listen on 127.0.0.1, or pass --allow-insecure-remote "
                f"({ALLOW_INSECURE_REMOTE_ENV}=1)"
            )
        if not self.tls:
            log.warning("listening on %s without TLS: the token and all data travel in clear text", address)

    def credentials(self) -> grpc.ServerCredentials | None:
        """TLS credentials for the port, or None for plaintext."""
        if not self.tls:
            return None
        cert = _read(self.tls_cert, "--tls-cert")
        key = _read(self.tls_key, "--tls-key")
        client_ca = _read(self.tls_client_ca, "--tls-client-ca")
        assert cert is not None and key is not None  # tls: from_env requires the pair
        return grpc.ssl_server_credentials(
            [(key, cert)], root_certificates=client_ca, require_client_auth=client_ca is not None
        )

    def interceptors(self) -> list[grpc.aio.ServerInterceptor]:
        """The token check, when a token is set."""
        return [TokenAuth(self.token)] if self.token else []


def add_server_flags(parser: argparse.ArgumentParser) -> None:
    """The TLS and exposure flags every service takes (the token comes from the environment
    only: a flag would show it to anyone who lists processes)."""
    parser.add_argument("--tls-cert", help=f"PEM certificate chain: serve TLS (env {TLS_CERT_ENV})")
    parser.add_argument("--tls-key", help=f"PEM private key of --tls-cert (env {TLS_KEY_ENV})")
    parser.add_argument(
        "--tls-client-ca", help=f"PEM CA: require client certificates signed by it (env {TLS_CLIENT_CA_ENV})"
    )
    parser.add_argument(
        "--allow-insecure-remote",
        action="store_true",
        help=f"listen beyond loopback even without {TOKEN_ENV} (env {ALLOW_INSECURE_REMOTE_ENV}=1)",
    )


class TokenAuth(grpc.aio.ServerInterceptor):
    """Lets a call through only with `authorization: Bearer <token>`; health and
    reflection are always let through. The request of a refused call is never decoded."""

    def __init__(self, token: str):
        self._expected = f"Bearer {token}".encode()

    def _authorized(self, metadata: Any) -> bool:
        for key, value in metadata or ():
            if key == "authorization":
                given = value.encode() if isinstance(value, str) else bytes(value)
                if hmac.compare_digest(given, self._expected):
                    return True
        return False

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        method = handler_call_details.method
        if method.startswith(OPEN_METHOD_PREFIXES) or self._authorized(handler_call_details.invocation_metadata):
            return await continuation(handler_call_details)
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        return _refusal(handler, method)


def _refusal(handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
    """A handler of the same shape as `handler` that ends the call UNAUTHENTICATED."""
    message = f"{method}: missing or wrong token (send 'authorization: Bearer <{TOKEN_ENV}>')"

    async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    async def streaming(request: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(unary)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(streaming)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(unary)
    return grpc.stream_stream_rpc_method_handler(streaming)


# -- clients ---------------------------------------------------------------------------


def client_token(env: Mapping[str, str] | None = None) -> str:
    """The token clients send ('' = none)."""
    env = os.environ if env is None else env
    return env.get(TOKEN_ENV, "").strip()


def client_credentials(env: Mapping[str, str] | None = None) -> grpc.ChannelCredentials | None:
    """TLS credentials for a channel when AGENTGATE_TLS_CA is set, else None (plaintext)."""
    env = os.environ if env is None else env
    ca = env.get(TLS_CA_ENV, "").strip()
    if not ca:
        return None

    def read(key: str) -> bytes | None:
        raw = env.get(key, "").strip()
        return _read(Path(raw).expanduser(), key) if raw else None

    cert, key = read(TLS_CLIENT_CERT_ENV), read(TLS_CLIENT_KEY_ENV)
    if (cert is None) != (key is None):
        raise ConfigError(f"{TLS_CLIENT_CERT_ENV} and {TLS_CLIENT_KEY_ENV}: give both or neither")
    return grpc.ssl_channel_credentials(root_certificates=read(TLS_CA_ENV), private_key=key, certificate_chain=cert)


def client_options(env: Mapping[str, str] | None = None) -> list[tuple[str, Any]]:
    """Channel options for TLS: the server name to check, when overridden."""
    env = os.environ if env is None else env
    name = env.get(TLS_SERVER_NAME_ENV, "").strip()
    return [("grpc.ssl_target_name_override", name)] if name else []


def _with_token(metadata: Any, token: str) -> list[tuple[str, Any]]:
    kept = [(key, value) for key, value in (metadata or ()) if key != "authorization"]
    return [*kept, ("authorization", f"Bearer {token}")]


class _AioToken:
    """Adds the bearer token to the calls of an asyncio channel."""

    def __init__(self, token: str):
        self._token = token

    def _details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        return grpc.aio.ClientCallDetails(
            details.method,
            details.timeout,
            grpc.aio.Metadata(*_with_token(details.metadata, self._token)),
            details.credentials,
            details.wait_for_ready,
        )


# grpc.aio files an interceptor under the first call kind it implements only: one class each.
class _AioTokenUnaryUnary(_AioToken, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return await continuation(self._details(client_call_details), request)


class _AioTokenUnaryStream(_AioToken, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return await continuation(self._details(client_call_details), request)


class _AioTokenStreamUnary(_AioToken, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(self, continuation: Any, client_call_details: Any, request_iterator: Any) -> Any:
        return await continuation(self._details(client_call_details), request_iterator)


class _AioTokenStreamStream(_AioToken, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(self, continuation: Any, client_call_details: Any, request_iterator: Any) -> Any:
        return await continuation(self._details(client_call_details), request_iterator)


class _SyncDetails:
    """grpc.ClientCallDetails with other metadata."""

    def __init__(self, details: grpc.ClientCallDetails, metadata: list[tuple[str, Any]]):
        self.method = details.method
        self.timeout = details.timeout
        self.metadata = metadata
        self.credentials = details.credentials
        self.wait_for_ready = getattr(details, "wait_for_ready", None)
        self.compression = getattr(details, "compression", None)


class _SyncToken(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds the bearer token to every call of a blocking channel."""

    def __init__(self, token: str):
        self._token = token

    def _details(self, details: grpc.ClientCallDetails) -> Any:
        return _SyncDetails(details, _with_token(details.metadata, self._token))

    def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return continuation(self._details(client_call_details), request)

    def intercept_unary_stream(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return continuation(self._details(client_call_details), request)

    def intercept_stream_unary(self, continuation: Any, client_call_details: Any, request_iterator: Any) -> Any:
        return continuation(self._details(client_call_details), request_iterator)

    def intercept_stream_stream(self, continuation: Any, client_call_details: Any, request_iterator: Any) -> Any:
        return continuation(self._details(client_call_details), request_iterator)


def aio_client_interceptors(token: str | None = None) -> list[Any]:
    """The token interceptor for an asyncio channel (none without a token)."""
    token = client_token() if token is None else token
    if not token:
        return []
    kinds = (_AioTokenUnaryUnary, _AioTokenUnaryStream, _AioTokenStreamUnary, _AioTokenStreamStream)
    return [kind(token) for kind in kinds]


def intercept_sync_channel(channel: grpc.Channel, token: str | None = None) -> grpc.Channel:
    """`channel` sending the token on every call (unchanged without a token)."""
    token = client_token() if token is None else token
    return grpc.intercept_channel(channel, _SyncToken(token)) if token else channel
