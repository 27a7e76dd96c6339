"""The content-addressed blob stores (gateway/storage.py): every contract test here runs against the
local store, and again against S3 (a real SeaweedFS on loopback) in
tests/integration/test_gateway_storage_s3.py, which imports them with its own `backend` fixture."""

from __future__ import annotations

import errno
import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest

from gateway import audit, records
from gateway.database import create_database_engine, migrate, session_factory
from gateway.blob_protocol import NewRecord, keep_uploads_and_records
from gateway.metrics import GatewayMetrics
from gateway.storage import CHUNK_BYTES, BlobStore, LocalBlobStore, StoreUnavailable, sha256_hex
from tests.unit.test_gateway_serialization import completed_record


@dataclass
class Backend:
    store: BlobStore
    # Every name the backend holds (files under the root, keys in the bucket): nothing may linger.
    everything: Callable[[], list[str]]
    # Where the blob with this digest lives (a path or a key), for the naming checks.
    location: Callable[[str], str]
    # From now on (in the given monkeypatch context) removing a copy moved aside fails, as a disk
    # or an object store that stops answering mid-delete does.
    break_aside_removal: Callable[[pytest.MonkeyPatch], None]


def local_backend(root: Path) -> Backend:
    store = LocalBlobStore(root)

    def break_aside_removal(patch: pytest.MonkeyPatch) -> None:
        real_unlink = Path.unlink

        def unlink(path: Path, missing_ok: bool = False) -> None:
            if path.name.startswith(".deleting-"):
                raise OSError(errno.EIO, os.strerror(errno.EIO))
            real_unlink(path, missing_ok=missing_ok)

        patch.setattr(Path, "unlink", unlink)

    return Backend(
        store,
        lambda: sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()),
        lambda digest: str(store.path_for(digest).relative_to(root)),
        break_aside_removal,
    )


@pytest.fixture
def backend(tmp_path: Path) -> Backend:
    return local_backend(tmp_path / "uploads")


def test_a_blob_is_stored_once_under_its_sha256_and_read_back_byte_for_byte(backend: Backend) -> None:
    store = backend.store
    data = b"\xff\xd8\xff" + bytes(range(256)) * 10
    digest = store.put(data)
    assert digest == hashlib.sha256(data).hexdigest()
    assert backend.location(digest).endswith(f"{digest[:2]}/{digest[2:4]}/{digest}")
    assert store.get(digest) == data and store.exists(digest) and store.size(digest) == len(data)
    assert store.put(data) == digest  # idempotent
    assert backend.everything() == [backend.location(digest)], "one blob, no temporary or aside copies"


def test_the_local_store_shards_files_under_its_root(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path / "uploads")
    digest = store.put(b"scan")
    assert store.path_for(digest) == tmp_path / "uploads" / digest[:2] / digest[2:4] / digest
    assert not list(tmp_path.rglob(".incoming-*"))


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
    with pytest.raises(FileNotFoundError):
        backend.store.size(absent)


@pytest.mark.parametrize("name", ["../../etc/passwd", "upload.jpg", "A" * 64, "", "0" * 63])
def test_only_sha256_names_are_accepted_never_a_client_path(backend: Backend, name: str) -> None:
    for call in (backend.store.get, backend.store.exists, backend.store.open, backend.store.size):
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


def test_a_delete_the_database_cannot_answer_for_keeps_the_blob(backend: Backend) -> None:
    """The records database fails between the move aside and the second look: a record may name the
    blob, so it is put back (and the caller tries again later), never left aside or lost."""
    store = backend.store
    digest = store.put(b"scan")

    def unreachable() -> bool:
        raise ConnectionError("records database unreachable")

    with pytest.raises(ConnectionError):
        store.delete_unused(digest, unreachable)
    assert store.get(digest) == b"scan"
    assert backend.everything() == [backend.location(digest)], "no aside copy left"


