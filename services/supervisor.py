"""Run the whole platform locally: auth, the three model services, the router and the gateway.

`make run` calls this. Each component runs as its own process (as in Kubernetes), started in
dependency order; the supervisor waits until each one is healthy, prints the URL, and on Ctrl-C
or SIGTERM stops them all (gateway first, so no request reaches a stopped backend), escalating to
SIGKILL only after a grace period. If any component dies, everything is stopped and the exit
status is non-zero.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.core.logs import configure_logging

log = configure_logging("supervisor")

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Component:
    name: str
    module: str
    port: int
    kind: str  # "grpc" or "http"
    port_env: str = ""  # the environment variable that moves it
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


def _port(env: str, default: int) -> int:
    return int(os.environ.get(env, default))


def components() -> list[Component]:
    """The processes `make run` starts, in start order. Ports come from the environment."""
    specs = [("auth", "services.auth", "DRTECH_AUTH_PORT", 50051, "grpc"),
             ("bone", "services.bone", "DRTECH_BONE_PORT", 50052, "grpc"),
             ("skin", "services.skin", "DRTECH_SKIN_PORT", 50053, "grpc"),
             ("pneumonia", "services.pneumonia", "DRTECH_PNEUMONIA_PORT", 50054, "grpc"),
             ("router", "services.router", "DRTECH_ROUTER_PORT", 50055, "grpc"),
             ("gateway", "gateway", "DRTECH_HTTP_PORT", 8000, "http")]
    return [Component(name, module, _port(env, default), kind, env) for name, module, env, default, kind in specs]


def ports_in_use(comps: list[Component]) -> list[str]:
    """What stands in the way of each component's port, checked before anything starts: a server
    already there (another `make run`, say) would answer the health checks in the new one's place."""
    problems = []
    for comp in comps:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)   # as the servers bind
            try:
                probe.bind(("127.0.0.1", comp.port))
            except OSError as error:
                problems.append(f"{comp.name} cannot use port {comp.port} ({error.strerror}): stop what "
                                f"listens there, or choose another with {comp.port_env}=...")
    return problems


def _child_env(comps: list[Component]) -> dict[str, str]:
    env = dict(os.environ)
    env["DRTECH_HOME"] = str(Path(os.environ.get("DRTECH_HOME", ROOT / "var")).resolve())
    for comp in comps:
        if comp.kind == "grpc":
            env[f"DRTECH_{comp.name.upper()}_ADDR"] = comp.address
    # One port per process: every model service reads these, so an exported value (the k8s settings)
    # would make all four bind the same port and the second one fail to start.
    for shared_port in ("DRTECH_SERVING_HEALTH_PORT", "DRTECH_SERVING_METRICS_PORT"):
        env.pop(shared_port, None)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _grpc_serving(address: str) -> bool:
    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1.0)
        except grpc.RpcError:
            return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def _http_ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1.0) as reply:
            return reply.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _healthy(comp: Component) -> bool:
    if comp.kind == "grpc":
        return _grpc_serving(comp.address)
    return _http_ready(f"http://{comp.address}/readyz")


class Supervisor:
    def __init__(self, comps: list[Component], start_timeout: float, grace: float) -> None:
        self.comps = comps
        self.start_timeout = start_timeout
        self.grace = grace
        self.stopping = threading.Event()
        self.hurry = threading.Event()   # a second Ctrl-C: kill what is still running

    def start_all(self) -> None:
        env = _child_env(self.comps)
        Path(env["DRTECH_HOME"]).mkdir(parents=True, exist_ok=True)
        for comp in self.comps:
            if self.stopping.is_set():
                return
            log.info("starting %s on %s", comp.name, comp.address)
            # services.with_parent: a child ends if the supervisor is killed outright. No preexec_fn:
            # it runs gRPC's fork handlers in the forked copy of this process (see that module).
            comp.process = subprocess.Popen(
                [sys.executable, "-m", "services.with_parent", str(os.getpid()), comp.module,
                 "--port", str(comp.port)],
                cwd=ROOT,
                env=env,
                start_new_session=True,  # Ctrl-C reaches only us; we stop children in order
            )
            self._wait_healthy(comp)

    def _wait_healthy(self, comp: Component) -> None:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline and not self.stopping.is_set():
            # Any component that already started may die meanwhile too: name it, rather than wait
            # out the timeout on a gateway that can never be ready without it.
            for started in self.comps:
                if started.process is not None and started.process.poll() is not None:
                    when = "while starting" if started is comp else f"while {comp.name} was starting"
                    raise RuntimeError(f"{started.name} exited with status {started.process.returncode} {when}")
            if _healthy(comp):
                log.info("%s is healthy", comp.name)
                return
            time.sleep(0.2)
        if not self.stopping.is_set():
            raise RuntimeError(f"{comp.name} was not healthy within {self.start_timeout:.0f} s")

    def watch(self) -> int:
        """Block until a stop signal (returns 0) or until a component dies (returns 1)."""
        while not self.stopping.wait(0.5):
            for comp in self.comps:
                if comp.process is not None and comp.process.poll() is not None:
                    log.error("%s exited unexpectedly with status %s", comp.name, comp.process.returncode)
                    return 1
        return 0

    def stop_all(self) -> None:
        running = [c for c in reversed(self.comps) if c.process is not None and c.process.poll() is None]
        for comp in running:
            log.info("stopping %s", comp.name)
            assert comp.process is not None
            comp.process.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + self.grace
            while comp.process.poll() is None and time.monotonic() < deadline and not self.hurry.is_set():
                time.sleep(0.05)
            if comp.process.poll() is None:
                why = "on a second signal" if self.hurry.is_set() else f"after {self.grace:.0f} s"
                log.warning("%s has not stopped; killing it %s", comp.name, why)
                comp.process.kill()
                comp.process.wait()
        log.info("all stopped")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--start-timeout", type=float, default=120.0, help="seconds to wait for each component")
    parser.add_argument("--grace", type=float, default=15.0, help="seconds each component gets to stop")
    args = parser.parse_args(argv)

    supervisor = Supervisor(components(), args.start_timeout, args.grace)
    problems = ports_in_use(supervisor.comps)
    for problem in problems:
        log.error("%s", problem)
    if problems:
        return 1

    def on_signal(signum: int, _frame: object) -> None:
        if supervisor.stopping.is_set():
            log.info("received %s again, killing what is still running", signal.Signals(signum).name)
            supervisor.hurry.set()
            return
        log.info("received %s, shutting down (again to kill at once)", signal.Signals(signum).name)
        supervisor.stopping.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    status = 0
    try:
        supervisor.start_all()
        if not supervisor.stopping.is_set():
            gateway = supervisor.comps[-1]
            print(f"\nDr.Tech is running at http://{gateway.address}  (Ctrl-C to stop)\n", flush=True)
            print("Not for clinical use.", flush=True)
            status = supervisor.watch()
    except RuntimeError as error:
        log.error("%s", error)
        status = 1
    finally:
        supervisor.stop_all()
    return status


if __name__ == "__main__":
    sys.exit(main())
