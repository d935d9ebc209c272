"""Fakes of GitHub for tests, as real HTTP servers on 127.0.0.1 (threads):

- `FakeGitHubApi`: enough of the REST API for delivery (repository, pull requests,
  comments), with scripted failures and a record of every request;
- `FakeGitHost`: git's smart HTTP protocol through the real `git http-backend`, serving the
  bare repositories under a folder as `/{owner}/{name}.git`, with optional Basic auth.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass
class Recorded:
    """One request the fake received."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: Any


class _Server:
    """A ThreadingHTTPServer in a daemon thread."""

    def __init__(self, handler: type[BaseHTTPRequestHandler]):
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.httpd.owner = self  # type: ignore[attr-defined]
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> _Server:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class _ApiHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *_: object) -> None:  # keep test output clean
        pass

    def _handle(self) -> None:
        api: FakeGitHubApi = self.server.owner.api  # type: ignore[attr-defined]
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode(errors="replace")
        parts = urlsplit(self.path)
        recorded = Recorded(self.command, parts.path, parse_qs(parts.query), dict(self.headers.items()), body)
        status, payload, headers = api.answer(recorded)
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _handle  # noqa: N815


@dataclass
class FakeGitHubApi:
    """A fake GitHub REST API. `fail(method, suffix, [statuses])` makes the next requests
    whose path ends with `suffix` answer those statuses, in order."""

    token: str = ""
    default_branch: str = "main"
    requests: list[Recorded] = field(default_factory=list)
    pulls: list[dict[str, Any]] = field(default_factory=list)
    comments: list[dict[str, Any]] = field(default_factory=list)
    _failures: list[tuple[str, str, list[int]]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: _Server | None = None

    def start(self) -> FakeGitHubApi:
        server = _Server(_ApiHandler)
        server.api = self  # type: ignore[attr-defined]
        self._server = server.start()
        return self

    def stop(self) -> None:
        if self._server:
            self._server.stop()

    @property
    def url(self) -> str:
        assert self._server is not None
        return self._server.url

    def fail(self, method: str, suffix: str, statuses: list[int]) -> None:
        """Scripts failures; a status of 0 means 'answer normally'."""
        with self._lock:
            self._failures.append((method, suffix, list(statuses)))

    def _scripted(self, request: Recorded) -> int:
        for method, suffix, statuses in self._failures:
            if method == request.method and request.path.endswith(suffix) and statuses:
                return statuses.pop(0)
        return 0

    def answer(self, request: Recorded) -> tuple[int, Any, dict[str, str]]:
        with self._lock:
            self.requests.append(request)
            if self.token and request.headers.get("Authorization") != f"Bearer {self.token}":
                return 401, {"message": "Bad credentials"}, {}
            status = self._scripted(request)
            if status == 429:
                return 429, {"message": "API rate limit exceeded"}, {"Retry-After": "1"}
            if status:
                return status, {"message": f"scripted {status}"}, {}
            return self._route(request)

    def _route(self, request: Recorded) -> tuple[int, Any, dict[str, str]]:
        segments = request.path.strip("/").split("/")
        if len(segments) < 3 or segments[0] != "repos":
            return 404, {"message": "Not Found"}, {}
        owner, name, rest = segments[1], segments[2], segments[3:]
        html = f"https://github.example/{owner}/{name}"
        if not rest and request.method == "GET":
            return 200, {"full_name": f"{owner}/{name}", "default_branch": self.default_branch, "html_url": html}, {}
        if rest == ["pulls"] and request.method == "POST":
            body = request.body or {}
            if any(p["head"] == body.get("head") for p in self.pulls):
                return 422, {"message": "Validation Failed",
                             "errors": [{"message": f"A pull request already exists for {owner}:{body.get('head')}."}]}, {}
            number = len(self.pulls) + 1
            pull = {"number": number, "html_url": f"{html}/pull/{number}", "draft": bool(body.get("draft")),
                    "head": body.get("head"), "base": body.get("base"), "title": body.get("title"),
                    "body": body.get("body")}
            self.pulls.append(pull)
            return 201, pull, {}
        if rest == ["pulls"] and request.method == "GET":
            head = (request.query.get("head") or [""])[0].split(":", 1)[-1]
            return 200, [p for p in self.pulls if p["head"] == head], {}
        if len(rest) == 3 and rest[0] == "issues" and rest[2] == "comments" and request.method == "POST":
            comment = {"id": len(self.comments) + 1, "issue": int(rest[1]), "body": (request.body or {}).get("body")}
            comment["html_url"] = f"{html}/pull/{rest[1]}#issuecomment-{comment['id']}"
            self.comments.append(comment)
            return 201, comment, {}
        return 404, {"message": "Not Found"}, {}


class _GitHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"

    def log_message(self, *_: object) -> None:
        pass

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().strip().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _handle(self) -> None:
        host: FakeGitHost = self.server.owner.host  # type: ignore[attr-defined]
        body = self._body()
        auth = self.headers.get("Authorization") or ""
        host.auth_headers.append(auth)
        if host.token and auth != host.expected_authorization:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="fake"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        parts = urlsplit(self.path)
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "GIT_PROJECT_ROOT": str(host.root),
            "GIT_HTTP_EXPORT_ALL": "1",
            "REQUEST_METHOD": self.command,
            "PATH_INFO": parts.path,
            "QUERY_STRING": parts.query,
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)),
            # A user name enables receive-pack (push) in http-backend.
            "REMOTE_USER": "agentgate",
            "REMOTE_ADDR": "127.0.0.1",
            "GIT_CONFIG_NOSYSTEM": "1",
            "HOME": str(host.root),
        }
        if self.headers.get("Content-Encoding"):
            env["HTTP_CONTENT_ENCODING"] = self.headers["Content-Encoding"]
        if self.headers.get("Git-Protocol"):
            env["GIT_PROTOCOL"] = self.headers["Git-Protocol"]
        done = subprocess.run(["git", "http-backend"], input=body, env=env, capture_output=True, timeout=60)
        head, _, payload = done.stdout.partition(b"\r\n\r\n")
        status = 200
        headers: list[tuple[str, str]] = []
        for line in head.decode(errors="replace").split("\r\n"):
            key, _, value = line.partition(":")
            if key.lower() == "status":
                status = int(value.strip().split()[0])
            elif key:
                headers.append((key, value.strip()))
        self.send_response(status)
        for key, value in headers:
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = _handle  # noqa: N815