def test_a_delete_that_fails_part_way_leaves_a_copy_that_the_retry_removes(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The blob moved aside and deleted, then removing the aside copy fails: a deleted image would stay
    stored, out of every record's reach. The retry (gateway.blob_protocol.forget_pending) sweeps it."""
    store = backend.store
    digest = store.put(b"scan")
    with monkeypatch.context() as failing:
        backend.break_aside_removal(failing)
        with pytest.raises(Exception):  # noqa: B017 - what the disk or the object store raised
            store.delete_unused(digest, lambda: False)
    assert not store.exists(digest) and len(backend.everything()) == 1   # the copy aside

    assert store.sweep_asides(digest, lambda: False) == 1
    assert backend.everything() == []
    assert store.sweep_asides(digest, lambda: False) == 0


def test_sweeping_the_copy_a_record_still_needs_puts_the_blob_back(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A record that names the bytes was committed in between: its blob comes back from the copy."""
    store = backend.store
    digest = store.put(b"scan")
    with monkeypatch.context() as failing:
        backend.break_aside_removal(failing)
        with pytest.raises(Exception):  # noqa: B017
            store.delete_unused(digest, lambda: False)

    store.sweep_asides(digest, lambda: True)
    assert store.get(digest) == b"scan"
    assert backend.everything() == [backend.location(digest)], "the blob, and no copy aside"


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


def test_a_record_committed_after_the_delete_puts_its_blob_back_itself(
    backend: Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writer's half, as the gateway runs it (gateway.blob_protocol.keep_uploads_and_records): its `put`
    found the blobs of another record with the same bytes (and wrote nothing); that record's delete,
    having looked at the database before this commit, removed them before the commit. After
    committing, the writer puts the bytes back."""
    store = backend.store
    upload, heatmap = b"the same scan, uploaded again", b"its heatmap"
    store.put(upload)           # the other record's blobs
    store.put(heatmap)
    engine = create_database_engine(f"sqlite:///{tmp_path / 'gateway.db'}")
    migrate(engine)
    # What keep_uploads_and_records reads of a GatewayContext; the rest (gRPC channels, metrics) is
    # the running gateway's and not this protocol's.
    ctx = SimpleNamespace(uploads=store, heatmaps=store, sessions=session_factory(engine), metrics=GatewayMetrics())
    commit = records.add_all

    def delete_lands_just_before_the_commit(session, new, also):  # type: ignore[no-untyped-def]
        for digest in (new[0].image_sha256, new[0].heatmap_sha256):
            assert store.delete_unused(digest, lambda: False) is True
        return commit(session, new, also)

    monkeypatch.setattr(records, "add_all", delete_lands_just_before_the_commit)
    kept = completed_record(image_sha256=None, heatmap_sha256=sha256_hex(heatmap), explain=True)
    event = audit.Entry("diagnosis_create", "success", kept.user_id, "127.0.0.1", "test", kept.id)
    try:
        new = [NewRecord(kept, upload, heatmap, event)]
        errors = keep_uploads_and_records(ctx, new)  # type: ignore[arg-type]
    finally:
        engine.dispose()

    assert errors == [None]

    assert kept.image_sha256 == sha256_hex(upload)
    assert store.get(kept.image_sha256) == upload and store.get(sha256_hex(heatmap)) == heatmap
    assert backend.everything() == sorted([backend.location(sha256_hex(upload)),
                                           backend.location(sha256_hex(heatmap))])


class RefusingStore(LocalBlobStore):
    """A local store whose disk is full for one particular blob."""

    def __init__(self, root: Path, refused: bytes) -> None:
        super().__init__(root)
        self.refused = refused

    def put(self, data: bytes) -> str:
        if data == self.refused:
            raise StoreUnavailable("No space left on device")
        return super().put(data)


def test_diagnoses_kept_together_share_one_commit_and_a_blob_that_fails_fails_only_its_own(
    tmp_path: Path,
) -> None:
    """Group commit of new diagnoses (gateway.blob_protocol.keep_uploads_and_records): the records
    and audit events of a batch go in one transaction; one whose heatmap cannot be stored is
    StoreUnavailable alone, its record is not written and its upload does not stay on disk."""
    from sqlalchemy import event, func, select

    uploads = local_backend(tmp_path / "uploads")
    heatmaps = RefusingStore(tmp_path / "heatmaps", refused=b"heatmap 2")
    engine = create_database_engine(f"sqlite:///{tmp_path / 'gateway.db'}")
    migrate(engine)
    commits: list[object] = []
    event.listen(engine, "commit", commits.append)
    ctx = SimpleNamespace(uploads=uploads.store, heatmaps=heatmaps, sessions=session_factory(engine),
                          metrics=GatewayMetrics(), pending_forgets=None)
    new = []
    for n in range(4):
        record = completed_record(id=f"6f1c3d7e-0000-4000-8000-00000000000{n}", image_sha256="",
                                  heatmap_sha256=sha256_hex(f"heatmap {n}".encode()), explain=True)
        entry = audit.Entry("diagnosis_create", "success", record.user_id, "127.0.0.1", "test", record.id)
        new.append(NewRecord(record, f"upload {n}".encode(), f"heatmap {n}".encode(), entry))
    try:
        errors = keep_uploads_and_records(ctx, new)  # type: ignore[arg-type]
        with ctx.sessions() as session:
            kept = sorted(session.scalars(select(records.Diagnosis.id)))
            events = sorted(session.scalars(select(audit.AuditEvent.diagnosis_id)))
            assert session.scalar(select(func.count()).select_from(records.Diagnosis)) == 3
    finally:
        engine.dispose()

    assert [type(error) for error in errors] == [type(None), type(None), StoreUnavailable, type(None)]
    assert len(commits) == 1
    assert kept == events == sorted(new[n].record.id for n in (0, 1, 3))
    kept_uploads = [sha256_hex(f"upload {n}".encode()) for n in (0, 1, 3)]
    assert uploads.everything() == sorted(uploads.location(digest) for digest in kept_uploads)


class GoneAfterTheCommit(LocalBlobStore):
    """A local store where one blob vanishes as its record commits (a concurrent delete of another
    record with the same bytes) and cannot be put back (the disk filled meanwhile)."""

    def __init__(self, root: Path, vanishing: bytes) -> None:
        super().__init__(root)
        self.vanishing = vanishing
        self.puts = 0

    def exists(self, digest: str) -> bool:
        return digest != sha256_hex(self.vanishing) and super().exists(digest)

    def put(self, data: bytes) -> str:
        if data == self.vanishing:
            self.puts += 1
            if self.puts > 1:
                raise StoreUnavailable("No space left on device")
        return super().put(data)


def test_a_blob_that_cannot_be_put_back_after_the_commit_fails_no_diagnosis_and_is_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Both records are committed, so both are kept and answered as kept (a 503 would say nothing was
    kept, and a retry would make a second record); the one whose image is gone is named in the log."""
    engine = create_database_engine(f"sqlite:///{tmp_path / 'gateway.db'}")
    migrate(engine)
    store = GoneAfterTheCommit(tmp_path / "uploads", vanishing=b"upload 1")
    ctx = SimpleNamespace(uploads=store, heatmaps=store, sessions=session_factory(engine),
                          metrics=GatewayMetrics(), pending_forgets=None)
    new = []
    for n in range(2):
        record = completed_record(id=f"6f1c3d7e-0000-4000-8000-00000000000{n}", image_sha256="")
        entry = audit.Entry("diagnosis_create", "success", record.user_id, "127.0.0.1", "test", record.id)
        new.append(NewRecord(record, f"upload {n}".encode(), None, entry))
    try:
        errors = keep_uploads_and_records(ctx, new)  # type: ignore[arg-type]
    finally:
        engine.dispose()

    assert errors == [None, None]
    logged = [r.getMessage() for r in caplog.records if " is kept, but" in r.getMessage()]
    assert [message.split(" is kept")[0] for message in logged] == [f"diagnosis {new[1].record.id}"]


def test_the_local_store_state_is_ok_when_writable_and_says_why_not_otherwise(tmp_path: Path) -> None:
    assert LocalBlobStore(tmp_path / "uploads").state() == "ok"
    (tmp_path / "file").write_text("not a folder")
    assert LocalBlobStore(tmp_path / "file").state().startswith("not writable (")


def test_a_local_put_on_a_full_disk_is_store_unavailable_and_leaves_no_partial_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = LocalBlobStore(tmp_path)

    def disk_full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(StoreUnavailable, match="No space left on device"):
        store.put(b"an image")
    assert [path for path in tmp_path.rglob("*") if path.is_file()] == []


def test_a_local_put_whose_folder_cannot_be_made_is_store_unavailable(tmp_path: Path) -> None:
    (tmp_path / "uploads").write_text("a file where the store's root should be")
    with pytest.raises(StoreUnavailable, match="Not a directory|File exists"):
        LocalBlobStore(tmp_path / "uploads").put(b"an image")


def test_a_local_put_writes_every_byte_when_the_system_writes_part_of_them(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """os.write may write fewer bytes than asked (a signal, a pipe-like file system): put goes on."""
    store = LocalBlobStore(tmp_path)
    real_write = os.write
    monkeypatch.setattr(os, "write", lambda fd, data: real_write(fd, bytes(data[:1000])))
    data = bytes(range(256)) * 40
    digest = store.put(data)
    assert store.get(digest) == data
