"""The audit log subscriber: one JSON line per event in `$AGENTGATE_HOME/audit/audit.jsonl`.

Every event of every run this worker drives, in emission order per run, appended by a
thread (never on the event loop). A record is the envelope (time, type, ids, iteration,
trace id, `n` = emission order within the run) and its payload, with two cuts that keep the
log small and about what happened rather than what was printed: agent output is recorded
as its size (`text_bytes`), and the stdout/stderr tails of a structured error are left out.
What remains is redacted (tokens, keys) like everything else AgentGate writes.

The file is only ever appended to and opened per batch, so it can be rotated by moving it.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from google.protobuf.json_format import MessageToDict

from agentgate.common.redaction import Redactor, default_redactor
from agentgate.common.timeutil import iso
from agentgate.orchestrator.subscribers import EmittedEvent
from agentgate.v1 import events_pb2

AUDIT_DIR = "audit"
AUDIT_FILE = "audit.jsonl"


def audit_path(home: Path) -> Path:
    """Where the audit log of an AgentGate home lives."""
    return home / AUDIT_DIR / AUDIT_FILE


def audit_record(event: events_pb2.RunEvent, index: int = 0, cost_usd: float = 0.0,
                 redactor: Redactor | None = None) -> dict[str, Any]:
    """The audit record of one event (`event` is changed: pass a copy)."""
    payload_field = event.WhichOneof("payload")
    payload: dict[str, Any] = {}
    if payload_field == "agent_output":
        output = event.agent_output
        payload = {
            "stream": events_pb2.OutputStream.Name(output.stream),
            "text_bytes": len(output.text.encode("utf-8", errors="replace")),
        }
    elif payload_field is not None:
        message = getattr(event, payload_field)
        for holder in _build_errors(message):
            holder.ClearField("stdout_tail")
            holder.ClearField("stderr_tail")
        (redactor or default_redactor()).redact_message(message)
        payload = MessageToDict(message, preserving_proto_field_name=True)
    record: dict[str, Any] = {
        "time": iso(event.timestamp),
        "type": event.type,
        "work_order_id": event.work_order_id,
        "run_id": event.run_id,
        "iteration": event.iteration,
        "trace_id": event.trace_id,
        "n": index,
    }
    if cost_usd:
        record["cost_usd"] = cost_usd
    if payload_field is not None:
        record["payload"] = {payload_field: payload}
    return record


def _build_errors(message: Any) -> list[Any]:
    """The BuildError messages held directly by a payload (run endings carry one)."""
    found = []
    for field, value in message.ListFields():
        if field.message_type is not None and field.message_type.name == "BuildError" and not field.is_repeated:
            found.append(value)
    return found


class AuditLog:
    """Appends audit records to a file, off the event loop."""

    name = "audit"

    def __init__(self, path: Path, redactor: Redactor | None = None):
        self.path = path
        self._redactor = redactor
        self.lines_written = 0

    async def handle(self, batch: Sequence[EmittedEvent]) -> None:
        """Writes one line per event of the batch."""
        # Copies are taken on the loop: the originals are shared with other subscribers.
        copies = []
        for item in batch:
            event = events_pb2.RunEvent()
            event.CopyFrom(item.event)
            copies.append((event, item.index, item.cost_usd))
        await asyncio.to_thread(self._write, copies)

    def _write(self, copies: list[tuple[events_pb2.RunEvent, int, float]]) -> None:
        lines = [
            json.dumps(audit_record(event, index, cost, self._redactor), ensure_ascii=False, separators=(",", ":"))
            for event, index, cost in copies
        ]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = ("\n".join(lines) + "\n").encode("utf-8")
        # One write of whole lines in append mode: concurrent writers (two workers sharing
        # a home) interleave lines, never parts of lines.
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
        finally:
            os.close(fd)
        self.lines_written += len(lines)

    async def aclose(self) -> None:
        """Nothing held open between batches."""
