"""Online garbage collection: abandoned uploads, unreferenced blob links, then unlinked blob files.

It runs while the registry serves. Everything younger than the grace period stays, so a push in flight
keeps its uploads and blob links until its manifest arrives. Two guards close the races with pushes. A
manifest PUT re-checks its blob links inside a write transaction that cannot interleave with this
collector's deletion of that instance's links. A blob file first moves to a trash folder. It comes back if a
push recorded the blob again in the meantime, and pushes place the file again after recording it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from crpe.metadata.store import MetadataStore, now
from crpe.storage import BlobStore

log = logging.getLogger("crpe.gc")

DEFAULT_GRACE_SECONDS = 24 * 3600
# A trashed blob older than this was left by a collector that died between moving it and checking it.
TRASH_LEFTOVER_SECONDS = 600


@dataclass
class Report:
    dry_run: bool
    uploads: int = 0
    upload_bytes: int = 0
    untagged_manifests: int = 0
    links: int = 0
    blobs: int = 0
    blob_bytes: int = 0

    def view(self) -> dict[str, object]:
        return {"dry_run": self.dry_run, "uploads": self.uploads, "upload_bytes": self.upload_bytes,
                "untagged_manifests": self.untagged_manifests, "links": self.links, "blobs": self.blobs,
                "blob_bytes": self.blob_bytes, "bytes": self.upload_bytes + self.blob_bytes}


def collect(store: MetadataStore, blob_stores: dict[str, BlobStore], grace_seconds: int,
            dry_run: bool, delete_untagged: bool = False, trash_age_seconds: int = TRASH_LEFTOVER_SECONDS
            ) -> Report:
    report = Report(dry_run)
    cutoff = now() - grace_seconds
    _collect_uploads(store, blob_stores, cutoff, dry_run, report)
    for instance_id in store.gc_instance_ids():
        if delete_untagged:
            report.untagged_manifests += store.gc_untagged_manifests(instance_id, cutoff, dry_run)
        report.links += store.gc_unreferenced_links(instance_id, cutoff, dry_run)
    for region, digest, size in store.gc_unlinked_blobs(cutoff, after_link_collection=dry_run):
        blobs = blob_stores.get(region)
        if blobs is None:
            continue
        if dry_run:
            report.blobs += 1
            report.blob_bytes += size
            continue
        if not store.gc_delete_blob_row(region, digest, cutoff):
            continue  # A push linked or touched it since the listing.
        if _remove_blob(store, blobs, region, digest):
            report.blobs += 1
            report.blob_bytes += size
    for region, blobs in blob_stores.items():
        _collect_unrecorded_blobs(store, blobs, region, cutoff, dry_run, report)
        if not dry_run:
            _settle_trash_leftovers(store, blobs, region, now() - trash_age_seconds)
    log.info("garbage collection finished", extra={f"gc.{key}": value for key, value in report.view().items()})
    return report


def _remove_blob(store: MetadataStore, blobs: BlobStore, region: str, digest: str) -> bool:
    """Delete a blob whose row is gone, unless a push records it again meanwhile; return whether it went."""
    trash = blobs.trash_blob(digest)
    if trash is None:
        return False
    if store.blob_recorded(region, digest):
        blobs.restore_blob(trash, digest)  # A push recorded these bytes again in the meantime.
        return False
    blobs.purge_trash(trash)
    return True


def _collect_unrecorded_blobs(store: MetadataStore, blobs: BlobStore, region: str, cutoff: int, dry_run: bool,
                              report: Report) -> None:
    """Remove stored blobs that have no row: placed by a push that died before recording them."""
    recorded = store.recorded_digests(region)
    for digest, changed, size in list(blobs.list_blobs()):
        if digest in recorded or changed >= cutoff:
            continue
        if dry_run or _remove_blob(store, blobs, region, digest):
            report.blobs += 1
            report.blob_bytes += size


def _settle_trash_leftovers(store: MetadataStore, blobs: BlobStore, region: str, cutoff: int) -> None:
    """Finish what a dead collector left in the trash: restore recorded blobs, delete the rest."""
    for trash, digest, trashed in list(blobs.trash_leftovers()):
        if trashed >= cutoff:
            continue  # Possibly a collector still at work.
        if store.blob_recorded(region, digest):
            blobs.restore_blob(trash, digest)
            log.warning("restored a blob that an interrupted collection left in the trash",
                        extra={"blob.digest": digest, "region": region})
        else:
            blobs.purge_trash(trash)


def _collect_uploads(store: MetadataStore, blob_stores: dict[str, BlobStore], cutoff: int,
                     dry_run: bool, report: Report) -> None:
    known = set()
    for upload_id, region, size in store.gc_stale_uploads(cutoff):
        known.add(upload_id)
        report.uploads += 1
        report.upload_bytes += size
        if not dry_run:
            store.delete_upload(upload_id)
            if region in blob_stores:
                blob_stores[region].delete_upload_data(upload_id)
    # Upload data without a row: left by a crash between a blob's placement and the upload's deletion, or by a
    # request that died after writing a tail object or starting a multipart upload it never recorded.
    live = store.upload_ids()
    for blobs in blob_stores.values():
        for upload_id, changed, size in list(blobs.upload_leftovers()):
            if upload_id in live or upload_id in known or changed >= cutoff:
                continue
            report.uploads += 1
            report.upload_bytes += size
            if not dry_run:
                blobs.delete_upload_data(upload_id)
