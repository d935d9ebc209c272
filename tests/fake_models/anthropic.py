"""A scripted Anthropic Messages API on 127.0.0.1, for running the real `claude` CLI in tests.

A real HTTP server (stdlib `http.server`, one thread per connection, in a background
thread) that speaks `POST /v1/messages` as the public API reference describes it: with
`"stream": true` it answers server-sent events (`message_start`, `content_block_start` /
`content_block_delta` (`text_delta`, `input_json_delta`) / `content_block_stop`,
`message_delta` with the usage, `message_stop`); without, one JSON message.

A test scripts the model as a list of `Turn`s: each request the CLI makes for the agent's
conversation (one that offers tools) takes the next turn — tool calls to make (`Edit`,
`Bash`, ...), a final text, or an error (`Turn.fail(401, ...)`, 500, 529 overloaded, or a
dropped connection). Requests that offer no tools (a session title, a quota probe) are side
requests: answered with a short text, not scripted, and logged apart. Once the script is
used up every further agent request gets a plain "done" text.

Every request is logged (`requests`: path, headers, JSON body) so a test asserts what the
CLI sent; `served` is the usage the server reported, so a test checks what the agent
result counted. Anything other than `/v1/messages` (a CLI probing another endpoint at start)
is logged and answered with `{}` so nothing leaves the machine.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

DEFAULT_MODEL = "claude-fake-1"
#: What the real API answers for each error status (type, used as error.type).
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}
#: `Turn.status` of a dropped connection (no HTTP answer at all). The server reports only
#: tokens: the CLI computes the cost from its own price table.
DROP = -1


@dataclass
class ToolUse:
    """A tool call the model makes: the CLI runs the tool and sends back its result."""

    name: str
    input: dict[str, Any]


@dataclass
class Turn:
    """One answer of the model to one agent request."""

    text: str = ""
    tools: list[ToolUse] = field(default_factory=list)
    input_tokens: int = 100
    output_tokens: int = 20
    #: HTTP status of an error answer (DROP = close the connection without answering).
    status: int = 200
    message: str = ""
    #: Seconds to wait before answering (a long model response).
    delay: float = 0.0

    @classmethod
    def say(cls, text: str, **kwargs: Any) -> Turn:
        """A final text answer."""
        return cls(text=text, **kwargs)

    @classmethod
    def call(cls, name: str, tool_input: dict[str, Any], text: str = "", **kwargs: Any) -> Turn:
        """One tool call (with an optional text before it)."""
        return cls(text=text, tools=[ToolUse(name, tool_input)], **kwargs)

    @classmethod
    def bash(cls, command: str, **kwargs: Any) -> Turn:
        """Runs a shell command through Claude Code's Bash tool."""
        return cls.call("Bash", {"command": command, "description": "run a command"}, **kwargs)

    @classmethod
    def write(cls, path: str, content: str, **kwargs: Any) -> Turn:
        """Writes a file through Claude Code's Write tool."""
        return cls.call("Write", {"file_path": path, "content": content}, **kwargs)

    @classmethod
    def fail(cls, status: int, message: str = "") -> Turn:
        """An error answer: the API's error JSON with `status` (DROP = a dropped connection)."""
        return cls(status=status, message=message or ERROR_TYPES.get(status, "error"))


