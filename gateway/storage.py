"""Content-addressed blob stores: a blob's name is the SHA-256 of its bytes.

Two backends behind one interface (`BlobStore`), chosen by DRTECH_GATEWAY_BLOB_STORE:

- `LocalBlobStore` (the default, `make run`): files under `<root>/<aa>/<bb>/<sha256>`. Writes are
  atomic: a temporary file in the same directory tree, fsynced, then renamed into place.
- `S3BlobStore` (production): objects `<prefix><aa>/<bb>/<sha256>` in an S3-compatible bucket (AWS
  S3, SeaweedFS, MinIO...). A PUT is atomic on S3: readers see the whole object or none. Each PUT
  is conditional (`If-None-Match: *`, so a blob is written once) and carries the SHA-256 it must
  have (`x-amz-checksum-sha256`, so the server refuses bytes that do not match their name).

The client's file name is never used (no path traversal, no collisions, the same image stored once).

One blob can back many records, so deleting one races with storing the same bytes for a new record
(its `put` finds the blob and skips writing it). The two sides keep to one protocol that never
loses a blob a committed record names: a writer commits its record and then calls `put` again if
the blob has gone missing; a deleter uses `delete_unused`, which moves the blob aside, asks the
database again, and puts it back when a record appeared meanwhile. S3 has no rename: there the
move aside is a server-side copy to `<prefix>deleting/...` followed by a delete of the original
(the bytes never pass through the gateway), which keeps the same order of events: the blob is
gone from its name before the database is asked again. Both need read-after-write consistency,
which AWS S3 (since 2020), SeaweedFS and MinIO give.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from gateway.settings import GatewaySettings

_SHA256 = re.compile(r"[0-9a-f]{64}")
# Read size when streaming a blob to a client: a 20 MiB upload is never held whole for a download.
CHUNK_BYTES = 64 * 1024


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_digest(digest: str) -> str:
    """`digest` if it is a lowercase SHA-256 hex digest; ValueError otherwise (never a client path)."""
    if not _SHA256.fullmatch(digest):
        raise ValueError(f"not a SHA-256 hex digest: {digest!r}")
    return digest


def _sharded(digest: str) -> str:
    return f"{digest[:2]}/{digest[2:4]}/{digest}"


class StoreUnavailable(Exception):
    """A blob could not be stored or read for want of the store, not of the request (the disk is
    full, a quota is reached, the volume went read-only, the object store does not answer): the
    request can be tried again later."""


class PendingForgets:
    """Blobs whose record is gone, or never came to be, but which could not be forgotten then (the
    records database was unreachable, so nobody could ask whether another record names the same
    bytes): (image digest, heatmap digest) pairs, tried again in the background
    (gateway.blob_protocol.forget_pending_periodically). Thread-safe; kept in memory, so a gateway that
    stops before the database comes back leaves them for a later delete of the same bytes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pairs: set[tuple[str | None, str | None]] = set()

    def add(self, image_sha: str | None, heatmap_sha: str | None) -> None:
        with self._lock:
            self._pairs.add((image_sha, heatmap_sha))

    def take(self) -> list[tuple[str | None, str | None]]:
        """Every pending pair, now no longer pending (add back those that fail again)."""
        with self._lock:
            pairs, self._pairs = list(self._pairs), set()
        return pairs

    def __len__(self) -> int:
        with self._lock:
            return len(self._pairs)


@dataclass
class OpenBlob:
    """A stored blob opened for streaming: its size, and its bytes in chunks (closed at the end).
    `close` gives back what it holds open (a file, an S3 connection) if it is not streamed."""

    size: int
    chunks: Iterator[bytes]
    close: Callable[[], None]


