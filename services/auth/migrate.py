"""``python -m services.auth.migrate [--database-url URL]``: bring the auth schema to head and exit.

Production runs it as a Kubernetes Job with the migrator role's URL (DRTECH_AUTH_DATABASE_URL from
the Secret drtech-database-migrator) before auth rolls out; the serving pods, with
DRTECH_AUTH_RUN_MIGRATIONS=false, only check the schema is at head (deploy/k8s/README.md).
"""

from __future__ import annotations

import os
import sys

from services.auth.database import make_engine, migrate, wait_until_reachable
from services.common.schema import migrate_main

# A Job may start before the database answers (a fresh cluster); it waits this long first.
_DATABASE_WAIT_S = 60.0


def _settings_url() -> str:
    url = os.environ.get("DRTECH_AUTH_DATABASE_URL", "")
    if url:
        return url
    from services.auth.settings import AuthSettings

    return AuthSettings().database_url


def migrate_url(url: str) -> None:
    engine = make_engine(url)
    try:
        wait_until_reachable(engine, _DATABASE_WAIT_S)
        migrate(engine)
    finally:
        engine.dispose()


def main(argv: list[str] | None = None) -> int:
    return migrate_main("python -m services.auth.migrate", "auth", _settings_url, migrate_url, argv)


if __name__ == "__main__":
    sys.exit(main())
