"""Values JSON cannot hold are found with the path of their field (agentgate.common.wellformed)."""

from __future__ import annotations

from google.protobuf import duration_pb2, struct_pb2, timestamp_pb2

from agentgate.common.wellformed import unrepresentable
from agentgate.v1 import common_pb2, events_pb2, persistence_pb2


def fields(message) -> list[str]:
    return [violation.field for violation in unrepresentable(message)]


def test_valid_messages_pass():
    run = common_pb2.Run(id="run-1")
    run.created_at.GetCurrentTime()
    assert fields(persistence_pb2.CreateRunRequest(run=run)) == []
    assert fields(timestamp_pb2.Timestamp(seconds=253_402_300_799, nanos=999_999_999)) == []
    assert fields(duration_pb2.Duration(seconds=-5, nanos=-1)) == []


def test_out_of_range_timestamps_are_named_by_path():
    request = persistence_pb2.AppendEventsRequest(
        events=[events_pb2.RunEvent(type="x"), events_pb2.RunEvent(timestamp=timestamp_pb2.Timestamp(seconds=-(2**62)))]
    )
    assert fields(request) == ["events[1].timestamp"]
    assert fields(timestamp_pb2.Timestamp(nanos=-1)) == [""]


def test_bad_durations_and_struct_numbers():
    assert fields(duration_pb2.Duration(seconds=1, nanos=-1)) == [""]
    assert fields(duration_pb2.Duration(seconds=10**12)) == [""]
    structured = struct_pb2.Struct()
    structured.update({"ok": 1.5, "bad": float("nan"), "nested": {"inf": float("inf")}, "list": [1, float("-inf")]})
    assert sorted(fields(structured)) == [
        "fields['bad']",
        "fields['list'].list_value.values[1]",
        "fields['nested'].struct_value.fields['inf']",
    ]


def test_only_types_that_can_hold_such_values_are_walked():
    from agentgate.common import wellformed

    assert wellformed._may_hold_checked(common_pb2.Run.DESCRIPTOR)
    assert wellformed._may_hold_checked(struct_pb2.ListValue.DESCRIPTOR)  # through Value, which holds itself
    assert not wellformed._may_hold_checked(common_pb2.TokenUsage.DESCRIPTOR)
    result = common_pb2.AgentResult()
    result.tool_calls.add().input.update({"x": float("nan")})
    assert fields(result) == ["tool_calls[0].input.fields['x']"]
