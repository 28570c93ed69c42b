# -*- coding: utf-8 -*-
# Copyright: contributors to consistent.backup
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""The lease between a copy and the on-host guard: the file names both sides use, and the copy's side (``Lease``).

This is a private module_utils file of consistent.backup: it is not part of the collection's
public API and may change without notice.

The contract, in the guard's directory (``_guard.GuardDir``): the copy renews the mtime of LEASE_NAME (at most once
per LEASE_RENEW_INTERVAL) while it makes progress; the guard writes FIRED_NAME before it releases the database
itself, and records what it did in STATE_NAME. ``_guard`` takes these names from here, so the two sides cannot drift.
"""

from __future__ import annotations

import os
import time
import typing as t

from ansible_collections.consistent.backup.plugins.module_utils._copy_plan import CopyError

# The copy renews this file's mtime while it makes progress (aligned_copy's lease_file option).
LEASE_NAME = "lease"
# Written by the guard before it runs post: a copy that still runs must stop, its data is not consistent.
FIRED_NAME = "fired"
# What the guard did, where the next run and a check-mode audit report it.
STATE_NAME = "state.json"
LEASE_RENEW_INTERVAL = 1.0
LEASE_RELEASED_MESSAGE = "the guard released the database (see %s): this copy is not consistent; run the backup again"


class Lease:
    """The progress hook of a copy watched by the on-host guard (the ``lease_file`` option of aligned_copy).

    Each call renews the lease (the mtime of ``lease_file``) at most once per LEASE_RENEW_INTERVAL and fails
    the copy, not retryable, once the lease file is gone or FIRED_NAME is next to it: the guard then
    released the database (or is releasing it), so the files being copied are no longer a consistent backup.
    """

    def __init__(self, lease_file: str, clock: t.Callable[[], float] = time.monotonic) -> None:
        self.lease_file = lease_file
        self.directory = os.path.dirname(lease_file) or "."
        self.fired_path = os.path.join(self.directory, FIRED_NAME)
        self.state_path = os.path.join(self.directory, STATE_NAME)
        self.clock = clock
        self.renewed_at = None  # type: t.Optional[float]
        self.renewals = 0

    def released(self, why: str = "") -> CopyError:
        message = LEASE_RELEASED_MESSAGE % self.state_path
        return CopyError(("%s: %s" % (why, message)) if why else message, retryable=False)

    def check(self) -> None:
        """Fail when the guard fired or the lease file is gone; renew the lease when it is due."""
        if os.path.lexists(self.fired_path):
            raise self.released()
        now = self.clock()
        if self.renewed_at is not None and now - self.renewed_at < LEASE_RENEW_INTERVAL:
            if not os.path.lexists(self.lease_file):
                raise self.released("lease file %s is missing" % self.lease_file)
            return
        try:
            os.utime(self.lease_file)
        except FileNotFoundError:
            raise self.released("lease file %s is missing" % self.lease_file)
        except OSError as exc:
            raise CopyError("cannot renew lease file %s: [Errno %s] %s; the guard would release the database under the copy; "
                            "check the guard's directory %s" % (self.lease_file, exc.errno, exc.strerror, self.directory),
                            retryable=False)
        self.renewed_at = now
        self.renewals += 1

    def __call__(self, bytes_done: int) -> None:
        self.check()
