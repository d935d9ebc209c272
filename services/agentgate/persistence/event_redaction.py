"""Redaction of events before they are stored, written to events.jsonl or streamed.

Every string of an event goes through the `Redactor`. Agent output arrives one line per
`agent:output` event, so what spans lines spans events:

- a private key block: the lines between a BEGIN … PRIVATE KEY line and its END line have
  no pattern of their own. This keeps, per run, iteration and stream, whether a block is
  open and redacts those lines whole;
- a configured value (or its base64) split over lines: a line that ends with the start of
  one (8 characters or more) has that end redacted, and the rest of the value is expected at
  the start of the next line(s) of that stream, which is redacted too; a line that starts
  with the end of one (8 or more) has that start redacted. A line is stored and sent before
  the next exists, so a piece shorter than 8 characters at the end of a line is not caught
  (docs/security.md, "Redaction").
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
        #: Per stream, the rest of a configured value whose start ended the last line.
        self._split: OrderedDict[tuple[str, int, int], str] = OrderedDict()

    def redact(self, event: events_pb2.RunEvent) -> None:
        """Replaces every secret of `event` by [REDACTED]."""
        if event.HasField("agent_output"):
            self._follow_split_values(event)
            self._follow_key_blocks(event)
        elif event.type == ev.AGENT_STARTED or event.type in ev.TERMINAL_EVENT_TYPES:
            # A new execution (or the end) closes whatever the last one left open.
            for state in (self._open, self._split):
                for key in [k for k in state if k[0] == event.run_id]:
                    del state[key]
        self.redactor.redact_message(event)

    def _follow_split_values(self, event: events_pb2.RunEvent) -> None:
        output = event.agent_output
        key = (event.run_id, event.iteration, int(output.stream))
        text = output.text
        expected = self._split.pop(key, "")
        if expected and text:
            if text.startswith(expected):
                text = REDACTED + text[len(expected) :]
            elif expected.startswith(text):
                # Split over more than two lines: this one is all secret, more follows.
                output.text = REDACTED
                self._remember_split(key, expected[len(text) :])
                return
        if not self.redactor.secret_count:
            output.text = text
            return
        head, tail, rest = self.redactor.split_edges(text)
        if head + tail >= len(text) and (head or tail):
            text = REDACTED
        else:
            if tail:
                text = text[: len(text) - tail] + REDACTED
            if head:
                text = REDACTED + text[head:]
        if rest:
            self._remember_split(key, rest)
        output.text = text

    def _remember_split(self, key: tuple[str, int, int], rest: str) -> None:
        self._split[key] = rest
        while len(self._split) > MAX_OPEN_BLOCKS:
            self._split.popitem(last=False)

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
