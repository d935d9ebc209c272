"""Authentication, TLS and the loopback rule, for servers and for the clients that call them
(CLI, client library, services calling each other). docs/security.md explains the model.

Credentials (all under `$AGENTGATE_HOME/auth/`, folder 0700, files 0600, made by the first
`agentgate up` or service start that needs them and reused after):
- `token`: the *client token*. The CLI and the clients send it as `authorization: Bearer
  <token>` (AGENTGATE_TOKEN, when set, wins). It may read everything, submit and cancel; it
  cannot write run records or lease work (WORKER_ONLY_METHODS).
- `service.key`: the *service key*, known to the service processes only. From it come
  - service credentials `ag1:service:<sig>:<name>` (the queue forwarding events), and
  - worker credentials `ag1:worker:<sig>:<worker_id>` (one per orchestrator worker),
  where <sig> = HMAC-SHA256(key, kind NUL name); and
  - lease tokens: the queue signs (run_id, worker_id, lease_id, expiry) when it leases a work
    order (and again on each heartbeat). A worker sends its lease token as `x-agentgate-lease`
    metadata; persistence lets a worker write only the run of a lease token that names it and
    has not expired, checked offline with the key (no call to the queue).

Every RPC but `grpc.health.v1.Health` and server reflection needs a credential; a call without
one (or with a wrong one) ends UNAUTHENTICATED, before its request is decoded. There is no
flag to turn this off: only code (tests that show an attack held) can build a
`ServerSecurity(insecure_no_auth=True)`.

TLS: `--tls-cert` + `--tls-key` (env AGENTGATE_TLS_CERT / AGENTGATE_TLS_KEY) serve TLS;
`--tls-client-ca` (AGENTGATE_TLS_CLIENT_CA) also requires client certificates signed by it.
Clients use TLS when AGENTGATE_TLS_CA is set, with a client certificate from
AGENTGATE_TLS_CLIENT_CERT / AGENTGATE_TLS_CLIENT_KEY when set, and AGENTGATE_TLS_SERVER_NAME
as the name to check when it differs from the address's host.
"""

from __future__ import annotations

import base64
import contextvars
import hashlib
import hmac
import ipaddress
import json
import logging
import os
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc

from agentgate.common.config import ConfigError

if TYPE_CHECKING:
    import argparse

log = logging.getLogger(__name__)

TOKEN_ENV = "AGENTGATE_TOKEN"
TOKEN_FILE_ENV = "AGENTGATE_TOKEN_FILE"
SERVICE_KEY_FILE_ENV = "AGENTGATE_SERVICE_KEY_FILE"
TLS_CERT_ENV = "AGENTGATE_TLS_CERT"
TLS_KEY_ENV = "AGENTGATE_TLS_KEY"
TLS_CLIENT_CA_ENV = "AGENTGATE_TLS_CLIENT_CA"
ALLOW_INSECURE_REMOTE_ENV = "AGENTGATE_ALLOW_INSECURE_REMOTE"
TLS_CA_ENV = "AGENTGATE_TLS_CA"
TLS_CLIENT_CERT_ENV = "AGENTGATE_TLS_CLIENT_CERT"
TLS_CLIENT_KEY_ENV = "AGENTGATE_TLS_CLIENT_KEY"
TLS_SERVER_NAME_ENV = "AGENTGATE_TLS_SERVER_NAME"

#: Where the credentials live, relative to $AGENTGATE_HOME.
AUTH_DIR = "auth"
TOKEN_FILE = "token"
SERVICE_KEY_FILE = "service.key"
#: Metadata key of the lease token a worker sends with its writes.
LEASE_METADATA = "x-agentgate-lease"
#: Seconds a lease token stays good past its lease's expiry (clocks of two hosts differ a little).
LEASE_CLOCK_SKEW_SECONDS = 5

#: Methods anyone may call: health checks (probes, load balancers) and reflection (lists
#: services and message types, which the public protos already tell).
OPEN_METHOD_PREFIXES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)

