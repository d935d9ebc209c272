"""A fake OpenAI model server for tests that run the real `codex` CLI.

A real HTTP server on 127.0.0.1 (stdlib `http.server` in a thread) speaking the streaming
Responses API (`POST /v1/responses`, server-sent events) as documented in the OpenAI API
reference: `response.created`, `response.output_item.added`, `response.output_text.delta`,
`response.output_item.done`, `response.completed` (with `usage`) or `response.failed`.

A test scripts it: a list of replies, one consumed per request, across every codex
execution the test makes (iteration 1, its retries, iteration 2 ...):

    server = FakeOpenAI([
        reply(command("python -m pytest -q"), usage=(1200, 30)),   # the model runs a command
        reply(patch("*** Begin Patch\\n...")),                     # then edits a file
        reply(message("Fixed."), usage=(1500, 12)),                # then answers
        http_error(401, "Incorrect API key provided"),             # or the API refuses
        drop(),                                                    # or the connection dies
    ])

Every request is logged (`server.requests`: path, headers, JSON body) so a test asserts what
the CLI sent — the tool outputs codex returned, the model, the API key header. The usage
the server reported is summed in `server.served` so a test can check the driver's token
counts add up. When the script runs out the server answers 400 (codex does not retry
that) and records it in `server.problems`: a test asserts that list is empty.

Codex sends the tools of its model family: `exec_command` (a function call with `cmd`) to
run a command and `apply_patch` (a freeform custom tool) to edit files — the latter only for
models it knows (`gpt-5.5`; an unknown model name gets no apply_patch tool), so the tests use
`MODEL`.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

#: A model codex 0.171.0 has metadata for (its tools include `apply_patch`).
MODEL = "gpt-5.5"
#: The API key the tests give codex (never a real one).
API_KEY = "sk-agentgate-fake-0123456789abcdef"
#: The variable the generated config tells codex to read the key from.
API_KEY_ENV = "OPENAI_API_KEY"
PROVIDER = "agentgate_fake"


@dataclass(frozen=True)
class Item:
    """One output item of a response: an assistant message or a tool call."""

    kind: str  # message | function_call | custom_tool_call
    text: str = ""
    name: str = ""
    arguments: str = ""


def message(text: str) -> Item:
    """The assistant says `text` (a final answer when it is a response's only item)."""
    return Item("message", text=text)


def command(cmd: str, workdir: str = "") -> Item:
    """The model asks codex to run `cmd` (its `exec_command` tool)."""
    args: dict[str, Any] = {"cmd": cmd, "yield_time_ms": 30000}
    if workdir:
        args["workdir"] = workdir
    return Item("function_call", name="exec_command", arguments=json.dumps(args))


def patch(text: str) -> Item:
    """The model asks codex to apply a patch (its freeform `apply_patch` tool)."""
    return Item("custom_tool_call", name="apply_patch", text=text)


def add_file_patch(path: str, content: str) -> str:
    """An apply_patch body that creates `path` with `content`."""
    lines = "".join(f"+{line}\n" for line in content.splitlines())
    return f"*** Begin Patch\n*** Add File: {path}\n{lines}*** End Patch\n"


def replace_patch(path: str, old: str, new: str) -> str:
    """An apply_patch body that replaces the line `old` of `path` with `new`."""
    return f"*** Begin Patch\n*** Update File: {path}\n@@\n-{old}\n+{new}\n*** End Patch\n"


@dataclass(frozen=True)
class Reply:
    """What the server does with one request.

    kind: `response` (stream `items`, then `response.completed` with `usage`), `http_error`
    (answer `status` with an OpenAI error body), `failed` (stream a `response.failed`
    event), `drop` (close the connection without an answer).
    """

    kind: str
    items: tuple[Item, ...] = ()
    usage: tuple[int, int] = (100, 10)
    status: int = 200
    error_message: str = ""
    error_type: str = ""
    error_code: str = ""
    #: Seconds to wait before answering (a slow model, for budget and timeout tests).
    delay: float = 0.0


def reply(*items: Item, usage: tuple[int, int] = (100, 10), delay: float = 0.0) -> Reply:
    """A streamed response with these output items; `usage` = (input, output) tokens."""
    return Reply("response", items=tuple(items), usage=usage, delay=delay)


def http_error(status: int, error_message: str, error_type: str = "", code: str = "") -> Reply:
    """An HTTP error with the API's JSON error body (`{"error": {"message", "type", "code"}}`)."""
    default_type = {401: "invalid_request_error", 429: "rate_limit_error"}.get(status, "server_error")
    return Reply("http_error", status=status, error_message=error_message, error_type=error_type or default_type, error_code=code)


def failed(error_message: str, code: str = "server_error") -> Reply:
    """A stream that starts, then ends with `response.failed` carrying the error."""
    return Reply("failed", error_message=error_message, error_code=code)


def drop() -> Reply:
    """The connection closes without an answer (a network failure)."""
    return Reply("drop")


@dataclass
class LoggedRequest:
    """One request the CLI made."""

    method: str
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    #: What the server answered: the Reply's kind ("unscripted" when the script had run out).
    answered: str = ""

    @property
    def thread_id(self) -> str:
        """The codex thread the request belongs to (its `thread-id` header)."""
        return self.headers.get("thread-id") or self.headers.get("session-id") or ""

    def input_items(self, kind: str) -> list[dict[str, Any]]:
        """The request's `input` items of a type (`function_call_output`, `message` ...)."""
        items = self.body.get("input") or []
        return [item for item in items if isinstance(item, dict) and item.get("type") == kind]

    def user_texts(self) -> list[str]:
        """The texts of the user messages in the request's input."""
        texts = []
        for item in self.input_items("message"):
            if item.get("role") == "user":
                texts += [part.get("text", "") for part in item.get("content") or [] if isinstance(part, dict)]
        return texts


@dataclass
class Served:
    """The usage the server reported, summed over its completed responses."""

    input_tokens: int = 0
    output_tokens: int = 0
    responses: int = 0


@dataclass
class FakeOpenAI:
    """The scripted server. Use as a context manager (`with FakeOpenAI(script) as server`)."""

    script: list[Reply] = field(default_factory=list)
    requests: list[LoggedRequest] = field(default_factory=list)
    served: Served = field(default_factory=Served)
    problems: list[str] = field(default_factory=list)
    #: Called with each request before the script: a Reply it returns is used instead of
    #: the script's next one (an outage for the first thread, say); None = the script.
    intercept: Callable[[LoggedRequest], Reply | None] | None = None

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------

    def __enter__(self) -> FakeOpenAI:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        """Listens on an ephemeral port of 127.0.0.1."""
        handler = type("Handler", (_Handler,), {"fake": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-openai", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stops listening."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def base_url(self) -> str:
        """The provider's `base_url` (codex appends `/responses`)."""
        assert self._server is not None, "the server is not started"
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    # -- script --------------------------------------------------------------------------

    def add(self, *replies: Reply) -> None:
        """Appends replies to the script (a test can script the next iteration later)."""
        with self._lock:
            self.script.extend(replies)

    def responses_requests(self) -> list[LoggedRequest]:
        """The logged requests to `/responses`."""
        return [request for request in self.requests if request.path.rstrip("/").endswith("/responses")]

    def _next(self, request: LoggedRequest) -> Reply:
        with self._lock:
            self.requests.append(request)
            chosen = self.intercept(request) if self.intercept is not None else None
            if chosen is not None:
                return chosen
            if self.script:
                return self.script.pop(0)
            self.problems.append(f"request {len(self.requests)} came after the end of the script")
        return http_error(400, "the fake model server's script has run out", "invalid_request_error")

    def _count(self, usage: tuple[int, int]) -> None:
        with self._lock:
            self.served.input_tokens += usage[0]
            self.served.output_tokens += usage[1]
            self.served.responses += 1

    def next_id(self, prefix: str) -> str:
        """A fresh id for a response or an item."""
        return f"{prefix}_{next(self._ids):04d}"

    # -- codex configuration ---------------------------------------------------------------

    def codex_config(self, **provider: object) -> str:
        """A `config.toml` pointing codex at this server: a custom model provider with the
        Responses wire API and the key read from API_KEY_ENV. `provider` adds keys to the
        provider's table (`request_max_retries=1`)."""
        extra = "".join(f"{key} = {json.dumps(value)}\n" for key, value in provider.items())
        return (
            f'model = "{MODEL}"\n'
            f'model_provider = "{PROVIDER}"\n'
            "\n"
            f"[model_providers.{PROVIDER}]\n"
            'name = "AgentGate fake"\n'
            f'base_url = "{self.base_url}"\n'
            f'env_key = "{API_KEY_ENV}"\n'
            'wire_api = "responses"\n' + extra
        )

    def write_codex_config(self, codex_home: Path, **provider: object) -> Path:
        """Writes `codex_config` to `codex_home/config.toml`."""
        codex_home.mkdir(parents=True, exist_ok=True)
        path = codex_home / "config.toml"
        path.write_text(self.codex_config(**provider), encoding="utf-8")
        return path


def _sse(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()


def _output_item(fake: FakeOpenAI, item: Item) -> dict[str, Any]:
    if item.kind == "message":
        return {
            "type": "message",
            "id": fake.next_id("msg"),
            "role": "assistant",
            "status": "completed",
            "content": [{"type": "output_text", "text": item.text, "annotations": []}],
        }
    if item.kind == "function_call":
        return {
            "type": "function_call",
            "id": fake.next_id("fc"),
            "call_id": fake.next_id("call"),
            "name": item.name,
            "arguments": item.arguments,
            "status": "completed",
        }
    return {
        "type": "custom_tool_call",
        "id": fake.next_id("ctc"),
        "call_id": fake.next_id("call"),
        "name": item.name,
        "input": item.text,
        "status": "completed",
    }


def response_events(fake: FakeOpenAI, scripted: Reply, model: str) -> Iterator[bytes]:
    """The server-sent events of one streamed response."""
    response_id = fake.next_id("resp")
    base = {"id": response_id, "object": "response", "created_at": int(time.time()), "model": model}
    yield _sse("response.created", {"type": "response.created", "response": {**base, "status": "in_progress", "output": []}})
    yield _sse("response.in_progress", {"type": "response.in_progress", "response": {**base, "status": "in_progress"}})
    if scripted.kind == "failed":
        error = {"code": scripted.error_code, "message": scripted.error_message}
        yield _sse("response.failed", {"type": "response.failed", "response": {**base, "status": "failed", "error": error}})
        return
    output = []
    for index, item in enumerate(scripted.items):
        full = _output_item(fake, item)
        output.append(full)
        added = {**full, "status": "in_progress"}
        if item.kind == "message":
            added["content"] = []
        elif item.kind == "function_call":
            added["arguments"] = ""
        else:
            added["input"] = ""
        yield _sse("response.output_item.added", {"type": "response.output_item.added", "output_index": index, "item": added})
        if item.kind == "message":
            for piece in _pieces(item.text):
                yield _sse(
                    "response.output_text.delta",
                    {"type": "response.output_text.delta", "item_id": full["id"], "output_index": index,
                     "content_index": 0, "delta": piece},
                )
        elif item.kind == "function_call":
            yield _sse(
                "response.function_call_arguments.delta",
                {"type": "response.function_call_arguments.delta", "item_id": full["id"], "output_index": index,
                 "delta": item.arguments},
            )
        else:
            yield _sse(
                "response.custom_tool_call_input.delta",
                {"type": "response.custom_tool_call_input.delta", "item_id": full["id"], "output_index": index,
                 "delta": item.text},
            )
        yield _sse("response.output_item.done", {"type": "response.output_item.done", "output_index": index, "item": full})
    usage = {
        "input_tokens": scripted.usage[0],
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": scripted.usage[1],
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": sum(scripted.usage),
    }
    fake._count(scripted.usage)
    completed = {**base, "status": "completed", "output": output, "usage": usage}
    yield _sse("response.completed", {"type": "response.completed", "response": completed})


def _pieces(text: str, size: int = 24) -> Sequence[str]:
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


class _Handler(BaseHTTPRequestHandler):
    fake: FakeOpenAI
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the stdlib's name
        """Quiet: the requests are in `fake.requests`."""

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        """`/models` and the like: nothing here (codex falls back to its bundled metadata)."""
        self.fake.requests.append(LoggedRequest("GET", self.path, dict(self.headers), {}, "not_found"))
        self._json(404, {"error": {"message": "not found", "type": "invalid_request_error"}})

    def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
        """`/v1/responses`: the next scripted reply."""
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw.decode("utf-8")) if raw else {}
        except ValueError:
            body = {"_raw": raw.decode("utf-8", errors="replace")}
        request = LoggedRequest("POST", self.path, dict(self.headers), body)
        if not self.path.rstrip("/").endswith("/responses"):
            request.answered = "not_found"
            self.fake.requests.append(request)
            self._json(404, {"error": {"message": f"no route {self.path}", "type": "invalid_request_error"}})
            return
        scripted = self.fake._next(request)
        request.answered = scripted.kind
        if scripted.delay:
            time.sleep(scripted.delay)
        if scripted.kind == "drop":
            self.close_connection = True
            self.connection.close()
            return
        if scripted.kind == "http_error":
            error = {"message": scripted.error_message, "type": scripted.error_type, "param": None,
                     "code": scripted.error_code or None}
            self._json(scripted.status, {"error": error})
            return
        data = b"".join(response_events(self.fake, scripted, str(body.get("model") or MODEL)))
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _json(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
