"""Protobuf messages as JSON: the one conversion used for files, CLI output and logs."""

from __future__ import annotations

import json
from typing import Any, TypeVar

from google.protobuf import json_format
from google.protobuf.message import Message

_M = TypeVar("_M", bound=Message)


def to_dict(message: Message) -> dict[str, Any]:
    """A message as a dict with proto field names, enums as names, defaults included."""
    return json_format.MessageToDict(
        message,
        preserving_proto_field_name=True,
        always_print_fields_with_no_presence=True,
    )


def to_json(message: Message, indent: int | None = None) -> str:
    """A message as JSON text (see to_dict)."""
    return json.dumps(to_dict(message), indent=indent, ensure_ascii=False)


def from_json(text: str | bytes, message: _M) -> _M:
    """Parses JSON text into `message` (unknown fields ignored, so older files still read)."""
    return json_format.Parse(text, message, ignore_unknown_fields=True)
