"""One long-lived gRPC channel per backend service, created at start-up and reused by every request.

Targets use the `dns:///` resolver with `round_robin`, so in Kubernetes (headless Service) the same
code spreads calls over every pod. Two settings make it follow scaling (docs/architecture.md,
"Load balancing and retries"): the servers close each connection after `max_connection_age`
(30 s by default), and a closed connection makes the channel look the name up again, at most once
per `grpc_dns_min_interval_s` (gRPC's own default is 30 s). So a pod the autoscaler adds gets calls
within about a connection age, and one that goes away stops getting them.

Calls that are safe to repeat are retried by gRPC itself on UNAVAILABLE (a pod killed or draining
mid-call, a connection the server just closed): see `RETRIED_METHODS`.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.settings import GatewaySettings
from protos.drtech.v1 import auth_pb2, auth_pb2_grpc, diagnosis_pb2, diagnosis_pb2_grpc
from services.common.tls import InternalTLS, InternalTLSSettings
from services.common.tls import load as load_internal_tls

_DIAGNOSIS = diagnosis_pb2.DESCRIPTOR.services_by_name["DiagnosisService"].full_name
_AUTH = auth_pb2.DESCRIPTOR.services_by_name["AuthService"].full_name
_HEALTH = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name

# (service, method) that gRPC retries on UNAVAILABLE, and why repeating each is safe. Not retried:
# AuthService.SignUp (a reply lost after the account was created would turn into ALREADY_EXISTS for
# the person who just signed up, and count twice against the per-address sign-up limit) and
# AuthService.LogIn (each attempt creates a session and a failed one counts towards the log-in
# throttle). gRPC still repeats any call that never reached a server (transparent retry), which is
# safe for every method.
RETRIED_METHODS: dict[tuple[str, str], str] = {
    (_DIAGNOSIS, "Diagnose"): "inference only: the model services keep no state, any replica answers alike",
    (_DIAGNOSIS, "GetModelInfo"): "a read",
    (_HEALTH, "Check"): "a read",
    (_AUTH, "Authenticate"): "a read of the session",
    (_AUTH, "GetUser"): "a read",
    (_AUTH, "LogOut"): "idempotent by contract: revoking a revoked token changes nothing",
}

# Three attempts in all; the call's own deadline still bounds the whole, backoff included.
_RETRY_POLICY: dict[str, Any] = {
    "maxAttempts": 3,
    "initialBackoff": "0.1s",
    "maxBackoff": "1s",
    "backoffMultiplier": 2,
    "retryableStatusCodes": ["UNAVAILABLE"],
}
# Per channel: retries stop while more than half of 20 tokens are spent (each failed attempt
# spends 1, each success earns 0.1 back), so a backend that is down for good gets no retry storm,
# while the few calls in flight on one killed pod are all retried.
_RETRY_THROTTLING = {"maxTokens": 20, "tokenRatio": 0.1}

SERVICE_CONFIG: dict[str, Any] = {
    "loadBalancingConfig": [{"round_robin": {}}],
    "methodConfig": [{
        "name": [{"service": service, "method": method} for service, method in RETRIED_METHODS],
        "retryPolicy": _RETRY_POLICY,
    }],
    "retryThrottling": _RETRY_THROTTLING,
}


def channel_target(address: str) -> str:
    """`host:port` -> `dns:///host:port`; an address that already names a scheme is kept."""
    if "://" in address or address.startswith(("dns:", "unix:", "ipv4:", "ipv6:")):
        return address
    return f"dns:///{address}"


def channel_options(max_message_bytes: int, dns_min_interval_s: float) -> list[tuple[str, Any]]:
    """The options of every backend channel (one place, so tests build exactly these)."""
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.service_config", json.dumps(SERVICE_CONFIG)),
        ("grpc.enable_retries", 1),
        # A retried call is sent again from a copy gRPC keeps; past this size the call is never
        # retried. gRPC's default (256 KiB) is smaller than most radiographs, so: a whole message.
        ("grpc.per_rpc_retry_buffer_size", max_message_bytes),
        # How soon after the last DNS lookup a closed connection may trigger the next one.
        ("grpc.dns_min_time_between_resolutions_ms", int(dns_min_interval_s * 1000)),
        ("grpc.keepalive_time_ms", 60_000),
        # A backend that went away (a restarted pod or `make run` component) is dialled again at
        # most 5 s apart, not gRPC's default of up to 120 s: calls to it work again within seconds
        # of its return.
        ("grpc.max_reconnect_backoff_ms", 5_000),
    ]


def open_channel(address: str, max_message_bytes: int, dns_min_interval_s: float,
                 tls: InternalTLS | None = None, component: str = "") -> grpc.aio.Channel:
    """A channel to a backend: mutual TLS with `tls` (DRTECH_INTERNAL_MTLS), plaintext without.

    With TLS, the server's certificate must name `component` (auth, bone, ...), whatever host the
    address has: each certificate carries its component's name as a SAN, so the same check holds
    for 127.0.0.1 under `make run` and for bone.<namespace>.svc.<domain> in any namespace.
    """
    options = channel_options(max_message_bytes, dns_min_interval_s)
    if tls is None:
        return grpc.aio.insecure_channel(channel_target(address), options=options)
    if component:
        options.append(("grpc.ssl_target_name_override", component))
    return grpc.aio.secure_channel(channel_target(address), tls.channel_credentials(), options=options)


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

    def __init__(self, settings: GatewaySettings, tls_settings: InternalTLSSettings | None = None) -> None:
        # Raises ValueError naming the file when DRTECH_INTERNAL_MTLS is on and a file is missing.
        tls = load_internal_tls("gateway", tls_settings)

        def channel(address: str, component: str) -> grpc.aio.Channel:
            return open_channel(address, settings.max_message_bytes, settings.grpc_dns_min_interval_s, tls,
                                component)

        self.auth_backend = Backend("auth", settings.auth_addr, channel(settings.auth_addr, "auth"))
        self.auth = auth_pb2_grpc.AuthServiceStub(self.auth_backend.channel)
        # Every model service (the router among them) by its name in settings.model_addrs; which exam
        # type each serves is the model catalog's to say (gateway/model_catalog.py).
        self.model_backends: dict[str, Backend] = {
            name: Backend(name, address, channel(address, name))
            for name, address in settings.model_addrs.items()
        }
        self.models: dict[str, diagnosis_pb2_grpc.DiagnosisServiceStub] = {
            name: diagnosis_pb2_grpc.DiagnosisServiceStub(backend.channel)
            for name, backend in self.model_backends.items()
        }

    def all(self) -> list[Backend]:
        return [self.auth_backend, *self.model_backends.values()]

    async def check_health(self, timeout_s: float) -> dict[str, str]:
        """name -> "SERVING" or the reason it is not (not serving, unreachable, ...), for every backend."""
        backends = self.all()
        states = await asyncio.gather(*(check_backend(backend, timeout_s) for backend in backends))
        return {backend.name: state for backend, state in zip(backends, states, strict=True)}

    async def close(self) -> None:
        await asyncio.gather(*(backend.channel.close() for backend in self.all()))
