"""Fakes of GitHub for tests, as real HTTP servers on 127.0.0.1 (threads):

- `FakeGitHubApi`: enough of the REST API for delivery (repository, branches, pull
  requests, comments, a commit's check runs and combined status), with scripted failures,
  rate limits and CI outcomes, and a record of every request;
- `FakeGitHost`: git's smart HTTP protocol through the real `git http-backend`, serving the
  bare repositories under a folder as `/{owner}/{name}.git`, with optional Basic auth.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import threading
import time
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
    #: Branches besides the default one (GET .../branches/{name}).
    branches: set[str] = field(default_factory=set)
    #: The CI of each head commit asked about, in the order commits are first asked
    #: about (the last one repeats): see `ci`.
    ci_outcomes: list[CiOutcome] = field(default_factory=list)
    requests: list[Recorded] = field(default_factory=list)
    pulls: list[dict[str, Any]] = field(default_factory=list)
    comments: list[dict[str, Any]] = field(default_factory=list)
    _failures: list[tuple[str, str, list[int]]] = field(default_factory=list)
    _rate_limited: dict[str, int] = field(default_factory=dict)
    _ci_by_sha: dict[str, CiOutcome] = field(default_factory=dict)
    _polls: dict[str, int] = field(default_factory=dict)
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

    def rate_limit(self, suffix: str, times: int) -> None:
        """The next `times` requests whose path ends with `suffix` answer 403 with the quota
        spent (X-RateLimit-Remaining 0, X-RateLimit-Reset a second ahead), as GitHub does."""
        with self._lock:
            self._rate_limited[suffix] = times

    def ci(self, *outcomes: CiOutcome) -> None:
        """The CI each new head commit gets: the first commit asked about gets the first
        outcome, the next one the second, ... (the last one repeats)."""
        with self._lock:
            self.ci_outcomes = list(outcomes)

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
            for suffix, left in self._rate_limited.items():
                if left and request.path.endswith(suffix):
                    self._rate_limited[suffix] = left - 1
                    reset = str(int(time.time()) + 1)
                    return 403, {"message": "API rate limit exceeded for user ID 1.",
                                 "documentation_url": "https://docs.github.com/rest/overview/rate-limits-for-the-rest-api"}, {
                        "X-RateLimit-Limit": "5000", "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": reset,
                        "X-RateLimit-Used": "5000", "X-RateLimit-Resource": "core"}
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
        if len(rest) == 2 and rest[0] == "branches" and request.method == "GET":
            if rest[1] in self.branches | {self.default_branch}:
                return 200, {"name": rest[1], "protected": False, "_links": {"html": f"{html}/tree/{rest[1]}"}}, {}
            return 404, {"message": "Branch not found"}, {}
        if len(rest) == 3 and rest[0] == "commits" and request.method == "GET":
            return self._ci_answer(owner, name, rest[1], rest[2], request)
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


    def _ci_answer(self, owner: str, name: str, sha: str, what: str, request: Recorded) -> tuple[int, Any, dict[str, str]]:
        """GET .../commits/{sha}/check-runs and .../commits/{sha}/status, shaped like GitHub's."""
        if sha not in self._ci_by_sha:
            if not self.ci_outcomes:
                outcome = CiOutcome()
            else:
                outcome = self.ci_outcomes[min(len(self._ci_by_sha), len(self.ci_outcomes) - 1)]
            self._ci_by_sha[sha] = outcome
        outcome = self._ci_by_sha[sha]
        polls = self._polls[f"{sha}/{what}"] = self._polls.get(f"{sha}/{what}", 0) + 1
        running = polls <= outcome.pending_polls
        html = f"https://github.example/{owner}/{name}"
        if what == "check-runs":
            runs = [_check_run(sha, index, run, html, running) for index, run in enumerate(outcome.check_runs, 1)]
            per_page = int((request.query.get("per_page") or ["30"])[0])
            page = int((request.query.get("page") or ["1"])[0])
            return 200, {"total_count": len(runs), "check_runs": runs[(page - 1) * per_page : page * per_page]}, {}
        if what == "status":
            statuses = [
                {"id": index, "node_id": f"SC_{index}", "state": "pending" if running else status["state"],
                 "context": status["context"], "description": status.get("description"),
                 "target_url": status.get("target_url"), "url": f"{html}/statuses/{sha}",
                 "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z"}
                for index, status in enumerate(outcome.statuses, 1)
            ]
            states = {status["state"] for status in statuses}
            # GitHub's combined state: failure if any failed or errored, pending if any is
            # pending or there is none, else success.
            state = ("failure" if states & {"failure", "error"} else
                     "pending" if "pending" in states or not statuses else "success")
            return 200, {"state": state, "statuses": statuses, "sha": sha, "total_count": len(statuses),
                         "repository": {"full_name": f"{owner}/{name}"},
                         "commit_url": f"{html}/commits/{sha}", "url": f"{html}/commits/{sha}/status"}, {}
        return 404, {"message": "Not Found"}, {}


@dataclass
class CiOutcome:
    """The CI of one commit: check runs ({name, conclusion, summary, text}) and statuses
    ({context, state, description, target_url}); for the first `pending_polls` polls every
    check is still running."""

    check_runs: list[dict[str, str]] = field(default_factory=list)
    statuses: list[dict[str, str]] = field(default_factory=list)
    pending_polls: int = 0


def _check_run(sha: str, index: int, run: dict[str, str], html: str, running: bool) -> dict[str, Any]:
    """A check run as GET .../commits/{ref}/check-runs lists it."""
    return {
        "id": index, "node_id": f"CR_{index}", "head_sha": sha, "external_id": "", "name": run["name"],
        "url": f"{html}/check-runs/{index}", "html_url": f"{html}/runs/{index}",
        "details_url": f"{html}/actions/runs/{index}",
        "status": "in_progress" if running else "completed",
        "conclusion": None if running else run.get("conclusion", "success"),
        "started_at": "2026-01-01T00:00:00Z", "completed_at": None if running else "2026-01-01T00:01:00Z",
        "output": {"title": run.get("title"), "summary": run.get("summary"), "text": run.get("text"),
                   "annotations_count": 0, "annotations_url": f"{html}/check-runs/{index}/annotations"},
        "check_suite": {"id": 1}, "app": {"id": 15368, "slug": "github-actions", "name": "GitHub Actions"},
        "pull_requests": [],
    }


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
