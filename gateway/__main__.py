"""`python -m gateway [--host H] [--port N] [--internal-port N]`: serve the web UI and the JSON API
with uvicorn, and the operational endpoints (/metrics, detailed readiness) on a second, internal port.

Port 0 picks a free port. Prints `listening on http://HOST:PORT` and `internal endpoints on
http://HOST:PORT` once both accept connections. Stops gracefully on SIGTERM/Ctrl-C (uvicorn finishes
requests in flight; the internal port answers probes and scrapes until the public one has drained).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import socket
import sys
from collections.abc import Iterator

import uvicorn
from fastapi import FastAPI
from pydantic import ValidationError

from gateway.app import create_app, internal_app
from gateway.audit import configure_audit_log
from gateway.settings import GatewaySettings
from services.common.logs import configure_logging
from services.common.production import settings_error_line
from services.common.startup_heap import freeze_startup_heap

try:
    import uvloop   # not on Windows (pyproject.toml)
except ImportError:
    uvloop = None


def bind_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Connections accepted from this socket inherit TCP_NODELAY. Without it, every response on a
    # kept-alive connection waited ~40 ms (Nagle's algorithm against the client's delayed ACK):
    # measured 44 ms -> 1.5 ms per request (benchmarks/serving.py).
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()    # a port in use must not leave the socket to the garbage collector
        raise
    sock.set_inheritable(True)
    return sock


class _SignalsLeftToPublic(uvicorn.Server):
    """The internal listener installs no signal handlers: the public server takes SIGINT/SIGTERM
    and `Listeners.serve` stops this one once the public one has drained."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class Listeners:
    """The public server and the internal one, in one process and one event loop."""

    def __init__(self, settings: GatewaySettings, public_sock: socket.socket, internal_sock: socket.socket,
                 app: FastAPI | None = None) -> None:
        app = app or create_app(settings)
        self.public_sock, self.internal_sock = public_sock, internal_sock
        self.public = uvicorn.Server(uvicorn.Config(
            app,
            log_config=None,  # keep our one-line log format
            proxy_headers=True,
            forwarded_allow_ips=settings.forwarded_allow_ips,
            timeout_graceful_shutdown=15,
        ))
        # No lifespan: the public app's start-up builds the context both share (503 until then).
        self.internal = _SignalsLeftToPublic(uvicorn.Config(
            internal_app(app), log_config=None, lifespan="off", proxy_headers=False, access_log=False,
        ))

    @property
    def started(self) -> bool:
        return self.public.started and self.internal.started

    async def serve(self) -> None:
        internal = asyncio.create_task(self.internal.serve(sockets=[self.internal_sock]))
        try:
            await self.public.serve(sockets=[self.public_sock])
        finally:
            # Probes and scrapes keep their answers while the public listener drains.
            self.internal.should_exit = True
            await internal

    def stop(self) -> None:
        self.public.should_exit = True


def _url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://{host}:{port}"


async def serve(settings: GatewaySettings, sock: socket.socket, internal_sock: socket.socket) -> int:
    listeners = Listeners(settings, sock, internal_sock)
    task = asyncio.create_task(listeners.serve())
    while not listeners.started and not task.done():
        await asyncio.sleep(0.05)
    started = listeners.started
    if started:
        freeze_startup_heap()   # before traffic: full collections then skip the start-up objects
        print(f"listening on {_url(sock)}", flush=True)
        print(f"internal endpoints on {_url(internal_sock)} (/metrics, /readyz, /readyz/gateway)", flush=True)
    await task
    return 0 if started else 1


def main(argv: list[str] | None = None) -> int:
    log = configure_logging("gateway")
    configure_audit_log()
    try:
        settings = GatewaySettings()
    except ValidationError as error:
        log.error("refusing to start: %s", settings_error_line(error))
        return 2
    parser = argparse.ArgumentParser(prog="python -m gateway", description="Dr.Tech gateway (web UI + API)")
    parser.add_argument("--host", default=settings.host)
    parser.add_argument("--port", type=int, default=settings.http_port, help="0 picks a free port")
    parser.add_argument("--internal-port", type=int, default=settings.internal_port,
                        help="port of /metrics and the detailed readiness; 0 picks a free port")
    args = parser.parse_args(argv)
    try:
        settings = GatewaySettings.model_validate(
            {**settings.model_dump(), "host": args.host, "http_port": args.port,
             "internal_port": args.internal_port}
        )
    except ValidationError as error:
        log.error("refusing to start: %s", settings_error_line(error))
        return 2
    sockets = []
    for host, port in ((args.host, args.port), (settings.internal_bind_host, args.internal_port)):
        try:
            sockets.append(bind_socket(host, port))
        except OSError as error:
            print(f"gateway: cannot listen on {host}:{port} ({error.strerror}); is the port in use?",
                  file=sys.stderr)
            for sock in sockets:
                sock.close()
            return 1
    # uvicorn handles SIGINT/SIGTERM while serving (graceful shutdown), then re-raises the signal
    # with the previous handler restored; with these no-op handlers that ends in a clean exit 0.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: None)
    # uvloop: 4% less gateway CPU per diagnosis than asyncio's own loop (benchmarks/README.md).
    with asyncio.Runner(loop_factory=uvloop.new_event_loop if uvloop else None) as runner:
        return runner.run(serve(settings, *sockets))


if __name__ == "__main__":
    sys.exit(main())
