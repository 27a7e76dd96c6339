"""Content-addressed blob store: a blob's name is the SHA-256 of its bytes.

Uploads are kept byte for byte under `<root>/<aa>/<bb>/<sha256>`; the client's file name is never
used (no path traversal, no collisions, the same image stored once). Writes are atomic: a temporary
file in the same directory tree, fsynced, then renamed into place.

One blob can back many records, so deleting one races with storing the same bytes for a new record
(its `put` finds the file and skips writing it). The two sides keep to one protocol that never
loses a blob a committed record names: a writer commits its record and then calls `put` again if
the blob has gone missing; a deleter uses `delete_unused`, which moves the blob aside, asks the
database again, and puts it back when a record appeared meanwhile.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path

_SHA256 = re.compile(r"[0-9a-f]{64}")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path_for(self, digest: str) -> Path:
        if not _SHA256.fullmatch(digest):
            raise ValueError(f"not a SHA-256 hex digest: {digest!r}")
        return self.root / digest[:2] / digest[2:4] / digest

    def put(self, data: bytes) -> str:
        """Store `data` (once) and return its SHA-256 hex digest."""
        digest = sha256_hex(data)
        target = self.path_for(digest)
        if target.exists():
            return digest
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, temp_name = tempfile.mkstemp(dir=target.parent, prefix=".incoming-")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp_name, target)
        except BaseException:
            Path(temp_name).unlink(missing_ok=True)
            raise
        return digest

    def get(self, digest: str) -> bytes:
        """The stored bytes; FileNotFoundError when absent."""
        return self.path_for(digest).read_bytes()

    def exists(self, digest: str) -> bool:
        return self.path_for(digest).is_file()

    def delete_unused(self, digest: str, in_use: Callable[[], bool]) -> bool:
        """Delete the blob unless `in_use()` (a fresh database query, asked after the blob has been
        moved aside) finds a record that names it; True when it was deleted."""
        target = self.path_for(digest)
        aside = target.with_name(f".deleting-{digest}-{uuid.uuid4().hex}")
        try:
            os.rename(target, aside)
        except FileNotFoundError:
            return False
        if in_use():
            # The record was committed after our first check; its writer may already have put the
            # same bytes back, which replacing them again leaves unchanged.
            os.replace(aside, target)
            return False
        aside.unlink()
        return True
