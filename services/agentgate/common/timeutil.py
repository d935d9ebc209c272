"""Timestamps: protobuf Timestamp <-> UTC datetime."""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp


def utcnow() -> datetime:
    """Now, in UTC."""
    return datetime.now(UTC)


def now_timestamp() -> Timestamp:
    """Now as a protobuf Timestamp."""
    ts = Timestamp()
    ts.FromDatetime(utcnow())
    return ts


def to_timestamp(moment: datetime) -> Timestamp:
    """A datetime as a protobuf Timestamp."""
    ts = Timestamp()
    ts.FromDatetime(moment)
    return ts


def iso(ts: Timestamp) -> str:
    """ISO-8601 text of a Timestamp, or '' when unset."""
    if not ts.seconds and not ts.nanos:
        return ""
    return ts.ToDatetime(tzinfo=UTC).isoformat()
