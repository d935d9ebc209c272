"""Client channels to the services, with the same limits the servers use."""

from __future__ import annotations

import grpc

from agentgate.common.config import MAX_MESSAGE_BYTES

CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
]


def aio_channel(address: str) -> grpc.aio.Channel:
    """An asyncio channel to `address`; it belongs to the running event loop."""
    return grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)


def sync_channel(address: str) -> grpc.Channel:
    """A blocking channel to `address` (CLI use)."""
    return grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
