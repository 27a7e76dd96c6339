"""Run a real gateway (uvicorn, real sockets) inside the current process, for tests and tools."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass

from gateway.__main__ import Listeners, bind_socket
from gateway.settings import GatewaySettings


@dataclass
class RunningGateway:
    port: int
    url: str
    # The operational endpoints' port (/metrics, the detailed /readyz and /readyz/gateway).
    internal_port: int
    internal_url: str
    listeners: Listeners
    thread: threading.Thread

    def stop(self) -> None:
        self.listeners.stop()
        self.thread.join(timeout=30)


def start_gateway(settings: GatewaySettings, timeout_s: float = 30.0) -> RunningGateway:
    """Start the gateway, and its internal listener, on free ports in a background thread; returns
    once both accept requests."""
    sock = bind_socket(settings.host, 0)
    internal_sock = bind_socket(settings.internal_bind_host, 0)
    port, internal_port = sock.getsockname()[1], internal_sock.getsockname()[1]
    listeners = Listeners(settings, sock, internal_sock)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(listeners.serve())
        except BaseException as error:  # noqa: BLE001 - reported to the caller below
            errors.append(error)

    thread = threading.Thread(target=run, name=f"gateway-{port}", daemon=True)
    thread.start()
    waited = 0.0
    while not listeners.started and thread.is_alive() and waited < timeout_s:
        threading.Event().wait(0.05)
        waited += 0.05
    if not listeners.started:
        listeners.stop()
        thread.join(timeout=5)
        raise RuntimeError(f"gateway did not start: {errors[0] if errors else 'timed out'}")
    return RunningGateway(
        port=port,
        url=f"http://{settings.host}:{port}",
        internal_port=internal_port,
        internal_url=f"http://{settings.internal_bind_host}:{internal_port}",
        listeners=listeners,
        thread=thread,
    )
