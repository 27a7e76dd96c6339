"""Which gateway calls gRPC repeats when a backend answers UNAVAILABLE, through the gateway's channels.

A server on loopback answers every method's first attempt with UNAVAILABLE (what a pod that is
killed or draining mid-call gives) and later attempts with an empty reply; it counts the attempts.
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.grpc_clients import RETRIED_METHODS, open_channel
from protos.drtech.v1 import auth_pb2, auth_pb2_grpc, diagnosis_pb2, diagnosis_pb2_grpc

MIB = 1024 * 1024


class FirstAttemptUnavailable(grpc.GenericRpcHandler):
    """Every unary method: UNAVAILABLE the first time it is called, an empty message after."""

    def __init__(self) -> None:
        self.attempts: Counter[str] = Counter()
        self._lock = threading.Lock()

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        method = handler_call_details.method

        def answer(_request: bytes, context: grpc.ServicerContext) -> bytes:
            with self._lock:
                self.attempts[method] += 1
                first = self.attempts[method] == 1
            if first:
                context.abort(grpc.StatusCode.UNAVAILABLE, "draining")
            return b""      # an empty message parses as any reply type

        return grpc.unary_unary_rpc_method_handler(answer)   # bytes in, bytes out


@pytest.fixture
def server() -> Iterator[tuple[FirstAttemptUnavailable, str]]:
    handler = FirstAttemptUnavailable()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), handlers=[handler],
                         options=[("grpc.max_receive_message_length", 20 * MIB)])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield handler, f"127.0.0.1:{port}"
    server.stop(0)


def call(address: str, method: str) -> grpc.StatusCode:
    """Call `method` once through a channel the gateway would open; the final status."""

    async def run() -> grpc.StatusCode:
        channel = open_channel(address, max_message_bytes=20 * MIB, dns_min_interval_s=5.0)
        auth = auth_pb2_grpc.AuthServiceStub(channel)
        model = diagnosis_pb2_grpc.DiagnosisServiceStub(channel)
        calls = {
            # A 3 MB upload: ten times gRPC's default retry buffer (256 KiB).
            "Diagnose": lambda: model.Diagnose(diagnosis_pb2.DiagnoseRequest(image=b"\x00" * (3 * MIB))),
            "GetModelInfo": lambda: model.GetModelInfo(diagnosis_pb2.GetModelInfoRequest()),
            "Check": lambda: health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest()),
            "SignUp": lambda: auth.SignUp(auth_pb2.SignUpRequest(email="a@example.org", password="x" * 12)),
            "LogIn": lambda: auth.LogIn(auth_pb2.LogInRequest(email="a@example.org", password="x" * 12)),
            "Authenticate": lambda: auth.Authenticate(auth_pb2.AuthenticateRequest(access_token="t")),
            "GetUser": lambda: auth.GetUser(auth_pb2.GetUserRequest(id="u")),
            "LogOut": lambda: auth.LogOut(auth_pb2.LogOutRequest(access_token="t")),
        }
        try:
            await asyncio.wait_for(calls[method](), timeout=10)
            return grpc.StatusCode.OK
        except grpc.aio.AioRpcError as error:
            return error.code()
        finally:
            await channel.close()

    return asyncio.run(run())


RETRIED = ["Diagnose", "GetModelInfo", "Check", "Authenticate", "GetUser", "LogOut"]


@pytest.mark.parametrize("method", RETRIED)
def test_reads_and_idempotent_calls_are_retried_on_unavailable(
    server: tuple[FirstAttemptUnavailable, str], method: str
) -> None:
    handler, address = server
    assert call(address, method) == grpc.StatusCode.OK
    assert [attempts for name, attempts in handler.attempts.items() if name.endswith(f"/{method}")] == [2]


@pytest.mark.parametrize("method", ["SignUp", "LogIn"])
def test_calls_that_change_state_are_not_repeated(
    server: tuple[FirstAttemptUnavailable, str], method: str
) -> None:
    handler, address = server
    assert call(address, method) == grpc.StatusCode.UNAVAILABLE
    assert handler.attempts == Counter({f"/drtech.v1.AuthService/{method}": 1})


def test_the_retried_methods_are_the_ones_specified_here() -> None:
    assert sorted(method for _service, method in RETRIED_METHODS) == sorted(RETRIED)
