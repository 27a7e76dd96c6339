"""Schema migration apart from serving: the check serving pods make when they do not migrate
themselves (DRTECH_GATEWAY_RUN_MIGRATIONS / DRTECH_AUTH_RUN_MIGRATIONS off, production), and the
command a Kubernetes Job runs with the migrator role (`python -m gateway.migrate`,
`python -m services.auth.migrate`; deploy/k8s/README.md).
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Callable

from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

log = logging.getLogger(__name__)


class SchemaNotAtHead(RuntimeError):
    """The database's schema is older than this release's (its migrations have not run yet)."""


def schema_problem(engine: Engine, config: Config, version_table: str) -> str | None:
    """Why the database's schema is not this release's head, or None when it is.

    A revision this release does not know is accepted (with a warning): a newer release migrated
    first, and its migrations keep the schema usable by the previous release (expand, then
    contract a release later) so that a rolling update can run both."""
    script = ScriptDirectory.from_config(config)
    heads = set(script.get_heads())
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"version_table": version_table})
        current = set(context.get_current_heads())
    if current == heads:
        return None
    if not current:
        return f"the database has no schema yet (table {version_table} is empty or missing)"
    known = {revision for revision in current if _known(script, revision)}
    if known != current:
        log.warning("database schema %s is newer than this release's %s; serving anyway",
                    sorted(current), sorted(heads))
        return None
    return f"the database schema is at {sorted(current)}, this release needs {sorted(heads)}"


def _known(script: ScriptDirectory, revision: str) -> bool:
    try:
        return script.get_revision(revision) is not None
    except Exception:   # alembic raises ResolutionError/CommandError for an unknown id
        return False


def wait_for_schema_at_head(engine: Engine, config: Config, version_table: str, wait_s: float,
                            retry_every_s: float = 2.0) -> None:
    """Return once the schema is at head; after `wait_s` raise SchemaNotAtHead saying why not.
    An unreachable database counts as not yet (it is retried too)."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            problem = schema_problem(engine, config, version_table)
        except SQLAlchemyError as error:
            problem = f"the database cannot be read ({type(getattr(error, 'orig', None) or error).__name__})"
        if problem is None:
            return
        if time.monotonic() + retry_every_s > deadline:
            raise SchemaNotAtHead(f"{problem}; run the migration Job (deploy/k8s/README.md) first")
        log.warning("waiting for the schema migration: %s", problem)
        time.sleep(retry_every_s)


def migrate_main(prog: str, what: str, default_url: Callable[[], str],
                 migrate: Callable[[str], None], argv: list[str] | None = None) -> int:
    """The body of `python -m <service>.migrate`: migrate the database at --database-url (default:
    the service's own setting) to head, and exit 0; 1 with one line on stderr when it fails."""
    from services.common.logs import configure_logging

    parser = argparse.ArgumentParser(prog=prog, description=f"Bring the {what} database schema to head.")
    parser.add_argument("--database-url", help="SQLAlchemy URL of the migrator role (default: the service's "
                        "own database setting)")
    args = parser.parse_args(argv)
    logger = configure_logging(f"{what}-migrate")
    try:
        url = args.database_url or default_url()
    except Exception as error:   # settings refused (pydantic ValidationError): one line
        logger.error("cannot read the database setting: %s", str(error).splitlines()[0])
        return 2
    try:
        migrate(url)
    except Exception as error:
        logger.error("migration failed: %s: %s", type(error).__name__, str(error).splitlines()[0] if str(error) else "")
        return 1
    logger.info("%s schema is at head", what)
    return 0