_PERSISTENCE = "/agentgate.v1.PersistenceService/"
_QUEUE = "/agentgate.v1.QueueService/"


def _run_ids_of(method: str, request: Any) -> set[str]:
    """The runs a persistence write touches (every one must be the caller's leased run)."""
    name = method.rpartition("/")[2]
    if name in ("CreateRun", "UpdateRun"):
        return {request.run.id}
    if name == "SaveAgentResult":
        return {request.result.run_id}
    if name == "SaveVerificationReport":
        return {request.report.run_id}
    if name == "SaveIteration":
        return {request.iteration.run_id}
    if name == "AppendEvents":
        return {event.run_id for event in request.events}
    raise AssertionError(method)


#: Writes of run records: a worker may make them only for the run it holds a lease on.
RUN_WRITE_METHODS = frozenset(
    _PERSISTENCE + name
    for name in ("CreateRun", "UpdateRun", "SaveAgentResult", "SaveVerificationReport", "SaveIteration", "AppendEvents")
)
#: Methods a client token may not call: run records are written by the worker running the
#: run, and only workers take work from the queue.
WORKER_ONLY_METHODS = RUN_WRITE_METHODS | {_QUEUE + name for name in ("Lease", "Heartbeat", "Complete")}

_TRUE = {"1", "true", "yes", "on"}


# -- secret files ----------------------------------------------------------------------


def _home_of(env: Mapping[str, str]) -> Path:
    """$AGENTGATE_HOME as `env` says (default ~/.agentgate), not as os.environ does."""
    from agentgate.common.config import agentgate_home

    return agentgate_home(env.get("AGENTGATE_HOME") or str(Path.home() / ".agentgate"))


def auth_dir(home: Path) -> Path:
    """`$AGENTGATE_HOME/auth`: the folder of the token and the service key."""
    return home / AUTH_DIR


def _read_secret(path: Path) -> str:
    value = path.read_text().strip()
    if not value:
        raise ConfigError(f"{path}: the file is empty")
    return value


def ensure_secret_file(path: Path, value: str | None = None) -> str:
    """The secret in `path`, made first when missing (or replaced by `value` when given).

    The file is written under another name with mode 0600 from its creation (O_EXCL, so never
    readable by others even for a moment) and then linked or renamed into place, so a
    reader sees either no file or a whole one; when two processes race to make it, the
    first link wins and both return its secret."""
    folder = path.parent
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    if value is None and path.exists():
        _tighten(path)
        return _read_secret(path)
    secret = value if value is not None else secrets.token_hex(32)
    temp = folder / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "w") as out:
            out.write(secret + "\n")
            out.flush()
            os.fsync(out.fileno())
        if value is not None:
            os.replace(temp, path)
            return secret
        try:
            os.link(temp, path)
        except FileExistsError:
            return _read_secret(path)
        return secret
    finally:
        temp.unlink(missing_ok=True)


def _tighten(path: Path) -> None:
    """Refuses a secret file others can read (a hand-made one, a copy) by fixing its mode."""
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        log.warning("%s was readable by others (mode %o); setting 0600", path, mode)
        path.chmod(0o600)


def ensure_credentials(home: Path, token: str | None = None) -> tuple[Path, Path]:
    """Makes (or keeps) the token and service key of `home`; `token` replaces the stored
    client token. Returns their paths."""
    folder = auth_dir(home)
    ensure_secret_file(folder / TOKEN_FILE, token)
    ensure_secret_file(folder / SERVICE_KEY_FILE)
    return folder / TOKEN_FILE, folder / SERVICE_KEY_FILE


def _sign(key: bytes, *parts: str) -> str:
    return hmac.new(key, "\0".join(parts).encode(), hashlib.sha256).hexdigest()


def service_credential(key: bytes, kind: str, name: str) -> str:
    """The bearer credential of a service (`kind` "service") or worker (`kind` "worker")."""
    return f"ag1:{kind}:{_sign(key, kind, name)}:{name}"


