"""Run the whole platform locally: auth, every model service (the router among them) and the gateway.

`make run` calls this. Each component runs as its own process (as in Kubernetes), started in
dependency order; the supervisor waits until each one is healthy and prints the URL. A component
that dies once the platform is up is started again, as Kubernetes restarts a container: after 1 s,
then twice as long after each crash up to 30 s, back to 1 s once it had stayed healthy for 60 s
(`--restart-*`); one log line says each death and when it restarts, another when it is healthy
again. The others keep serving meanwhile (uploads for a missing model become `failed` records to
retry). One that dies while the platform starts stops everything instead (exit status 1): a broken
setting would otherwise loop. Ctrl-C or SIGTERM stops them all (gateway first, so no request reaches
a stopped backend), escalating to SIGKILL after a grace period, or at once on a second signal.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.logs import configure_logging
from services.common.tls import InternalTLS, InternalTLSSettings, ensure_certificates
from services.common.tls import secure_channel
from services.common.tls import load as load_internal_tls
from services.registry import model_specs

log = configure_logging("supervisor")

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Component:
    name: str
    module: str
    port: int
    kind: str  # "grpc" or "http"
    port_env: str = ""  # the environment variable that moves it
    # http only: the internal port of /readyz/gateway and /metrics (never the public one).
    internal_port: int | None = None
    internal_port_env: str = ""
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    # Restarts: how many so far, the last wait, when the next start is due (None: not waiting),
    # when the current process started and since when it has been healthy (None: not yet).
    restarts: int = 0
    backoff_s: float = 0.0
    restart_at: float | None = None
    started_at: float = 0.0
    healthy_since: float | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def ports(self) -> list[tuple[int, str]]:
        """(port, the variable that moves it) for every port this component listens on."""
        extra = [(self.internal_port, self.internal_port_env)] if self.internal_port is not None else []
        return [(self.port, self.port_env), *extra]

    def arguments(self) -> list[str]:
        extra = ["--internal-port", str(self.internal_port)] if self.internal_port is not None else []
        return ["--port", str(self.port), *extra]


@dataclass(frozen=True)
class RestartPolicy:
    """Exponential backoff between restarts of a component that keeps dying, as Kubernetes'
    CrashLoopBackOff (there 10 s doubling to 5 min, reset after 10 min of running)."""

    initial_s: float = 1.0
    max_s: float = 30.0
    reset_after_s: float = 60.0   # healthy this long: the next crash waits initial_s again

    def next_delay(self, previous_s: float, healthy_for_s: float) -> float:
        if previous_s <= 0 or healthy_for_s >= self.reset_after_s:
            return self.initial_s
        return min(previous_s * 2, self.max_s)


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit status {returncode}"


def _port(env: str, default: int) -> int:
    return int(os.environ.get(env, default))


def components() -> list[Component]:
    """The processes `make run` starts, in start order: auth, every model service of the registry
    (services/registry.py), the gateway. Ports come from the environment (DRTECH_<NAME>_PORT)."""
    comps = [Component("auth", "services.auth", _port("DRTECH_AUTH_PORT", 50051), "grpc",
                       "DRTECH_AUTH_PORT")]
    for task, spec in model_specs().items():
        port_env = f"DRTECH_{task.upper()}_PORT"
        comps.append(Component(task, f"services.{task}", _port(port_env, spec.default_port), "grpc", port_env))
    gateway = Component("gateway", "gateway", _port("DRTECH_HTTP_PORT", 8000), "http", "DRTECH_HTTP_PORT",
                        internal_port=_port("DRTECH_GATEWAY_INTERNAL_PORT", 8001),
                        internal_port_env="DRTECH_GATEWAY_INTERNAL_PORT")
    return [*comps, gateway]


def ports_in_use(comps: list[Component]) -> list[str]:
    """What stands in the way of each component's port, checked before anything starts: a server
    already there (another `make run`, say) would answer the health checks in the new one's place."""
    problems = []
    for comp in comps:
        for port, port_env in comp.ports():
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)   # as the servers bind
                try:
                    probe.bind(("127.0.0.1", port))
                except OSError as error:
                    problems.append(f"{comp.name} cannot use port {port} ({error.strerror}): stop what "
                                    f"listens there, or choose another with {port_env}=...")
    return problems


