"""``python -m gateway.migrate [--database-url URL]``: bring the gateway's schema to head and exit.

Production runs it as a Kubernetes Job with the migrator role's URL (DRTECH_GATEWAY_DATABASE_URL
from the Secret drtech-database-migrator) before the gateway rolls out; the serving pods, with
DRTECH_GATEWAY_RUN_MIGRATIONS=false, only check the schema is at head (deploy/k8s/README.md).
"""

from __future__ import annotations

import os
import sys

from gateway.database import create_database_engine, migrate
from services.common.schema import migrate_main


def _settings_url() -> str:
    # The variable alone, so the Job needs none of the serving settings (S3, proxies) to migrate.
    url = os.environ.get("DRTECH_GATEWAY_DATABASE_URL", "")
    if url:
        return url
    from gateway.settings import GatewaySettings

    return GatewaySettings().database_url


def migrate_url(url: str) -> None:
    engine = create_database_engine(url)
    try:
        migrate(engine)
    finally:
        engine.dispose()


def main(argv: list[str] | None = None) -> int:
    return migrate_main("python -m gateway.migrate", "gateway", _settings_url, migrate_url, argv)


if __name__ == "__main__":
    sys.exit(main())