def load_service_key(home: Path, env: Mapping[str, str] | None = None) -> bytes:
    """The service key: AGENTGATE_SERVICE_KEY_FILE, else `$AGENTGATE_HOME/auth/service.key`
    (made when missing)."""
    env = os.environ if env is None else env
    named = env.get(SERVICE_KEY_FILE_ENV, "").strip()
    if named:
        try:
            return _read_secret(Path(named).expanduser()).encode()
        except OSError as exc:
            raise ConfigError(f"{SERVICE_KEY_FILE_ENV}: cannot read {named}: {exc.strerror}") from None
    return ensure_secret_file(auth_dir(home) / SERVICE_KEY_FILE).encode()


@dataclass(frozen=True)
class LeaseGrant:
    """What a lease token says: this worker holds this run until `expires_at` (unix s)."""

    run_id: str
    worker_id: str
    lease_id: str
    expires_at: int


def sign_lease(key: bytes, grant: LeaseGrant) -> str:
    """The lease token for `grant` (payload.signature, both base64url/hex)."""
    payload = json.dumps([grant.run_id, grant.worker_id, grant.lease_id, grant.expires_at]).encode()
    encoded = base64.urlsafe_b64encode(payload).decode().rstrip("=")
    return f"{encoded}.{_sign(key, 'lease', encoded)}"


