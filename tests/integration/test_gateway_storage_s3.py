"""The blob-store contract (tests/unit/test_gateway_storage.py) against S3: a real SeaweedFS on
loopback (tests/s3_server.py), plus what only S3 has (keys, conditional and checksummed PUTs)."""

from __future__ import annotations

import hashlib

import pytest
from botocore.exceptions import EndpointConnectionError

from gateway.storage import S3BlobStore
from tests.s3_server import SeaweedFS

# The contract tests, collected here again against this module's `backend` (S3).
from tests.unit.test_gateway_storage import (  # noqa: F401
    Backend,
    test_a_blob_is_stored_once_under_its_sha256_and_read_back_byte_for_byte,
    test_a_delete_that_fails_part_way_leaves_a_copy_that_the_retry_removes,
    test_a_large_blob_streams_in_chunks_with_its_size,
    test_a_missing_blob_is_file_not_found,
    test_a_record_committed_after_the_delete_puts_its_blob_back_itself,
    test_a_record_committed_while_the_blob_is_being_deleted_keeps_it,
    test_delete_unused_deletes_a_blob_no_record_names,
    test_only_sha256_names_are_accepted_never_a_client_path,
    test_sweeping_the_copy_a_record_still_needs_puts_the_blob_back,
)


def s3_backend(server: SeaweedFS) -> Backend:
    client, bucket, prefix = server.client(), server.bucket, server.new_prefix()
    store = S3BlobStore(client, bucket, prefix)

    def everything() -> list[str]:
        listed = client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
        return sorted(item["Key"] for item in listed)

    def break_aside_removal(patch: pytest.MonkeyPatch) -> None:
        real_delete = client.delete_object

        def delete_object(**kwargs: object) -> object:
            if "/deleting/" in str(kwargs["Key"]):
                raise EndpointConnectionError(endpoint_url=server.endpoint_url)
            return real_delete(**kwargs)

        patch.setattr(client, "delete_object", delete_object)

    return Backend(store, everything, store.key_for, break_aside_removal)


@pytest.fixture
def backend(s3_server: SeaweedFS) -> Backend:
    return s3_backend(s3_server)


def test_s3_keys_are_the_prefix_and_the_sharded_digest(s3_server: SeaweedFS) -> None:
    store = S3BlobStore(s3_server.client(), "any-bucket", "drtech/heatmaps/")
    digest = "ab" + "0" * 62
    assert store.key_for(digest) == f"drtech/heatmaps/ab/00/{digest}"
    with pytest.raises(ValueError, match="must end with '/'"):
        S3BlobStore(s3_server.client(), "any-bucket", "drtech")




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


def test_the_s3_store_state_is_ok_when_reachable_and_says_why_not_otherwise(s3_server: SeaweedFS) -> None:
    assert s3_backend(s3_server).store.state() == "ok"
    missing = S3BlobStore(s3_server.client(), "no-such-bucket-here", "uploads/")
    assert missing.state().startswith("unreachable (")
