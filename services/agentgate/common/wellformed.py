"""Values a protobuf message can carry on the wire but not into JSON (run files, CLI output):
a Timestamp or Duration out of its range, a Struct number that is NaN or infinite.

A service that stores what a client sent as JSON refuses such a request up front with
INVALID_ARGUMENT naming the field, instead of failing half-way through writing it.
"""

from __future__ import annotations

import math
from typing import cast

from google.protobuf import duration_pb2, struct_pb2, timestamp_pb2
from google.protobuf.descriptor import Descriptor
from google.protobuf.message import Message

from agentgate.common.errors import FieldViolation

# The range of RFC 3339 (0001-01-01T00:00:00Z .. 9999-12-31T23:59:59Z), as in timestamp.proto.
MIN_TIMESTAMP_SECONDS = -62_135_596_800
MAX_TIMESTAMP_SECONDS = 253_402_300_799
MAX_DURATION_SECONDS = 315_576_000_000  # about 10,000 years, as in duration.proto


def unrepresentable(message: Message, prefix: str = "") -> list[FieldViolation]:
    """Every field of `message` (recursively) whose value JSON cannot hold."""
    found: list[FieldViolation] = []
    _walk(message, prefix, found)
    return found


#: The message types whose values JSON may not hold (checked in `_walk`).
_CHECKED = ("google.protobuf.Timestamp", "google.protobuf.Duration", "google.protobuf.Value")
#: Per message type: whether one of `_CHECKED` can be inside it (most of a request cannot:
#: the walk skips those, ~2 ms of processor time per work order in persistence).
_HOLDS_CHECKED: dict[str, bool] = {}


def _may_hold_checked(descriptor: Descriptor) -> bool:
    """Whether a message of this type can contain a `_CHECKED` one, at any depth."""
    found = _HOLDS_CHECKED.get(descriptor.full_name)
    if found is None:
        found = _HOLDS_CHECKED[descriptor.full_name] = _reaches_checked(descriptor, set())
    return found


def _reaches_checked(descriptor: Descriptor, seen: set[str]) -> bool:
    if descriptor.full_name in _CHECKED:
        return True
    seen.add(descriptor.full_name)  # a type that contains itself is looked at once
    return any(
        field.message_type is not None
        and field.message_type.full_name not in seen
        and _reaches_checked(field.message_type, seen)
        for field in descriptor.fields
    )


def _path(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _walk(message: Message, path: str, found: list[FieldViolation]) -> None:
    kind = message.DESCRIPTOR.full_name
    if kind == "google.protobuf.Timestamp":
        timestamp = cast(timestamp_pb2.Timestamp, message)  # by its full name
        seconds, nanos = timestamp.seconds, timestamp.nanos
        if not MIN_TIMESTAMP_SECONDS <= seconds <= MAX_TIMESTAMP_SECONDS or not 0 <= nanos <= 999_999_999:
            found.append(FieldViolation(path, "is not a valid timestamp (years 1 to 9999, nanos 0 to 999999999)"))
        return
    if kind == "google.protobuf.Duration":
        duration = cast(duration_pb2.Duration, message)
        seconds, nanos = duration.seconds, duration.nanos
        if abs(seconds) > MAX_DURATION_SECONDS or abs(nanos) > 999_999_999 or (seconds * nanos < 0):
            found.append(FieldViolation(path, "is not a valid duration"))
        return
    if kind == "google.protobuf.Value" and message.WhichOneof("kind") == "number_value":
        if not math.isfinite(cast(struct_pb2.Value, message).number_value):
            found.append(FieldViolation(path, "must be a finite number"))
        return
    for field, value in message.ListFields():
        if field.message_type is None or not _may_hold_checked(field.message_type):
            continue
        name = _path(path, field.name)
        if field.message_type.GetOptions().map_entry:
            if field.message_type.fields_by_name["value"].message_type is not None:
                for key, item in value.items():
                    _walk(item, f"{name}[{key!r}]", found)
        elif field.is_repeated:
            for index, item in enumerate(value):
                _walk(item, f"{name}[{index}]", found)
        else:
            _walk(value, name, found)
