"""The content-addressed upload store (gateway/storage.py)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from gateway.storage import BlobStore


def test_a_blob_is_stored_once_under_its_sha256_and_read_back_byte_for_byte(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "uploads")
    data = b"\xff\xd8\xff" + bytes(range(256)) * 10
    digest = store.put(data)
    assert digest == hashlib.sha256(data).hexdigest()
    path = store.path_for(digest)
    assert path == tmp_path / "uploads" / digest[:2] / digest[2:4] / digest
    assert path.read_bytes() == data
    assert store.get(digest) == data
    assert store.put(data) == digest  # idempotent
    assert [p for p in (tmp_path / "uploads").rglob("*") if p.is_file()] == [path]


def test_no_temporary_files_are_left_behind(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    for n in range(3):
        store.put(bytes([n]) * 100)
    assert not [p for p in tmp_path.rglob(".incoming-*")]


@pytest.mark.parametrize("name", ["../../etc/passwd", "upload.jpg", "A" * 64, "", "0" * 63])
def test_only_sha256_names_are_accepted_never_a_client_path(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError):
        BlobStore(tmp_path).path_for(name)


def test_delete_unused_deletes_a_blob_no_record_names(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    digest = store.put(b"scan")
    assert store.delete_unused(digest, lambda: False) is True
    assert not store.exists(digest) and not list(tmp_path.rglob(".deleting-*"))
    assert store.delete_unused(digest, lambda: False) is False   # already gone
    with pytest.raises(FileNotFoundError):
        store.get(digest)


def test_a_record_committed_while_the_blob_is_being_deleted_keeps_it(tmp_path: Path) -> None:
    """The race between deleting one record and storing the same bytes for another: the writer's
    `put` found the file (and wrote nothing), then committed its record before the deleter's second
    look at the database. The blob is put back, byte for byte."""
    store = BlobStore(tmp_path)
    data = b"the same scan, uploaded again"
    digest = store.put(data)

    def record_appears() -> bool:
        assert not store.exists(digest), "asked while the blob is moved aside"
        return True

    assert store.delete_unused(digest, record_appears) is False
    assert store.get(digest) == data and not list(tmp_path.rglob(".deleting-*"))


def test_a_record_committed_after_the_delete_puts_its_blob_back_itself(tmp_path: Path) -> None:
    """The writer's half: after committing, a writer whose blob vanished (a delete that had already
    looked at the database) puts the bytes again."""
    store = BlobStore(tmp_path)
    data = b"scan"
    digest = store.put(data)          # the writer's put: the file exists, nothing written
    store.delete_unused(digest, lambda: False)   # the deleter looked before the writer's commit
    if not store.exists(digest):       # the writer, after its commit
        store.put(data)
    assert store.get(digest) == data