def verify_lease(key: bytes, token: str) -> LeaseGrant | None:
    """The grant of a lease token signed with `key` (expired or not), None when forged."""
    encoded, _, signature = token.partition(".")
    if not hmac.compare_digest(signature.encode(), _sign(key, "lease", encoded).encode()):
        return None
    try:
        payload = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
        run_id, worker_id, lease_id, expires_at = json.loads(payload)
        return LeaseGrant(str(run_id), str(worker_id), str(lease_id), int(expires_at))
    except (ValueError, TypeError):
        return None


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
    """How a server authenticates callers and protects the connection.

    `token` is the client token and `service_key` the key of service, worker and lease
    credentials; `load` fills both. `insecure_no_auth` (code only, for tests that show an
    attack held) lets every call through."""

    token: str = ""
    service_key: bytes = field(default=b"", repr=False)
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    allow_insecure_remote: bool = False
    insecure_no_auth: bool = False

    @classmethod
    def load(
        cls,
        args: argparse.Namespace | None = None,
        env: Mapping[str, str] | None = None,
        home: Path | None = None,
    ) -> ServerSecurity:
        """From the flags `add_server_flags` added (when given) > environment > the files
        under `home`/auth (made when missing)."""
        env = os.environ if env is None else env
        if home is None:
            home = _home_of(env)

        def path(flag: str, key: str) -> Path | None:
            raw = getattr(args, flag, None) or env.get(key, "")
            return Path(raw).expanduser() if raw else None

        token = env.get(TOKEN_ENV, "").strip()
        token_file = path("token_file", TOKEN_FILE_ENV)
        if not token and token_file is not None:
            try:
                token = _read_secret(token_file)
            except OSError as exc:
                raise ConfigError(f"--token-file: cannot read {token_file}: {exc.strerror}") from None
        if not token:
            token = ensure_secret_file(auth_dir(home) / TOKEN_FILE)
        key_file = path("service_key_file", SERVICE_KEY_FILE_ENV)
        key_env = {SERVICE_KEY_FILE_ENV: str(key_file)} if key_file is not None else {}
        security = cls(
            token=token,
            service_key=load_service_key(home, key_env),
            tls_cert=path("tls_cert", TLS_CERT_ENV),
            tls_key=path("tls_key", TLS_KEY_ENV),
            tls_client_ca=path("tls_client_ca", TLS_CLIENT_CA_ENV),
            allow_insecure_remote=bool(getattr(args, "allow_insecure_remote", False))
            or env.get(ALLOW_INSECURE_REMOTE_ENV, "").strip().lower() in _TRUE,
        )
        # Read from files, so not in the environment the redactor looks at: register them.
        # (Imported here: a client process never redacts, docs/benchmarks.md "CLI start-up".)
        from agentgate.common import redaction

        redaction.register_secret(security.token)
        redaction.register_secret(security.service_key.decode())
        if (security.tls_cert is None) != (security.tls_key is None):
            raise ConfigError("--tls-cert and --tls-key: give both or neither")
        if security.tls_client_ca is not None and security.tls_cert is None:
            raise ConfigError("--tls-client-ca: needs --tls-cert and --tls-key")
        return security

    @property
    def tls(self) -> bool:
        """True when the server speaks TLS."""
        return self.tls_cert is not None

    @property
    def authenticates(self) -> bool:
        """True when calls need a credential."""
        return not self.insecure_no_auth and bool(self.token or self.service_key)

    def check_bind(self, address: str) -> None:
        """Refuses to listen beyond loopback without authentication (unless allowed)."""
        if is_loopback(address):
            return
        if not self.authenticates and not self.allow_insecure_remote:
            raise ConfigError(
                f"refusing to listen on {address} without a token ({TOKEN_ENV} or $AGENTGATE_HOME/auth/token): "
                f"anyone who can reach it could submit work. Listen on 127.0.0.1, or pass --allow-insecure-remote "
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
        """The credential check (none only with `insecure_no_auth`, said loudly)."""
        if self.insecure_no_auth:
            log.warning("AUTHENTICATION IS OFF: any caller may call any RPC (insecure_no_auth)")
            return []
        if not self.authenticates:
            raise ConfigError(f"no token: set {TOKEN_ENV} or let the service make $AGENTGATE_HOME/auth/token")
        return [TokenAuth(self.token, self.service_key)]


def add_server_flags(parser: argparse.ArgumentParser) -> None:
    """The credential, TLS and exposure flags every service takes (secrets come from files or
    the environment only: a flag would show them to anyone who lists processes)."""
    parser.add_argument(
        "--token-file",
        help=f"file holding the client token (env {TOKEN_FILE_ENV}; default $AGENTGATE_HOME/auth/token, "
        "made when missing)",
    )
    parser.add_argument(
        "--service-key-file",
        help=f"file holding the service key (env {SERVICE_KEY_FILE_ENV}; default $AGENTGATE_HOME/auth/service.key)",
    )
    parser.add_argument("--tls-cert", help=f"PEM certificate chain: serve TLS (env {TLS_CERT_ENV})")
    parser.add_argument("--tls-key", help=f"PEM private key of --tls-cert (env {TLS_KEY_ENV})")
    parser.add_argument(
        "--tls-client-ca", help=f"PEM CA: require client certificates signed by it (env {TLS_CLIENT_CA_ENV})"
    )
    parser.add_argument(
        "--allow-insecure-remote",
        action="store_true",
        help=f"listen beyond loopback even without authentication (env {ALLOW_INSECURE_REMOTE_ENV}=1)",
    )


@dataclass(frozen=True)
class Principal:
    """Who is calling: a client (the client token), a service or a worker (by name)."""

    kind: str
    name: str = ""


def _metadata_value(metadata: Any, wanted: str) -> str | None:
    for key, value in metadata or ():
        if key == wanted:
            return value.decode() if isinstance(value, bytes) else str(value)
    return None


class TokenAuth(grpc.aio.ServerInterceptor):
    """Lets a call through only with a credential (health and reflection always), and a
    worker's write of a run record only with the lease token of that run. The request of a
    call refused for its credential is never decoded."""

    def __init__(self, token: str, service_key: bytes = b""):
        self._client = f"Bearer {token}".encode() if token else None
        self._key = service_key

    def principal(self, metadata: Any) -> Principal | None:
        """The caller named by the `authorization` metadata, None when it names nobody."""
        given = _metadata_value(metadata, "authorization")
        if given is None:
            return None
        if self._client is not None and hmac.compare_digest(given.encode(), self._client):
            return Principal("client")
        scheme, _, credential = given.partition(" ")
        parts = credential.split(":", 3)
        if scheme != "Bearer" or len(parts) != 4 or parts[0] != "ag1" or parts[1] not in ("service", "worker"):
            return None
        _, kind, signature, name = parts
        if self._key and hmac.compare_digest(signature.encode(), _sign(self._key, kind, name).encode()):
            return Principal(kind, name)
        return None

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        method = handler_call_details.method
        if method.startswith(OPEN_METHOD_PREFIXES):
            return await continuation(handler_call_details)
        metadata = handler_call_details.invocation_metadata
        principal = self.principal(metadata)
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        if principal is None:
            given = _metadata_value(metadata, "authorization") is not None
            return _refusal(handler, grpc.StatusCode.UNAUTHENTICATED, _unauthenticated(method, given))
        if principal.kind == "client" and method in WORKER_ONLY_METHODS:
            return _refusal(
                handler,
                grpc.StatusCode.PERMISSION_DENIED,
                f"{method}: a client token may read, submit and cancel; "
                "only a worker writes run records or leases work",
            )
        if principal.kind == "worker" and (method in RUN_WRITE_METHODS or method == _QUEUE + "Lease"):
            return _checked(handler, method, principal, self._key, _metadata_value(metadata, LEASE_METADATA))
        return handler


def _unauthenticated(method: str, given: bool) -> str:
    if given:
        return (
            f"{method}: the token was not accepted "
            f"(compare {TOKEN_ENV} or $AGENTGATE_HOME/auth/token with the suite's)"
        )
    return (
        f"{method}: no token: send 'authorization: Bearer <token>' (the CLI and clients read {TOKEN_ENV}, "
        f"else $AGENTGATE_HOME/auth/token)"
    )


def lease_refusal(method: str, principal: Principal, key: bytes, lease_token: str | None, request: Any) -> str | None:
    """Why a worker may not make this call ('' never; None = allowed): a Lease must name the
    worker itself, a run write must carry a live lease token of that worker for that run."""
    if method == _QUEUE + "Lease":
        if request.worker_id != principal.name:
            return f"{method}: worker {principal.name!r} may not lease as {request.worker_id!r}"
        return None
    if not lease_token:
        return f"{method}: a worker writes a run only with the lease token of its lease ({LEASE_METADATA} metadata)"
    grant = verify_lease(key, lease_token)
    if grant is None:
        return f"{method}: the lease token is not valid"
    if grant.worker_id != principal.name:
        return f"{method}: the lease token belongs to worker {grant.worker_id!r}, not {principal.name!r}"
    if grant.expires_at + LEASE_CLOCK_SKEW_SECONDS < time.time():
        return f"{method}: the lease of run {grant.run_id!r} has expired"
    others = _run_ids_of(method, request) - {grant.run_id}
    if others:
        return f"{method}: worker {principal.name!r} holds no lease on run {sorted(others)[0]!r}"
    return None


def _checked(
    handler: grpc.RpcMethodHandler, method: str, principal: Principal, key: bytes, lease_token: str | None
) -> grpc.RpcMethodHandler:
    """`handler` (unary-unary) with the worker's lease checked against the decoded request."""
    behavior = handler.unary_unary
    if behavior is None:  # every checked method is unary; refuse rather than guess
        return _refusal(handler, grpc.StatusCode.PERMISSION_DENIED, f"{method}: not allowed for a worker")

    async def guarded(request: Any, context: grpc.aio.ServicerContext) -> Any:
        decoded = _decode(method, request)
        # Undecodable bytes go on to the request guard, which answers INVALID_ARGUMENT.
        if decoded is None:
            return await behavior(request, context)  # type: ignore[arg-type]  # types-grpcio: handlers take the sync context
        refusal = lease_refusal(method, principal, key, lease_token, decoded)
        if refusal is not None:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, refusal)
        # The guard takes the message as it is: decoded once.
        return await behavior(decoded, context)  # type: ignore[arg-type]

    return handler._replace(unary_unary=guarded)  # type: ignore[attr-defined]