@dataclass
class FakeGitHost:
    """Bare repositories under `root` served over smart HTTP as /{owner}/{name}.git."""

    root: Path
    token: str = ""
    auth_headers: list[str] = field(default_factory=list)
    _server: _Server | None = None

    @property
    def expected_authorization(self) -> str:
        return "Basic " + base64.b64encode(f"x-access-token:{self.token}".encode()).decode()

    def start(self) -> FakeGitHost:
        server = _Server(_GitHandler)
        server.host = self  # type: ignore[attr-defined]
        self._server = server.start()
        return self

    def stop(self) -> None:
        if self._server:
            self._server.stop()

    @property
    def url(self) -> str:
        assert self._server is not None
        return self._server.url

    def bare_repo(self, owner: str, name: str) -> Path:
        return self.root / owner / f"{name}.git"


def git(*args: str, cwd: Path) -> str:
    """Runs git with a fixed identity; returns stdout."""
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t", "GIT_CONFIG_NOSYSTEM": "1"}
    done = subprocess.run(["git", "-c", "init.defaultBranch=main", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, check=True)
    return done.stdout


def make_remote_and_clone(root: Path, files: dict[str, str], bare: Path | None = None) -> tuple[Path, Path]:
    """A bare repository (the remote) holding `files` on main, and a user's working clone of
    it whose origin is the bare repository. Returns (bare, clone)."""
    bare = bare or root / "remote.git"
    root.mkdir(parents=True, exist_ok=True)
    bare.parent.mkdir(parents=True, exist_ok=True)
    git("init", "-q", "--bare", str(bare), cwd=root)
    clone = root / "user-clone"
    git("clone", "-q", str(bare), str(clone), cwd=root)
    for name, content in files.items():
        (clone / name).parent.mkdir(parents=True, exist_ok=True)
        (clone / name).write_text(content)
    git("add", "-A", cwd=clone)
    git("commit", "-q", "-m", "initial", cwd=clone)
    git("push", "-q", "origin", "HEAD:refs/heads/main", cwd=clone)
    return bare, clone


def grep_tree(root: Path, needles: list[str]) -> list[str]:
    """Files under `root` (binary ones too: databases, logs) that contain any needle."""
    hits = []
    encoded = [n.encode() for n in needles if n]
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            path = Path(dirpath) / name
            try:
                data = path.read_bytes()
            except OSError:
                continue
            if any(n in data for n in encoded):
                hits.append(str(path))
    return hits


def tree_digest(root: Path) -> str:
    """A digest of every file under `root` (.git included): path, mode and content."""
    import hashlib

    digest = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(dirpath) / name
            digest.update(str(path.relative_to(root)).encode() + oct(path.lstat().st_mode).encode())
            if not path.is_symlink():
                digest.update(path.read_bytes())
        digest.update(("dirs:" + ",".join(dirnames)).encode())
    return digest.hexdigest()
