"""What happens to a record before it is stored: a copy is made (the request stays as sent),
its secrets are redacted, and an agent result's stdout and stderr are cut to the configured
size. Byte counts are taken before redaction and cutting, so they say what the agent wrote."""

from __future__ import annotations

from typing import TypeVar

from google.protobuf.message import Message

from agentgate.common.redaction import Redactor
from agentgate.persistence.output_limits import count_output_bytes, limit_agent_output
from agentgate.v1 import common_pb2

M = TypeVar("M", bound=Message)


class RecordPreparer:
    """Prepares runs, agent results, reports and iterations for storage."""

    def __init__(self, redactor: Redactor, max_output_bytes: int):
        self.redactor = redactor
        self.max_output_bytes = max_output_bytes

    def message(self, message: M) -> M:
        """A redacted copy of any record."""
        copy = type(message)()
        copy.CopyFrom(message)
        self.redactor.redact_message(copy)
        return copy

    def run(self, run: common_pb2.Run) -> common_pb2.Run:
        """A redacted copy of a run (its error, build error tails, task prompt, ...)."""
        return self.message(run)

    def agent_result(self, result: common_pb2.AgentResult) -> common_pb2.AgentResult:
        """A copy with byte counts filled in, secrets redacted, then stdout and stderr cut.
        Redacting first means a secret can never be cut in half and survive as a prefix."""
        copy = common_pb2.AgentResult()
        copy.CopyFrom(result)
        count_output_bytes(copy)
        self.redactor.redact_message(copy)
        limit_agent_output(copy, self.max_output_bytes)
        return copy