@dataclass
class LoggedRequest:
    """One request the server received."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any
    #: "agent" (took a turn), "side" (no tools offered) or "other" (not /v1/messages).
    kind: str
    status: int = 200


class FakeAnthropic:
    """The server. Use as a context manager; `url` is ANTHROPIC_BASE_URL."""

    def __init__(self, turns: list[Turn] | None = None, model: str = DEFAULT_MODEL, api_key: str = "sk-ant-fake"):
        self.turns: list[Turn] = list(turns or [])
        self.model = model
        #: The key the server accepts (x-api-key); anything else gets a 401.
        self.api_key = api_key
        self.requests: list[LoggedRequest] = []
        #: Usage the server reported on successful agent turns.
        self.served_input = 0
        self.served_output = 0
        self._lock = threading.Lock()
        self._ids = 0
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-anthropic", daemon=True)

    @property
    def url(self) -> str:
        """The base URL (no /v1)."""
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def env(self) -> dict[str, str]:
        """Variables that point `claude` here and keep it from any other connection."""
        return {
            "ANTHROPIC_BASE_URL": self.url,
            "ANTHROPIC_API_KEY": self.api_key,
            "DISABLE_AUTOUPDATER": "1",
            "DISABLE_TELEMETRY": "1",
            "DISABLE_ERROR_REPORTING": "1",
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        }

    def add(self, *turns: Turn) -> None:
        """More turns at the end of the script (e.g. once the server 'recovers')."""
        with self._lock:
            self.turns.extend(turns)

    def agent_requests(self) -> list[LoggedRequest]:
        """The requests that took (or would have taken) a turn."""
        return [r for r in self.requests if r.kind == "agent"]

    def __enter__(self) -> FakeAnthropic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    # --- the handler ------------------------------------------------------------------

    def _next_turn(self) -> Turn:
        with self._lock:
            return self.turns.pop(0) if self.turns else Turn.say("done")

    def _next_id(self, prefix: str) -> str:
        with self._lock:
            self._ids += 1
            return f"{prefix}_fake{self._ids:04d}"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
                pass  # the request log is `fake.requests`

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                fake.requests.append(LoggedRequest("GET", self.path, dict(self.headers), None, "other"))
                self._json(200, {})

            def do_HEAD(self) -> None:  # noqa: N802
                fake.requests.append(LoggedRequest("HEAD", self.path, dict(self.headers), None, "other"))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw or b"null")
                except ValueError:
                    body = raw.decode("utf-8", "replace")
                path = self.path.split("?", 1)[0]
                if not path.endswith("/v1/messages") or not isinstance(body, dict):
                    fake.requests.append(LoggedRequest("POST", self.path, dict(self.headers), body, "other"))
                    if path.endswith("/count_tokens"):
                        self._json(200, {"input_tokens": 100})
                    else:
                        self._json(200, {})
                    return
                kind = "agent" if body.get("tools") else "side"
                logged = LoggedRequest("POST", self.path, dict(self.headers), body, kind)
                fake.requests.append(logged)
                if self.headers.get("x-api-key") != fake.api_key and not self.headers.get("authorization"):
                    logged.status = 401
                    self._error(401, "invalid x-api-key")
                    return
                turn = fake._next_turn() if kind == "agent" else Turn.say("Fake title", input_tokens=10, output_tokens=3)
                logged.status = turn.status
                if turn.delay:
                    threading.Event().wait(turn.delay)
                if turn.status == DROP:
                    # A connection that dies mid-request: no status line at all.
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                if turn.status != 200:
                    self._error(turn.status, turn.message)
                    return
                if kind == "agent":
                    with fake._lock:
                        fake.served_input += turn.input_tokens
                        fake.served_output += turn.output_tokens
                model = str(body.get("model") or fake.model)
                if body.get("stream"):
                    self._stream(turn, model)
                else:
                    self._json(200, fake._message(turn, model))

            def _json(self, status: int, payload: Any) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("request-id", fake._next_id("req"))
                self.end_headers()
                self.wfile.write(data)

            def _error(self, status: int, message: str) -> None:
                # The API's error shape: {"type": "error", "error": {"type", "message"}}.
                error_type = ERROR_TYPES.get(status, "api_error")
                self._json(status, {"type": "error", "error": {"type": error_type, "message": message}})

            def _stream(self, turn: Turn, model: str) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Cache-Control", "no-cache")
                self.send_header("Connection", "close")
                self.send_header("request-id", fake._next_id("req"))
                self.end_headers()
                self.close_connection = True
                for event, data in fake._events(turn, model):
                    self.wfile.write(f"event: {event}\ndata: {json.dumps(data)}\n\n".encode())
                    self.wfile.flush()

        return Handler

    def _blocks(self, turn: Turn) -> list[dict[str, Any]]:
        blocks: list[dict[str, Any]] = []
        if turn.text:
            blocks.append({"type": "text", "text": turn.text})
        for tool in turn.tools:
            blocks.append({"type": "tool_use", "id": self._next_id("toolu"), "name": tool.name, "input": tool.input})
        return blocks

    def _message(self, turn: Turn, model: str) -> dict[str, Any]:
        return {
            "id": self._next_id("msg"),
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": self._blocks(turn),
            "stop_reason": "tool_use" if turn.tools else "end_turn",
            "stop_sequence": None,
            "usage": {"input_tokens": turn.input_tokens, "output_tokens": turn.output_tokens},
        }

    def _events(self, turn: Turn, model: str) -> list[tuple[str, dict[str, Any]]]:
        """The server-sent events of one streamed message."""
        message = self._message(turn, model)
        start = {**message, "content": [], "stop_reason": None}
        start["usage"] = {"input_tokens": turn.input_tokens, "output_tokens": 1}
        events: list[tuple[str, dict[str, Any]]] = [("message_start", {"type": "message_start", "message": start})]
        for index, block in enumerate(message["content"]):
            if block["type"] == "text":
                events.append(("content_block_start", {"type": "content_block_start", "index": index,
                                                       "content_block": {"type": "text", "text": ""}}))
                text = block["text"]
                for piece in (text[: len(text) // 2], text[len(text) // 2 :]):
                    if piece:
                        events.append(("content_block_delta", {"type": "content_block_delta", "index": index,
                                                               "delta": {"type": "text_delta", "text": piece}}))
            else:
                events.append(("content_block_start", {"type": "content_block_start", "index": index,
                                                       "content_block": {**block, "input": {}}}))
                partial = json.dumps(block["input"])
                for piece in (partial[: len(partial) // 2], partial[len(partial) // 2 :]):
                    events.append(("content_block_delta", {"type": "content_block_delta", "index": index,
                                                           "delta": {"type": "input_json_delta",
                                                                     "partial_json": piece}}))
            events.append(("content_block_stop", {"type": "content_block_stop", "index": index}))
        events.append(("message_delta", {"type": "message_delta",
                                         "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
                                         "usage": {"output_tokens": turn.output_tokens}}))
        events.append(("message_stop", {"type": "message_stop"}))
        return events
