"""Leases that let one request at a time write an upload, whichever node of a deployment serves it.

The lease lives in the upload's database row: the owner's id and an expiry time. A request takes it with one
conditional UPDATE and renews it while it streams, so a lease outlives its holder by at most
`LEASE_SECONDS`. A holder that was killed on this machine is recognized at once: the owner id names the
machine's boot, and the process id, which no longer runs.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from functools import cache

from crpe.errors import RangeInvalid
from crpe.metadata.store import MetadataStore, Upload

LEASE_SECONDS = 60
# A writer renews when this much of the lease has passed, and never writes on a lease older than that. So at
# least LEASE_SECONDS - RENEW_AFTER_SECONDS are left for the write in progress.
RENEW_AFTER_SECONDS = 15


@cache
def node_id() -> str:
    """Return an id shared by the crpe processes of this boot that see each other's process ids.

    The PID namespace is part of it: containers on one host share the boot id, but a process id of one
    container means nothing in another.
    """
    try:
        with open("/proc/sys/kernel/random/boot_id") as file:
            boot = file.read().strip()
        pid_namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        # Without these, dead local holders are recognized only when their lease expires.
        boot, pid_namespace = uuid.uuid4().hex, 0
    return f"{socket.gethostname()[:40]}:{boot[:36]}:{pid_namespace}"


def new_owner() -> str:
    return f"{node_id()}/{os.getpid()}/{uuid.uuid4().hex[:16]}"


def holder_is_dead(owner: str) -> bool:
    """Return whether `owner` is a process of this machine's boot that no longer runs."""
    parts = owner.split("/")
    if len(parts) != 3 or parts[0] != node_id() or not parts[1].isdigit():
        return False
    try:
        with open(f"/proc/{int(parts[1])}/stat") as file:
            # The state follows the parenthesized command name. A zombie (Z) or dead (X) process writes nothing.
            state = file.read().rpartition(")")[2].split()[0]
    except FileNotFoundError:
        return True
    except (OSError, IndexError):
        return False
    return state in ("Z", "X")


class Lease:
    """The right of one request to write one upload."""

    def __init__(self, store: MetadataStore, upload_id: str, owner: str) -> None:
        self.store = store
        self.upload_id = upload_id
        self.owner = owner
        self.renewed_at = time.monotonic()

    @classmethod
    def claim(cls, store: MetadataStore, upload_id: str, repository_id: int) -> tuple[Lease, Upload] | None:
        """Take the upload's lease; return None if there is no such upload, raise 416 if another request writes it."""
        owner = new_owner()
        upload, claimed = store.claim_upload(upload_id, repository_id, owner, expiry())
        if upload is not None and not claimed and upload.lease_owner and holder_is_dead(upload.lease_owner):
            upload, claimed = store.claim_upload(upload_id, repository_id, owner, expiry(),
                                                 replacing=upload.lease_owner)
        if upload is None:
            return None
        if not claimed:
            raise RangeInvalid("another request is writing to this upload; send chunks one at a time")
        return cls(store, upload_id, owner), upload

    def keep(self) -> None:
        """Renew the lease when it is due, before more bytes are written; raise 416 if it was lost."""
        if time.monotonic() - self.renewed_at < RENEW_AFTER_SECONDS:
            return
        if not self.store.renew_upload_lease(self.upload_id, self.owner, expiry()):
            raise RangeInvalid("this request stalled and another request took over the upload; check the "
                               "upload's status and resend from the offset it reports")
        self.renewed_at = time.monotonic()

    def release(self) -> None:
        self.store.release_upload(self.upload_id, self.owner)


def expiry() -> int:
    """Return the expiry, in Unix seconds, of a lease taken or renewed now."""
    return int(time.time()) + LEASE_SECONDS
