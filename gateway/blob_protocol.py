"""Stored uploads and heatmaps and the records that name them: the gateway's side of the blob
protocol (gateway/storage.py), so that no committed record loses its blob and no blob is left that
no record names.

- A writer stores the blobs, then commits the record; once committed, it puts back a blob that a
  concurrent delete of another record with the same bytes removed meanwhile.
- A deleter deletes the record, then each of its blobs that no record names any more (the store's
  delete_unused asks the database again after moving the blob aside). When the database cannot be
  asked, the blobs are remembered (ctx.pending_forgets) and tried again in the background.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import anyio
from fastapi.concurrency import run_in_threadpool
from sqlalchemy.orm import Session

from gateway import audit, records
from gateway.context import GatewayContext
from gateway.errors import ApiError
from gateway.records import Diagnosis
from gateway.storage import StoreUnavailable

log = logging.getLogger("gateway.blob_protocol")


@dataclass(frozen=True)
class NewRecord:
    """A diagnosis to keep: its record, upload, heatmap (or None) and audit event."""

    record: Diagnosis
    upload: bytes
    heatmap: bytes | None
    event: audit.Entry


def keep_uploads_and_records(ctx: GatewayContext, new: list[NewRecord]) -> list[BaseException | None]:
    """Store each one's upload and heatmap, then commit every record whose blobs were stored, with
    its audit event, in one transaction (ctx.record_writes batches the diagnoses that finish
    together: gateway/write_batches.py). Returns, per item, what its own blobs failed with
    (StoreUnavailable when the store is full or gone: its record is not written), else None; raises
    what failed the commit, for all. Once committed, a record is kept and answered as kept, even if
    a blob it had to put back could not be (logged: _after_commit).
    Blocking: one thread hand-off for the whole batch. Its CPU is counted as the stages "store"
    (blobs) and "record" (the database rows)."""
    stages = ctx.metrics.stage_cpu
    errors: list[BaseException | None] = [None] * len(new)
    for index, item in enumerate(new):
        try:
            with stages.stage("store"):
                _store_blobs(ctx, item)
        except Exception as error:  # noqa: BLE001 - this item's own failure, handed to its writer
            errors[index] = error
    stored = [index for index, error in enumerate(errors) if error is None]
    if not stored:
        return errors
    try:
        with stages.stage("record"), ctx.sessions() as session:
            records.add_all(session, [new[index].record for index in stored],
                            also=[new[index].event.row() for index in stored])
    except BaseException:
        # No record names the blobs just stored: do not leave a medical image nobody can delete.
        for index in stored:
            _forget_quietly(ctx, new[index].record.image_sha256, new[index].record.heatmap_sha256)
        raise
    for index in stored:
        item = new[index]
        with stages.stage("store"):
            _after_commit(ctx, item.record, item.upload, item.heatmap)
    return errors


def _store_blobs(ctx: GatewayContext, item: NewRecord) -> None:
    """Store the upload, then the heatmap; when the heatmap cannot be, the upload is forgotten again."""
    item.record.image_sha256 = ctx.uploads.put(item.upload)
    if item.heatmap is None:
        return
    try:
        ctx.heatmaps.put(item.heatmap)
    except BaseException:
        _forget_quietly(ctx, item.record.image_sha256, None)
        raise


def keep_retried_record(
    ctx: GatewayContext, session: Session, record: Diagnosis, heatmap: bytes | None, event: audit.Entry
) -> Diagnosis | None:
    """Store a retry's heatmap, then save its record with `event` (its audit event); None, and the
    heatmap forgotten, when the record is gone or no longer failed (a delete or another retry came
    first while the model ran: saving would bring a deleted record back). Blocking."""
    if heatmap is not None:
        ctx.heatmaps.put(heatmap)
    saved = records.save_retry(session, record, also=[event.row()])
    if saved is None:
        forget_blobs(ctx, None, record.heatmap_sha256)
    else:
        _after_commit(ctx, saved, None, heatmap)
    return saved


def delete_record(ctx: GatewayContext, session: Session, record_id: str, event: audit.Entry) -> bool:
    """Delete the record with `event` (its audit event), then its blobs that no record names any
    more; False when a concurrent delete came first (and forgets the blobs). Blocking."""
    blobs = records.delete(session, record_id, also=[event.row()])
    if blobs is not None:
        _forget_quietly(ctx, *blobs)
    return blobs is not None


def _keep_blobs_after_commit(ctx: GatewayContext, record: Diagnosis, data: bytes | None,
                             heatmap: bytes | None) -> None:
    """The writer's half of the blob protocol (gateway/storage.py): once the record is committed, put
    back a blob that a concurrent delete of another record with the same bytes removed meanwhile."""
    if data is not None and not ctx.uploads.exists(record.image_sha256):
        ctx.uploads.put(data)
    if heatmap is not None and record.heatmap_sha256 and not ctx.heatmaps.exists(record.heatmap_sha256):
        ctx.heatmaps.put(heatmap)


def _after_commit(ctx: GatewayContext, record: Diagnosis, data: bytes | None, heatmap: bytes | None) -> None:
    """_keep_blobs_after_commit, whose failure does not undo a committed record: answering 503 ("nothing
    was kept") would be untrue, and the client's retry would make a second record. What failed is
    only the check (the store did not answer) or, rarer, putting back a blob a concurrent delete had
    just removed; then the record's image is gone (410), which the log names."""
    try:
        _keep_blobs_after_commit(ctx, record, data, heatmap)
    except Exception:
        log.exception("diagnosis %s is kept, but whether its blobs image=%s heatmap=%s are still stored "
                      "could not be checked or put right",
                      record.id, record.image_sha256, record.heatmap_sha256)


def forget_blobs(ctx: GatewayContext, image_sha: str | None, heatmap_sha: str | None,
                 sweep: bool = False) -> None:
    """Delete stored blobs that no record names any more (the deleter's half of the blob protocol).
    With `sweep` (a retry: an earlier try failed part-way), first the copies it may have left aside.
    Blocking."""
    for store, digest, in_use in (
        (ctx.uploads, image_sha, records.image_in_use),
        (ctx.heatmaps, heatmap_sha, records.heatmap_in_use),
    ):
        if not digest:
            continue

        def named(digest: str = digest, in_use: Callable[[Session, str], bool] = in_use) -> bool:
            with ctx.sessions() as session:
                return in_use(session, digest)

        if sweep and store.sweep_asides(digest, named):
            log.info("removed the copies of blob %s an interrupted delete left aside", digest)
        if not named():
            store.delete_unused(digest, named)


def _forget_quietly(ctx: GatewayContext, image_sha: str | None, heatmap_sha: str | None) -> None:
    """forget_blobs where its failure must not hide what the caller is handling (the record is already
    gone, or never came to be): logged, and tried again in the background (forget_pending_periodically)
    until the records database answers, so no blob is left that no record names."""
    try:
        forget_blobs(ctx, image_sha, heatmap_sha)
    except Exception:
        log.exception("could not delete unused blobs image=%s heatmap=%s; trying again in %.0f s",
                      image_sha, heatmap_sha, ctx.settings.blob_forget_retry_s)
        ctx.pending_forgets.add(image_sha, heatmap_sha)


def forget_pending(ctx: GatewayContext) -> int:
    """Forget the blobs _forget_quietly could not (the database was unreachable); those that fail again
    stay pending. Safe at any time: forget_blobs asks the database whether a record names each blob,
    through the blob protocol (gateway/storage.py). How many stay pending. Blocking."""
    for image_sha, heatmap_sha in ctx.pending_forgets.take():
        try:
            forget_blobs(ctx, image_sha, heatmap_sha, sweep=True)
        except Exception as error:  # noqa: BLE001 - still unreachable: next time
            log.warning("still cannot delete unused blobs image=%s heatmap=%s: %s", image_sha, heatmap_sha, error)
            ctx.pending_forgets.add(image_sha, heatmap_sha)
    return len(ctx.pending_forgets)


async def forget_pending_periodically(ctx: GatewayContext) -> None:
    """forget_pending every `blob_forget_retry_s` until cancelled."""
    while True:
        await anyio.sleep(ctx.settings.blob_forget_retry_s)
        if len(ctx.pending_forgets):
            await run_in_threadpool(forget_pending, ctx)


def store_unavailable(error: StoreUnavailable) -> ApiError:
    """503 for a blob store that cannot be written (disk full, read-only): nothing was kept, and the
    request succeeds once the store has room again."""
    log.error("blob store cannot be written: %s", error)
    return ApiError(503, f"The image storage cannot keep anything right now ({error}); nothing was kept, "
                         "try again shortly.", headers={"Retry-After": "30"})
