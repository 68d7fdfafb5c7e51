"""Per-job leases: of all the controllers pointed at one root, only the holder of a job's lease acts
on the job (creates, launches, stops, publishes); the others only read it.

A lease is a chain of small objects, `jobs/<job_id>/lease-<n>.json` (n zero-padded), each created
with the store's conditional create (S3 `If-None-Match: *`, a hard link on a folder), so exactly
one controller creates each number. The lease belongs to whoever created the highest number, until
its `expires_at`:

- take: with no lease, create number 0; when the highest has expired, was released, or belongs
  to a dead process of this very machine, create the next number;
- renew: the holder creates the next number itself, once less than half the TTL is left (a
  renewal every TTL/2 seconds, not every pass), then deletes the older numbers;
- confirm: after creating number n the creator lists the chain again and holds the lease only if
  n is still the highest (a controller with an old listing could create a number that was deleted
  since, but it then sees the higher one and backs off);
- release: on a clean exit the holder creates the next number marked released, so the next
  controller need not wait for the expiry.

Clocks: a holder acts only while at least LEASE_MARGIN_S of its lease is left by its own clock,
and a lease is taken over only once expired by the taker's clock, so clocks may disagree by up to
the margin. The actions themselves are also safe against a second actor (trial specs are
conditional creates, launches adopt a running trial), so a lease lost mid-action costs nothing.
"""
from __future__ import annotations

import os
import socket
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable

from automl_images.core.layout import Root
from automl_images.core.storage import InvalidJSON, json_bytes

LEASE_TTL_S = 120.0      # a dead controller's jobs wait this long for another (unless on the same machine)
LEASE_MARGIN_S = 20.0    # the most clocks may disagree; a holder stops acting this long before expiry


def _this_machine() -> str:
    """This machine and process namespace: a lease of the same machine names a pid we can ask
    about. The hostname, the boot id and the pid namespace together: containers on one host share
    the boot id but not the hostname or the pid namespace."""
    parts = [socket.gethostname()]
    for path in ("/proc/sys/kernel/random/boot_id",):
        try:
            with open(path) as f:
                parts.append(f.read().strip())
        except OSError:
            parts.append("?")
    try:
        parts.append(os.readlink("/proc/self/ns/pid"))
    except OSError:
        parts.append("?")
    return "/".join(parts)


def _process_start(pid: int) -> str | None:
    """When process `pid` started (clock ticks since boot), to tell a reused pid apart; None when
    the process does not exist or the system does not say."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(pid: int, started: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    if started is not None and os.path.exists("/proc/self/stat"):
        return _process_start(pid) == started
    return True


@dataclass
class _Held:
    number: int
    expires_at: float


class Leases:
    """The leases this controller holds, on the jobs of one root."""

    def __init__(self, root: Root, owner: str | None = None, ttl_s: float = LEASE_TTL_S,
                 clock: Callable[[], float] = time.time, margin_s: float = LEASE_MARGIN_S):
        if ttl_s <= 2 * margin_s:
            raise ValueError(f"a lease's TTL ({ttl_s:g}s) must exceed twice its margin ({margin_s:g}s)")
        self.root = root
        self.owner = owner or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.ttl_s = ttl_s
        self.margin_s = margin_s
        self.clock = clock
        self._held: dict[str, _Held] = {}
        # Who this controller is, as its lease records say: another controller of this machine
        # takes a lease over at once when that process is gone.
        self.machine = _this_machine()
        self.process_started = _process_start(os.getpid())
        self._seen: dict[tuple[str, int], dict[str, Any]] = {}  # lease objects never change: read once

    def holds(self, job_id: str) -> bool:
        """Whether this controller may act on the job now: it holds the lease with at least the
        margin left. No request."""
        held = self._held.get(job_id)
        return held is not None and self.clock() < held.expires_at - self.margin_s

    def acquire(self, job_id: str) -> bool:
        """Take or renew the job's lease as needed; True when this controller holds it afterwards.
        No request while more than half the TTL is left."""
        held = self._held.get(job_id)
        now = self.clock()
        if held is not None and now < held.expires_at - self.ttl_s / 2:
            return True
        numbers = self.root.lease_numbers(job_id)
        top = numbers[-1] if numbers else None
        if top is None:
            return self._create(job_id, 0)
        if held is not None and held.number == top:
            return self._create(job_id, top + 1)
        current = self._read(job_id, top)
        if current is None or current.get("owner") == self.owner or self._free(current, now):
            return self._create(job_id, top + 1)
        self._held.pop(job_id, None)
        return False

    def holder(self, job_id: str) -> dict[str, Any] | None:
        """The current lease object of the job (for people: who acts on it, until when)."""
        numbers = self.root.lease_numbers(job_id)
        return self._read(job_id, numbers[-1]) if numbers else None

    def release(self, job_id: str) -> None:
        """Hand the lease back at once (a clean exit, or the job ended), so the next controller need
        not wait: the next number, marked released, then the older numbers deleted, which leaves one
        lease object saying who released it and when."""
        held = self._held.pop(job_id, None)
        if held is None:
            return
        record = self._record(held.number + 1, released=True)
        if self.root.storage.create_exclusive(self.root.lease(job_id, held.number + 1), json_bytes(record)):
            for old in self.root.lease_numbers(job_id):
                if old <= held.number:
                    self.root.storage.delete(self.root.lease(job_id, old))
                    self._seen.pop((job_id, old), None)

    def release_all(self) -> None:
        for job_id in list(self._held):
            try:
                self.release(job_id)
            except Exception:  # noqa: BLE001 - an exit must not fail over a lease; it expires anyway
                self._held.pop(job_id, None)


    # -- internals -------------------------------------------------------------------------------
    def _free(self, lease: dict[str, Any], now: float) -> bool:
        if lease.get("released") or now >= float(lease.get("expires_at", 0)):
            return True
        # A controller of this machine that died (killed, crashed): no need to wait for the expiry.
        if lease.get("machine") == self.machine and isinstance(lease.get("pid"), int):
            return not _alive(lease["pid"], lease.get("process_started"))
        return False

    def _record(self, number: int, released: bool = False) -> dict[str, Any]:
        now = self.clock()
        return {"owner": self.owner, "number": number, "machine": self.machine, "pid": os.getpid(),
                "process_started": self.process_started, "taken_at": now,
                "expires_at": now if released else now + self.ttl_s, "released": released}

    def _create(self, job_id: str, number: int) -> bool:
        record = self._record(number)
        if not self.root.storage.create_exclusive(self.root.lease(job_id, number), json_bytes(record)):
            self._held.pop(job_id, None)
            return False
        numbers = self.root.lease_numbers(job_id)
        if not numbers or numbers[-1] != number:  # an older number re-created from a stale listing
            self._held.pop(job_id, None)
            return False
        self._seen[(job_id, number)] = record
        self._held[job_id] = _Held(number, record["expires_at"])
        for old in numbers[:-1]:
            self.root.storage.delete(self.root.lease(job_id, old))
            self._seen.pop((job_id, old), None)
        return True

    def _read(self, job_id: str, number: int) -> dict[str, Any] | None:
        """The lease object; None when it is gone, or torn (a lease that says nothing holds nothing:
        the next number is taken)."""
        if (job_id, number) not in self._seen:
            try:
                record = self.root.storage.read_json(self.root.lease(job_id, number))
            except InvalidJSON:
                return None
            if not isinstance(record, dict):
                return None
            self._seen[(job_id, number)] = record
        return self._seen[(job_id, number)]
