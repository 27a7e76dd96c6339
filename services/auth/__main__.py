"""``python -m services.auth [--host H] [--port N]``: run the auth gRPC server until SIGTERM or Ctrl-C.

Prints ``listening on HOST:PORT`` to stdout once it is SERVING (``--port 0`` picks a free port).
"""

from __future__ import annotations

import argparse
import sys

from pydantic import ValidationError

from services.auth.server import start_server
from services.auth.settings import AuthSettings
from services.common.grpc_server import stop_on_signals, wait_until
from services.common.logs import configure_logging
from services.common.production import settings_error_line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.auth", description="Dr.Tech auth gRPC service")
    parser.add_argument("--host", help="address to bind (default: DRTECH_AUTH_HOST or 127.0.0.1)")
    parser.add_argument(
        "--port", type=int, help="port to bind, 0 for a free one (default: DRTECH_AUTH_PORT or 50051)"
    )
    args = parser.parse_args(argv)

    log = configure_logging("auth")
    overrides = {key: value for key, value in (("host", args.host), ("port", args.port)) if value is not None}
    try:
        settings = AuthSettings(**overrides)
    except ValidationError as error:
        log.error("refusing to start: %s", settings_error_line(error))
        return 2

    # Until it serves, a signal may end the process at once: nothing is in flight yet.
    try:
        server = start_server(settings)
    except KeyboardInterrupt:
        return 130
    except Exception as error:
        log.error("could not start: %s", error)
        return 1

    stopping = stop_on_signals(log)
    print(f"listening on {settings.host}:{server.port}", flush=True)

    wait_until(stopping)
    log.info("shutting down (grace %.1f s)", settings.grace_s)
    server.stop(settings.grace_s)
    return 0


if __name__ == "__main__":
    sys.exit(main())