class BlobStore(Protocol):
    """What the gateway needs of an upload or heatmap store (gateway/diagnoses.py, gateway/blob_protocol.py)."""

    def put(self, data: bytes) -> str:
        """Store `data` (once) and return its SHA-256 hex digest."""

    def get(self, digest: str) -> bytes:
        """The stored bytes; FileNotFoundError when absent."""

    def open(self, digest: str) -> OpenBlob:
        """The blob for streaming; FileNotFoundError when absent."""

    def exists(self, digest: str) -> bool: ...

    def size(self, digest: str) -> int:
        """The stored blob's size in bytes, without reading it; FileNotFoundError when absent."""

    def delete_unused(self, digest: str, in_use: Callable[[], bool]) -> bool:
        """Delete the blob unless `in_use()` (a fresh database query, asked after the blob has been
        moved aside) finds a record that names it; True when it was deleted."""

    def sweep_asides(self, digest: str, in_use: Callable[[], bool]) -> int:
        """Remove the copies of the blob a delete_unused that failed part-way left aside (a deleted
        image would stay stored otherwise), first putting the blob back from one if `in_use()` and
        the blob is missing; how many were removed."""

    def state(self) -> str:
        """"ok" when the store can be written (readiness), else why not."""


# What tempfile.mkstemp opens a file with: created here and now, never through a link, private.
_NEW_FILE_FLAGS = (os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
                   | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0))


def _create_new(path: Path) -> int:
    """Open a new file at `path` for writing; its folders are made only when missing (one call, not
    three, for every blob after the first under its prefix)."""
    try:
        return os.open(path, _NEW_FILE_FLAGS, 0o600)
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        return os.open(path, _NEW_FILE_FLAGS, 0o600)


class LocalBlobStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path_for(self, digest: str) -> Path:
        return self.root / _sharded(check_digest(digest))

    def put(self, data: bytes) -> str:
        digest = sha256_hex(data)
        target = self.path_for(digest)
        if target.exists():
            return digest
        # Plain os calls, no file object or tempfile name loop: each call releases and takes back
        # the GIL, which the event loop holds much of the time under load, so fewer calls cost the
        # gateway less CPU (benchmarks/README.md, "Issue 24, 2026-12-07 evening").
        temp = target.parent / f".incoming-{uuid.uuid4().hex}"
        try:
            fd = _create_new(temp)
        except OSError as error:
            raise StoreUnavailable(f"{error.strerror or error}") from error
        try:
            try:
                unwritten = memoryview(data)
                while unwritten:
                    unwritten = unwritten[os.write(fd, unwritten):]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(temp, target)
        except BaseException as error:
            temp.unlink(missing_ok=True)
            if isinstance(error, OSError):
                raise StoreUnavailable(f"{error.strerror or error}") from error
            raise
        return digest

    def get(self, digest: str) -> bytes:
        return self.path_for(digest).read_bytes()

    def open(self, digest: str) -> OpenBlob:
        handle = self.path_for(digest).open("rb")
        try:
            size = os.fstat(handle.fileno()).st_size
        except BaseException:
            handle.close()
            raise

        def chunks() -> Iterator[bytes]:
            with handle:
                while chunk := handle.read(CHUNK_BYTES):
                    yield chunk

        return OpenBlob(size, chunks(), handle.close)

    def exists(self, digest: str) -> bool:
        return self.path_for(digest).is_file()

    def size(self, digest: str) -> int:
        return os.stat(self.path_for(digest)).st_size

    def delete_unused(self, digest: str, in_use: Callable[[], bool]) -> bool:
        target = self.path_for(digest)
        aside = target.with_name(f".deleting-{digest}-{uuid.uuid4().hex}")
        try:
            os.rename(target, aside)
        except FileNotFoundError:
            return False
        try:
            used = in_use()
        except BaseException:
            # The database could not say: a record may name the blob, so it goes back (the caller
            # tries again later, gateway.blob_protocol.forget_pending).
            os.replace(aside, target)
            raise
        if used:
            # The record was committed after our first check; its writer may already have put the
            # same bytes back, which replacing them again leaves unchanged.
            os.replace(aside, target)
            return False
        aside.unlink()
        return True

    def sweep_asides(self, digest: str, in_use: Callable[[], bool]) -> int:
        target = self.path_for(digest)
        asides = sorted(target.parent.glob(f".deleting-{check_digest(digest)}-*"))
        if not asides:
            return 0
        if in_use() and not target.exists():
            os.replace(asides.pop(), target)   # the blob a record names, back from its last copy
        for aside in asides:
            aside.unlink(missing_ok=True)
        return len(asides)

    def state(self) -> str:
        """Creates `root` if it is missing, as the first upload would."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(dir=self.root, prefix=".ready-")
            os.close(fd)
            os.unlink(name)
        except OSError as error:
            return f"not writable ({type(error).__name__}: {error.strerror or error})"
        return "ok"


# Error codes meaning "no such object" (GetObject says NoSuchKey; HEAD has no body, only 404).
_MISSING = {"NoSuchKey", "404", "NotFound"}
# A conditional PUT that lost to an existing object (412), or to a concurrent one (409, AWS).
_ALREADY_THERE = {"PreconditionFailed", "412", "ConditionalRequestConflict", "409"}


def _error_code(error: Exception) -> str:
    return str(getattr(error, "response", {}).get("Error", {}).get("Code", ""))


def _unavailable(error: Exception) -> Exception:
    """What an S3 call that failed for want of the store becomes: StoreUnavailable (503, try again),
    as a full or read-only disk is for the local store; anything else is left as it was."""
    from botocore.exceptions import BotoCoreError, ClientError

    if not isinstance(error, BotoCoreError | ClientError):
        return error
    code = _error_code(error)
    return StoreUnavailable(f"the object store did not answer: {type(error).__name__}"
                            f"{': ' + code if code else ''}")


class S3BlobStore:
    """Blobs as objects under `prefix` in `bucket`, through a boto3 S3 client (thread-safe: one per
    process, shared by the upload and heatmap stores)."""

    def __init__(self, client: Any, bucket: str, prefix: str) -> None:
        if prefix and not prefix.endswith("/"):
            raise ValueError(f"S3 key prefix must end with '/': {prefix!r}")
        self.client = client
        self.bucket = bucket
        self.prefix = prefix

    def key_for(self, digest: str) -> str:
        return self.prefix + _sharded(check_digest(digest))

    def put(self, data: bytes) -> str:
        raw = hashlib.sha256(data).digest()
        digest = raw.hex()
        key = self.key_for(digest)
        if self.exists(digest):
            return digest
        try:
            self.client.put_object(
                Bucket=self.bucket, Key=key, Body=data, IfNoneMatch="*",
                ChecksumSHA256=base64.b64encode(raw).decode("ascii"),
            )
        except Exception as error:
            if _error_code(error) not in _ALREADY_THERE:
                raise _unavailable(error) from error
            # Another writer stored the same bytes first: they are the same blob.
        return digest

    def get(self, digest: str) -> bytes:
        blob = self.open(digest)
        return b"".join(blob.chunks)

    def open(self, digest: str) -> OpenBlob:
        try:
            reply = self.client.get_object(Bucket=self.bucket, Key=self.key_for(digest))
        except Exception as error:
            if _error_code(error) in _MISSING:
                raise FileNotFoundError(f"no blob {digest} in s3://{self.bucket}/{self.prefix}") from None
            raise _unavailable(error) from error
        body = reply["Body"]

        def chunks() -> Iterator[bytes]:
            try:
                yield from body.iter_chunks(CHUNK_BYTES)
            finally:
                body.close()

        return OpenBlob(int(reply["ContentLength"]), chunks(), body.close)

    def exists(self, digest: str) -> bool:
        try:
            self.size(digest)
        except FileNotFoundError:
            return False
        return True

    def size(self, digest: str) -> int:
        try:
            reply = self.client.head_object(Bucket=self.bucket, Key=self.key_for(digest))
        except Exception as error:
            if _error_code(error) in _MISSING:
                raise FileNotFoundError(f"no blob {digest} in s3://{self.bucket}/{self.prefix}") from None
            raise _unavailable(error) from error
        return int(reply["ContentLength"])

    def _put_back(self, key: str, aside: str) -> None:
        # As LocalBlobStore: copying back over bytes a writer may already have put again leaves them
        # unchanged (same name, same content).
        self.client.copy_object(Bucket=self.bucket, Key=key, CopySource={"Bucket": self.bucket, "Key": aside})
        self.client.delete_object(Bucket=self.bucket, Key=aside)

    def delete_unused(self, digest: str, in_use: Callable[[], bool]) -> bool:
        key = self.key_for(digest)
        aside = f"{self.prefix}deleting/{digest}-{uuid.uuid4().hex}"
        try:
            self.client.copy_object(Bucket=self.bucket, Key=aside, CopySource={"Bucket": self.bucket, "Key": key})
        except Exception as error:
            if _error_code(error) in _MISSING:
                return False
            raise
        self.client.delete_object(Bucket=self.bucket, Key=key)
        try:
            used = in_use()
        except BaseException:
            self._put_back(key, aside)   # as LocalBlobStore: the database could not say
            raise
        if used:
            self._put_back(key, aside)
            return False
        self.client.delete_object(Bucket=self.bucket, Key=aside)
        return True

    def sweep_asides(self, digest: str, in_use: Callable[[], bool]) -> int:
        key = self.key_for(digest)
        listed = self.client.list_objects_v2(Bucket=self.bucket, Prefix=f"{self.prefix}deleting/{digest}-")
        asides = sorted(item["Key"] for item in listed.get("Contents", []))
        if not asides:
            return 0
        if in_use() and not self.exists(digest):
            self._put_back(key, asides.pop())   # the blob a record names, back from its last copy
        for aside in asides:
            self.client.delete_object(Bucket=self.bucket, Key=aside)
        return len(asides)

    def state(self) -> str:
        """The bucket answers with these credentials (HEAD bucket; nothing written every probe)."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except Exception as error:
            code = _error_code(error)
            return f"unreachable ({type(error).__name__}{': ' + code if code else ''})"
        return "ok"