def home() -> Path:
    """Where the platform keeps its state (SQLite databases, uploads, heatmaps, certificates)."""
    return Path(os.environ.get("DRTECH_HOME", ROOT / "var")).resolve()


def home_problem(path: Path) -> str | None:
    """Why `path` cannot hold the platform's state, checked before anything starts (else the auth
    service retried its database for 30 s, then failed naming neither the variable nor the path)."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".writable-"):
            pass
    except OSError as error:
        return (f"DRTECH_HOME {path} cannot hold the platform's state ({error.strerror or error}); "
                "choose a writable folder with DRTECH_HOME=...")
    return None


def _child_env(comps: list[Component]) -> dict[str, str]:
    env = dict(os.environ)
    env["DRTECH_HOME"] = str(home())
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
    # With DRTECH_INTERNAL_MTLS the supervisor checks health as a client of the internal CA.
    with secure_channel(address, _probe_tls) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1.0)
        except grpc.RpcError:
            return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


_probe_tls: InternalTLS | None = None   # the supervisor's client certificate (prepare_internal_tls)


def prepare_internal_tls(home: Path, names: list[str] | None = None) -> None:
    """With DRTECH_INTERNAL_MTLS on: a throwaway CA and a certificate per component (`names`, by
    default every one `make run` starts) under $home/tls, created where missing (the supervisor's
    own for its health checks among them)."""
    global _probe_tls
    settings = InternalTLSSettings(DRTECH_HOME=home)
    if not settings.mtls:
        return
    if settings.tls_cert or settings.tls_key or settings.tls_ca:
        # One file set for every process cannot be right: each needs its own certificate.
        raise SystemExit("make run: unset DRTECH_INTERNAL_TLS_CERT/_KEY/_CA; with DRTECH_INTERNAL_MTLS it "
                         "creates a certificate per component under DRTECH_HOME/tls")
    if names is None:
        names = [comp.name for comp in components()]
    written = ensure_certificates(home, (*names, "supervisor"))
    if written:
        log.info("internal mTLS: created %d certificate files under %s", len(written), home / "tls")
    _probe_tls = load_internal_tls("supervisor", settings)


def _http_ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1.0) as reply:
            return reply.status == 200
    except (urllib.error.URLError, OSError):
        return False


def healthy(comp: Component) -> bool:
    """gRPC health SERVING; for the gateway, its own readiness (auth, database, stores) on its
    internal port: not the public /readyz, which waits for every model service."""
    if comp.kind == "grpc":
        return _grpc_serving(comp.address)
    return _http_ready(f"http://127.0.0.1:{comp.internal_port}/readyz/gateway")


class Supervisor:
    def __init__(self, comps: list[Component], start_timeout: float, grace: float,
                 policy: RestartPolicy | None = None) -> None:
        self.comps = comps
        self.start_timeout = start_timeout
        self.grace = grace
        self.policy = policy or RestartPolicy()
        self.stopping = threading.Event()
        self.hurry = threading.Event()   # a second Ctrl-C: kill what is still running
        self._env: dict[str, str] | None = None

    def spawn(self, comp: Component) -> subprocess.Popen[bytes]:
        if self._env is None:
            self._env = _child_env(self.comps)
            Path(self._env["DRTECH_HOME"]).mkdir(parents=True, exist_ok=True)
            prepare_internal_tls(Path(self._env["DRTECH_HOME"]), [comp.name for comp in self.comps])
        # services.with_parent: a child ends if the supervisor is killed outright. No preexec_fn:
        # it runs gRPC's fork handlers in the forked copy of this process (see that module).
        return subprocess.Popen(
            [sys.executable, "-m", "services.with_parent", str(os.getpid()), comp.module, *comp.arguments()],
            cwd=ROOT,
            env=self._env,
            start_new_session=True,  # Ctrl-C reaches only us; we stop children in order
        )

    def healthy(self, comp: Component) -> bool:
        return healthy(comp)

    def _start(self, comp: Component, now: float) -> None:
        comp.process = self.spawn(comp)
        comp.started_at, comp.healthy_since = now, None

    def start_all(self) -> None:
        for comp in self.comps:
            if self.stopping.is_set():
                return
            log.info("starting %s on %s", comp.name, comp.address)
            self._start(comp, time.monotonic())
            self._wait_healthy(comp)
            comp.healthy_since = time.monotonic()

    def _wait_healthy(self, comp: Component) -> None:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline and not self.stopping.is_set():
            # Any component that already started may die meanwhile too: name it, rather than wait
            # out the timeout on a gateway that can never be ready without it.
            for started in self.comps:
                if started.process is not None and started.process.poll() is not None:
                    when = "while starting" if started is comp else f"while {comp.name} was starting"
                    raise RuntimeError(f"{started.name} exited with status {started.process.returncode} {when}")
            if self.healthy(comp):
                log.info("%s is healthy", comp.name)
                return
            time.sleep(0.2)
        if not self.stopping.is_set():
            raise RuntimeError(f"{comp.name} was not healthy within {self.start_timeout:.0f} s")

    def watch(self) -> int:
        """Keep every component running until a stop signal; returns 0 then."""
        while not self.stopping.wait(0.5):
            for comp in self.comps:
                if self.stopping.is_set():
                    break
                self.tend(comp, time.monotonic())
        return 0

    def tend(self, comp: Component, now: float) -> None:
        """One look at a running platform's component: start it again once its wait is over,
        schedule a restart if it died, note when a (re)started one is healthy."""
        if comp.restart_at is not None:
            if now >= comp.restart_at:
                comp.restart_at = None
                self._start(comp, now)
            return
        if comp.process is None:
            return
        returncode = comp.process.poll()
        if returncode is not None:
            healthy_for = now - comp.healthy_since if comp.healthy_since is not None else 0.0
            comp.backoff_s = self.policy.next_delay(comp.backoff_s, healthy_for)
            comp.restarts += 1
            comp.restart_at = now + comp.backoff_s
            log.error("%s exited unexpectedly (%s); restarting it in %g s (restart %d)",
                      comp.name, describe_exit(returncode), comp.backoff_s, comp.restarts)
            return
        if comp.healthy_since is None:
            if self.healthy(comp):
                comp.healthy_since = now
                log.info("%s is healthy again (restart %d)", comp.name, comp.restarts)
            elif now - comp.started_at > self.start_timeout:
                # As a failing startup probe: end it, and the next look restarts it after its wait.
                log.error("%s was not healthy within %.0f s of restart %d; killing it",
                          comp.name, self.start_timeout, comp.restarts)
                comp.process.kill()
                comp.process.wait()

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
    parser.add_argument("--restart-backoff", type=float, default=1.0,
                        help="seconds before restarting a component that died; doubled after each crash")
    parser.add_argument("--restart-backoff-max", type=float, default=30.0,
                        help="the longest wait before a restart")
    parser.add_argument("--restart-reset-after", type=float, default=60.0,
                        help="seconds healthy after which a crash waits --restart-backoff again")
    args = parser.parse_args(argv)
    if not 0 < args.restart_backoff <= args.restart_backoff_max:
        parser.error("need 0 < --restart-backoff <= --restart-backoff-max")

    policy = RestartPolicy(args.restart_backoff, args.restart_backoff_max, args.restart_reset_after)
    supervisor = Supervisor(components(), args.start_timeout, args.grace, policy)
    problems = ports_in_use(supervisor.comps)
    unusable_home = home_problem(home())
    if unusable_home:
        problems.append(unusable_home)
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
            print(f"Metrics and detailed readiness: http://127.0.0.1:{gateway.internal_port}/metrics, "
                  "/readyz, /readyz/gateway", flush=True)
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
