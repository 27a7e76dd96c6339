"""A gRPC health check that speaks the platform's internal mTLS: the Kubernetes probe when
DRTECH_INTERNAL_MTLS is on (the kubelet's own gRPC probe has no client certificate).

    python -m services.common.healthcheck --port 50052 [--service liveness] [--component bone]

Exit status 0 when the service answers SERVING, 1 otherwise (the reason on stderr). It uses this
process's certificate (DRTECH_INTERNAL_TLS_*, the same files the server uses) when the switch is
on, plaintext when it is off.
"""

from __future__ import annotations

import argparse
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.tls import load, secure_channel


def check(target: str, service: str = "", component: str = "probe", timeout_s: float = 5.0) -> str:
    """"SERVING", or why not (a health status or the gRPC error)."""
    try:
        tls = load(component)
    except ValueError as error:
        return str(error)
    with secure_channel(target, tls) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service),
                                                              timeout=timeout_s)
        except grpc.RpcError as error:
            return f"{target}: {error.code().name} {error.details()}"
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.common.healthcheck",
                                     description="gRPC health check over the internal mTLS")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--service", default="", help="the health service name ('' = the whole server)")
    parser.add_argument("--component", default="probe",
                        help="whose certificate under $DRTECH_HOME/tls when DRTECH_INTERNAL_TLS_* are unset")
    parser.add_argument("--timeout", type=float, default=5.0)
    args = parser.parse_args(argv)
    state = check(f"{args.host}:{args.port}", args.service, args.component, args.timeout)
    if state == "SERVING":
        return 0
    print(state, file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
