"""How the training commands end: a dataset folder that is not in its published layout, or a file
that is not there, is one line on stderr and exit status 2, not a traceback."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

from training.datasets import DatasetLayoutError


def run(main: Callable[[list[str] | None], int], argv: Sequence[str] | None = None) -> int:
    """`main(argv)`'s exit status, with the errors a user can fix reported plainly."""
    try:
        return main(None if argv is None else list(argv))
    except (DatasetLayoutError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