def s3_client(endpoint_url: str, region: str, addressing_style: str, timeout_s: float,
              max_connections: int) -> Any:
    """A boto3 S3 client. Credentials come from boto3's standard chain: AWS_ACCESS_KEY_ID /
    AWS_SECRET_ACCESS_KEY, or a web identity (EKS IRSA / Pod Identity: AWS_ROLE_ARN and
    AWS_WEB_IDENTITY_TOKEN_FILE), or an instance profile."""
    import boto3
    from botocore.config import Config

    config = Config(
        s3={"addressing_style": addressing_style},
        connect_timeout=timeout_s,
        read_timeout=timeout_s,
        retries={"mode": "standard", "max_attempts": 3},
        max_pool_connections=max_connections,
    )
    return boto3.client(
        "s3", endpoint_url=endpoint_url or None, region_name=region or None, config=config
    )


def blob_stores(settings: GatewaySettings) -> tuple[BlobStore, BlobStore]:
    """The upload and heatmap stores DRTECH_GATEWAY_BLOB_STORE names (one S3 client for both)."""
    if settings.blob_store == "s3":
        # One pooled connection per thread that may call S3 at once: the upload slots, renders, and
        # readiness checks, with room for image downloads (anyio's thread pool has 40 threads).
        client = s3_client(settings.s3_endpoint_url, settings.s3_region, settings.s3_addressing_style,
                           settings.s3_timeout_s, max_connections=40)
        return (S3BlobStore(client, settings.s3_bucket, f"{settings.s3_prefix}uploads/"),
                S3BlobStore(client, settings.s3_bucket, f"{settings.s3_prefix}heatmaps/"))
    return LocalBlobStore(settings.uploads_dir), LocalBlobStore(settings.heatmaps_dir)
