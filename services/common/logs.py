"""One logging setup for every Dr.Tech process: one line per record, component-tagged."""

from __future__ import annotations

import logging
import os
import sys


def configure_logging(component: str, level: str | None = None) -> logging.Logger:
    """Configure the root logger once and return the component's logger."""
    level = (level or os.environ.get("DRTECH_LOG_LEVEL", "INFO")).upper()
    root = logging.getLogger()
    if not getattr(root, "_drtech_configured", False):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(
            logging.Formatter(f"%(asctime)s %(levelname)s {component} %(name)s: %(message)s")
        )
        root.handlers[:] = [handler]
        root._drtech_configured = True  # type: ignore[attr-defined]
    root.setLevel(level)
    return logging.getLogger(component)
