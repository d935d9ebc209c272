"""The request guard decodes bytes, and takes a message the lease check in front of it
decoded already as it is (decoded once: common/security.py)."""

from __future__ import annotations

import pytest

from agentgate.common.errors import InvalidArgument
from agentgate.common.request_guard import _decoder
from agentgate.v1 import persistence_pb2


def test_bytes_are_decoded_and_a_message_passes_as_it_is() -> None:
    decode = _decoder(persistence_pb2.UpdateRunRequest.FromString, "/x/UpdateRun")
    request = persistence_pb2.UpdateRunRequest()
    request.run.id = "run-1"
    assert decode(request.SerializeToString()) == request
    assert decode(request) is request
    with pytest.raises(InvalidArgument, match="not a valid message"):
        decode(b"\xff\xff\xff")
