"""`python -m agentgate.common.healthcheck --address HOST:PORT`: a gRPC health probe for
containers (compose `healthcheck`, a Kubernetes `exec` probe). Exit 0 when the service
answers SERVING, 1 otherwise; prints the status.

It asks `grpc.health.v1.Health/Check`, which stays open when token auth is on, over the same
kind of channel every AgentGate client uses (TLS when AGENTGATE_TLS_CA is set).
"""

from __future__ import annotations

import argparse
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from agentgate.common.channels import sync_channel
from agentgate.common.config import DEFAULT_ADDRESSES


def check(address: str, service: str = "", timeout: float = 2.0) -> str:
    """SERVING, NOT_SERVING, SERVICE_UNKNOWN ... or UNREACHABLE (with the gRPC code)."""
    channel = sync_channel(address)
    try:
        response = health_pb2_grpc.HealthStub(channel).Check(  # type: ignore[attr-defined]  # types-grpcio-health-checking: HealthStub has no methods
            health_pb2.HealthCheckRequest(service=service), timeout=timeout
        )
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    except grpc.RpcError as exc:
        return f"UNREACHABLE ({exc.code().name})"
    finally:
        channel.close()


def main(argv: list[str] | None = None) -> int:
    """Probes one address; exit 0 only when SERVING."""
    parser = argparse.ArgumentParser(prog="agentgate-healthcheck", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--address",
        default=DEFAULT_ADDRESSES["queue"],
        help="host:port of the service (default the queue's, 127.0.0.1:50051)",
    )
    parser.add_argument("--service", default="", help="gRPC service name to ask about ('' = the whole server)")
    parser.add_argument("--timeout", type=float, default=2.0, help="seconds to wait for the answer")
    args = parser.parse_args(argv)
    status = check(args.address, args.service, args.timeout)
    print(f"{args.address} {status}")
    return 0 if status == "SERVING" else 1


if __name__ == "__main__":
    sys.exit(main())
