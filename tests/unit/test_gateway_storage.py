"""The content-addressed blob stores (gateway/storage.py): every contract test runs against the
local store and against S3 (a real SeaweedFS on loopback, tests/s3_server.py)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.storage import CHUNK_BYTES, BlobStore, LocalBlobStore, S3BlobStore
from tests.s3_server import SeaweedFS


@dataclass
class Backend:
    store: BlobStore
    # Every name the backend holds (files under the root, keys in the bucket): nothing may linger.
    everything: Callable[[], list[str]]
    # Where the blob with this digest lives (a path or a key), for the naming checks.
    location: Callable[[str], str]


def local_backend(root: Path) -> Backend:
    store = LocalBlobStore(root)
    return Backend(
        store,
        lambda: sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()),
        lambda digest: str(store.path_for(digest).relative_to(root)),
    )


def s3_backend(server: SeaweedFS) -> Backend:
    client, bucket, prefix = server.client(), server.bucket, server.new_prefix()
    store = S3BlobStore(client, bucket, prefix)

    def everything() -> list[str]:
        listed = client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
        return sorted(item["Key"] for item in listed)

    return Backend(store, everything, store.key_for)


@pytest.fixture(params=["local", "s3"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "local":
        return local_backend(tmp_path / "uploads")
    return s3_backend(request.getfixturevalue("s3_server"))


def test_a_blob_is_stored_once_under_its_sha256_and_read_back_byte_for_byte(backend: Backend) -> None:
    store = backend.store
    data = b"\xff\xd8\xff" + bytes(range(256)) * 10
    digest = store.put(data)
    assert digest == hashlib.sha256(data).hexdigest()
    assert backend.location(digest).endswith(f"{digest[:2]}/{digest[2:4]}/{digest}")
    assert store.get(digest) == data and store.exists(digest)
    assert store.put(data) == digest  # idempotent
    assert backend.everything() == [backend.location(digest)], "one blob, no temporary or aside copies"


def test_the_local_store_shards_files_under_its_root(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path / "uploads")
    digest = store.put(b"scan")
    assert store.path_for(digest) == tmp_path / "uploads" / digest[:2] / digest[2:4] / digest
    assert not list(tmp_path.rglob(".incoming-*"))


def test_s3_keys_are_the_prefix_and_the_sharded_digest(s3_server: SeaweedFS) -> None:
    store = S3BlobStore(s3_server.client(), "any-bucket", "drtech/heatmaps/")
    digest = "ab" + "0" * 62
    assert store.key_for(digest) == f"drtech/heatmaps/ab/00/{digest}"
    with pytest.raises(ValueError, match="must end with '/'"):
        S3BlobStore(s3_server.client(), "any-bucket", "drtech")


def test_a_large_blob_streams_in_chunks_with_its_size(backend: Backend) -> None:
    data = bytes(range(256)) * (3 * CHUNK_BYTES // 256 + 7)
    digest = backend.store.put(data)
    blob = backend.store.open(digest)
    chunks = list(blob.chunks)
    assert blob.size == len(data) and b"".join(chunks) == data
    assert len(chunks) > 1 and max(len(chunk) for chunk in chunks) <= CHUNK_BYTES


def test_a_missing_blob_is_file_not_found(backend: Backend) -> None:
    absent = hashlib.sha256(b"never stored").hexdigest()
    assert backend.store.exists(absent) is False
    with pytest.raises(FileNotFoundError):
        backend.store.get(absent)
    with pytest.raises(FileNotFoundError):
        backend.store.open(absent)


@pytest.mark.parametrize("name", ["../../etc/passwd", "upload.jpg", "A" * 64, "", "0" * 63])
def test_only_sha256_names_are_accepted_never_a_client_path(backend: Backend, name: str) -> None:
    for call in (backend.store.get, backend.store.exists, backend.store.open):
        with pytest.raises(ValueError):
            call(name)
    with pytest.raises(ValueError):
        backend.store.delete_unused(name, lambda: False)


def test_delete_unused_deletes_a_blob_no_record_names(backend: Backend) -> None:
    store = backend.store
    digest = store.put(b"scan")
    assert store.delete_unused(digest, lambda: False) is True
    assert not store.exists(digest) and backend.everything() == [], "no blob, no aside copy"
    assert store.delete_unused(digest, lambda: False) is False   # already gone
    with pytest.raises(FileNotFoundError):
        store.get(digest)


def test_a_record_committed_while_the_blob_is_being_deleted_keeps_it(backend: Backend) -> None:
    """The race between deleting one record and storing the same bytes for another: the writer's
    `put` found the blob (and wrote nothing), then committed its record before the deleter's second
    look at the database. The blob is put back, byte for byte."""
    store = backend.store
    data = b"the same scan, uploaded again"
    digest = store.put(data)

    def record_appears() -> bool:
        assert not store.exists(digest), "asked while the blob is moved aside"
        return True

    assert store.delete_unused(digest, record_appears) is False
    assert store.get(digest) == data
    assert backend.everything() == [backend.location(digest)], "the aside copy is gone"


def test_a_record_committed_after_the_delete_puts_its_blob_back_itself(backend: Backend) -> None:
    """The writer's half: after committing, a writer whose blob vanished (a delete that had already
    looked at the database) puts the bytes again."""
    store = backend.store
    data = b"scan"
    digest = store.put(data)          # the writer's put: the blob exists, nothing written
    store.delete_unused(digest, lambda: False)   # the deleter looked before the writer's commit
    if not store.exists(digest):       # the writer, after its commit
        store.put(data)
    assert store.get(digest) == data


def test_an_s3_put_that_loses_to_a_concurrent_writer_of_the_same_bytes_succeeds(
    s3_server: SeaweedFS, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two writers both find the blob missing; the second PUT is refused by its If-None-Match
    (412), which means the bytes are there: it returns the digest, no error, one object."""
    backend = s3_backend(s3_server)
    store = backend.store
    assert isinstance(store, S3BlobStore)
    monkeypatch.setattr(store, "exists", lambda digest: False)
    first, second = store.put(b"same bytes"), store.put(b"same bytes")
    assert first == second and backend.everything() == [store.key_for(first)]


def test_s3_refuses_bytes_that_do_not_match_their_name(s3_server: SeaweedFS) -> None:
    """The PUT carries the SHA-256 its bytes must have: a body changed on the way is refused by the
    server, not stored under a name it does not match."""
    import base64

    import botocore.exceptions

    backend = s3_backend(s3_server)
    store = backend.store
    assert isinstance(store, S3BlobStore)
    claimed = hashlib.sha256(b"the real scan").digest()
    with pytest.raises(botocore.exceptions.ClientError):
        store.client.put_object(Bucket=store.bucket, Key=store.key_for(claimed.hex()), Body=b"other bytes",
                                ChecksumSHA256=base64.b64encode(claimed).decode())
    assert backend.everything() == []


def test_store_state_is_ok_when_writable_and_says_why_not_otherwise(
    tmp_path: Path, s3_server: SeaweedFS
) -> None:
    assert LocalBlobStore(tmp_path / "uploads").state() == "ok"
    (tmp_path / "file").write_text("not a folder")
    assert LocalBlobStore(tmp_path / "file").state().startswith("not writable (")
    assert s3_backend(s3_server).store.state() == "ok"
    missing = S3BlobStore(s3_server.client(), "no-such-bucket-here", "uploads/")
    assert missing.state().startswith("unreachable (")
