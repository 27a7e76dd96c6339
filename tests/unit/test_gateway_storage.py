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


def test_delete_removes_the_blob_and_is_idempotent(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    digest = store.put(b"hello")
    store.delete(digest)
    assert not store.exists(digest)
    store.delete(digest)
    with pytest.raises(FileNotFoundError):
        store.get(digest)


@pytest.mark.parametrize("name", ["../../etc/passwd", "upload.jpg", "A" * 64, "", "0" * 63])
def test_only_sha256_names_are_accepted_never_a_client_path(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError):
        BlobStore(tmp_path).path_for(name)
