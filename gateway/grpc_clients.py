"""One long-lived gRPC channel per backend service, created at start-up and reused by every request.

Targets use the `dns:///` resolver with `round_robin`, so in Kubernetes (headless Service) the
same code spreads calls over every pod; the servers' `max_connection_age` makes us re-resolve.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.settings import GatewaySettings
from protos.drtech.v1 import auth_pb2_grpc, diagnosis_pb2_grpc

# exam_type -> the model service's short name (used in /readyz and logs).
MODEL_SERVICES: dict[str, str] = {"bone_xray": "bone", "skin_lesion": "skin", "chest_xray": "pneumonia"}

_SERVICE_CONFIG = json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})


def channel_target(address: str) -> str:
    """`host:port` -> `dns:///host:port`; an address that already names a scheme is kept."""
    if "://" in address or address.startswith(("dns:", "unix:", "ipv4:", "ipv6:")):
        return address
    return f"dns:///{address}"


def open_channel(address: str, max_message_bytes: int) -> grpc.aio.Channel:
    options = [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.service_config", _SERVICE_CONFIG),
        ("grpc.enable_retries", 1),
        ("grpc.keepalive_time_ms", 60_000),
        # A backend that went away (a restarted pod or `make run` component) is dialled again at
        # most 5 s apart, not gRPC's default of up to 120 s: calls to it work again within seconds
        # of its return.
        ("grpc.max_reconnect_backoff_ms", 5_000),
    ]
    return grpc.aio.insecure_channel(channel_target(address), options=options)


@dataclass
class Backend:
    name: str
    address: str
    channel: grpc.aio.Channel

    @property
    def health(self) -> health_pb2_grpc.HealthStub:
        return health_pb2_grpc.HealthStub(self.channel)


async def check_backend(backend: Backend, timeout_s: float) -> str:
    """"SERVING" or the reason the backend is not (its health status, or unreachable and why)."""
    try:
        reply = await backend.health.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout_s)
    except grpc.aio.AioRpcError as error:
        return f"unreachable at {backend.address} ({error.code().name})"
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def public_state(state: str) -> str:
    """A state from `check_backend` without internals (addresses, gRPC codes): its health status,
    or "unreachable". What the public /readyz shows."""
    return state if state in health_pb2.HealthCheckResponse.ServingStatus.keys() else "unreachable"


class Backends:
    """The auth service and every model service. Must be created inside the running event loop."""

    def __init__(self, settings: GatewaySettings) -> None:
        size = settings.max_message_bytes
        self.auth_backend = Backend("auth", settings.auth_addr, open_channel(settings.auth_addr, size))
        self.model_backends: dict[str, Backend] = {
            exam_type: Backend(MODEL_SERVICES[exam_type], address, open_channel(address, size))
            for exam_type, address in settings.model_addresses().items()
        }
        # The router model service answers exam_type=auto for uploads without DICOM routing tags.
        self.router_backend = Backend("router", settings.router_addr, open_channel(settings.router_addr, size))
        self.router = diagnosis_pb2_grpc.DiagnosisServiceStub(self.router_backend.channel)
        self.auth = auth_pb2_grpc.AuthServiceStub(self.auth_backend.channel)
        self.models: dict[str, diagnosis_pb2_grpc.DiagnosisServiceStub] = {
            exam_type: diagnosis_pb2_grpc.DiagnosisServiceStub(backend.channel)
            for exam_type, backend in self.model_backends.items()
        }

    def all(self) -> list[Backend]:
        return [self.auth_backend, *self.model_backends.values(), self.router_backend]

    async def check_health(self, timeout_s: float) -> dict[str, str]:
        """name -> "SERVING" or the reason it is not (not serving, unreachable, ...), for every backend."""
        backends = self.all()
        states = await asyncio.gather(*(check_backend(backend, timeout_s) for backend in backends))
        return {backend.name: state for backend, state in zip(backends, states, strict=True)}

    async def close(self) -> None:
        await asyncio.gather(*(backend.channel.close() for backend in self.all()))
