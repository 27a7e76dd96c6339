"""Run a real gateway (uvicorn, real sockets) inside the current process, for tests and tools."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass

import uvicorn

from gateway.__main__ import bind_socket
from gateway.app import create_app
from gateway.settings import GatewaySettings


@dataclass
class RunningGateway:
    port: int
    url: str
    server: uvicorn.Server
    thread: threading.Thread

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def start_gateway(settings: GatewaySettings, timeout_s: float = 30.0) -> RunningGateway:
    """Start the gateway on a free port in a background thread; returns once it accepts requests."""
    sock = bind_socket(settings.host, 0)
    port = sock.getsockname()[1]
    config = uvicorn.Config(create_app(settings), log_config=None, lifespan="on")
    server = uvicorn.Server(config)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(server.serve(sockets=[sock]))
        except BaseException as error:  # noqa: BLE001 - reported to the caller below
            errors.append(error)

    thread = threading.Thread(target=run, name=f"gateway-{port}", daemon=True)
    thread.start()
    waited = 0.0
    while not server.started and thread.is_alive() and waited < timeout_s:
        threading.Event().wait(0.05)
        waited += 0.05
    if not server.started:
        server.should_exit = True
        thread.join(timeout=5)
        raise RuntimeError(f"gateway did not start: {errors[0] if errors else 'timed out'}")
    return RunningGateway(port=port, url=f"http://{settings.host}:{port}", server=server, thread=thread)
