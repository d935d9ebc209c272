"""Redaction of events before they are stored, written to events.jsonl or streamed.

Every string of an event goes through the `Redactor`. Agent output arrives one line per
`agent:output` event, so a private key block spans many events: the lines between a
BEGIN … PRIVATE KEY line and its END line have no pattern of their own. This keeps, per
run, iteration and stream, whether a block is open and redacts those lines whole.
"""

from __future__ import annotations

from collections import OrderedDict

from agentgate.common import events as ev
from agentgate.common.redaction import KEY_BLOCK_BEGIN, KEY_BLOCK_END, REDACTED, Redactor
from agentgate.v1 import events_pb2

#: Open key blocks remembered at most (oldest forgotten first); one per agent stream.
MAX_OPEN_BLOCKS = 10_000


def _opens_block(text: str) -> bool:
    """True when `text` has a BEGIN line not followed by its END."""
    last_begin = None
    for match in KEY_BLOCK_BEGIN.finditer(text):
        last_begin = match
    return last_begin is not None and KEY_BLOCK_END.search(text, last_begin.end()) is None


class EventRedactor:
    """Redacts events in place, in seq order (the caller holds the event log's lock)."""

    def __init__(self, redactor: Redactor):
        self.redactor = redactor
        self._open: OrderedDict[tuple[str, int, int], None] = OrderedDict()

    def redact(self, event: events_pb2.RunEvent) -> None:
        """Replaces every secret of `event` by [REDACTED]."""
        if event.HasField("agent_output"):
            self._follow_key_blocks(event)
        elif event.type == ev.AGENT_STARTED or event.type in ev.TERMINAL_EVENT_TYPES:
            # A new execution (or the end) closes whatever the last one left open.
            for key in [k for k in self._open if k[0] == event.run_id]:
                del self._open[key]
        self.redactor.redact_message(event)

    def _follow_key_blocks(self, event: events_pb2.RunEvent) -> None:
        output = event.agent_output
        key = (event.run_id, event.iteration, int(output.stream))
        text = output.text
        if key in self._open:
            end = KEY_BLOCK_END.search(text)
            if end is None:
                output.text = REDACTED
                return
            del self._open[key]
            text = REDACTED + text[end.end() :]
        if _opens_block(text):
            self._open[key] = None
            while len(self._open) > MAX_OPEN_BLOCKS:
                self._open.popitem(last=False)
        output.text = text