def _decode(method: str, request: Any) -> Any:
    """The request as a message: the request guard (after us) decodes for the servicer, so
    what we are handed may still be bytes."""
    if not isinstance(request, bytes):
        return request
    from google.protobuf import descriptor_pool, message_factory
    from google.protobuf.message import DecodeError

    try:
        found = descriptor_pool.Default().FindMethodByName(method.strip("/").replace("/", "."))
        return message_factory.GetMessageClass(found.input_type).FromString(request)
    except (KeyError, DecodeError, ValueError):
        return None


def _refusal(handler: grpc.RpcMethodHandler, code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same shape as `handler` that ends the call with `code` (its request,
    given no deserializer, stays undecoded bytes)."""

    async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(code, message)

    async def streaming(request: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(code, message)

    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(unary)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(streaming)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(unary)
    return grpc.stream_stream_rpc_method_handler(streaming)


# -- clients ---------------------------------------------------------------------------


def client_token(env: Mapping[str, str] | None = None) -> str:
    """The token clients send: AGENTGATE_TOKEN, else the file AGENTGATE_TOKEN_FILE names,
    else `$AGENTGATE_HOME/auth/token` when it exists ('' = none). Clients never make it:
    `agentgate up` (or a service) does."""
    env = os.environ if env is None else env
    token = env.get(TOKEN_ENV, "").strip()
    if token:
        return token
    named = env.get(TOKEN_FILE_ENV, "").strip()
    if named:
        path = Path(named).expanduser()
    else:
        path = auth_dir(_home_of(env)) / TOKEN_FILE
    try:
        return path.read_text().strip()
    except OSError:
        return ""


class LeaseHolder:
    """The current lease token of one run; the worker replaces it on every heartbeat."""

    def __init__(self, token: str):
        self.token = token


#: The lease of the run the current task works for: set by the worker in each run's task
#: context, read by the channel interceptors, so every write of that run carries it without
#: the run loop passing it around.
current_lease: contextvars.ContextVar[LeaseHolder | None] = contextvars.ContextVar("agentgate_lease", default=None)


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
    kept.append(("authorization", f"Bearer {token}"))
    lease = current_lease.get()
    # A lease token the caller passed itself wins over the one of the task's run.
    if lease is not None and lease.token and all(key != LEASE_METADATA for key, _ in kept):
        kept.append((LEASE_METADATA, lease.token))
    return kept


#: More metadata for a call, by its method: what another layer sends with every call.
ExtraMetadata = Callable[[str], Sequence[tuple[str, str]]]


class _AioToken:
    """Adds the bearer token (when there is one) and `extra(method)` to the calls of an
    asyncio channel. One interceptor for both: each one wraps every call once more."""

    def __init__(self, token: str, extra: ExtraMetadata | None = None):
        self._token = token
        self._extra = extra

    def _details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        metadata = _with_token(details.metadata, self._token) if self._token else list(details.metadata or ())
        if self._extra is not None:
            method = details.method.decode() if isinstance(details.method, bytes) else details.method
            given = {key for key, _ in metadata}
            # What the caller passed itself wins.
            metadata += [(key, value) for key, value in self._extra(method) if key not in given]
        return grpc.aio.ClientCallDetails(
            details.method,
            details.timeout,
            grpc.aio.Metadata(*metadata),
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


def aio_client_interceptors(token: str | None = None, extra: ExtraMetadata | None = None) -> list[Any]:
    """The token interceptor for an asyncio channel, also sending `extra(method)` with
    every call (none without a token or `extra`)."""
    token = client_token() if token is None else token
    if not token and extra is None:
        return []
    kinds = (_AioTokenUnaryUnary, _AioTokenUnaryStream, _AioTokenStreamUnary, _AioTokenStreamStream)
    return [kind(token, extra) for kind in kinds]


def intercept_sync_channel(channel: grpc.Channel, token: str | None = None) -> grpc.Channel:
    """`channel` sending the token on every call (unchanged without a token)."""
    token = client_token() if token is None else token
    return grpc.intercept_channel(channel, _SyncToken(token)) if token else channel
