# -*- coding: utf-8 -*-
# Copyright: contributors to consistent.backup
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""The page-aligned, checksumming copy engine behind ``consistent.backup.aligned_copy``.

This is a private module_utils file of consistent.backup: it is not part of the collection's
public API and may change without notice.

Why page-aligned: a database writes whole pages, but on Linux a read() is not atomic against a
concurrent write of the same page. Reading in whole multiples of the page size from page-aligned
offsets means a read never splits a page, so a torn page can only be one the database itself
repairs from its log (PostgreSQL full-page writes, Berkeley DB log records).

Shape:

* ``plan_copy(sources, create_dirs)`` walks the sources (sorted, exclusions applied, symlinks not
  followed) and returns a ``CopyPlan``: the items in copy order (phase 0 sources in list order,
  then phase 1, ...).
* ``plan_attempt(sources, create_dirs, set_path, run_id)`` is ``plan_copy`` for one attempt of a
  retried copy: the first attempt's list is recorded in ``<set>/.copy-plan.json`` by ``run_copy``,
  and a later attempt of the same request and run copies that list again (plus files that appeared
  since), so a file that vanished between attempts fails every attempt instead of being forgotten.
* ``summarize_plan(plan, set_path)`` answers "what would a copy do?" for check mode;
  ``check_free_space`` compares its bytes to write with the destination's free space.
* ``run_copy(plan, dest, backup_id, ...)`` copies into ``<dest>/<backup_id>/data/``, writes the
  manifest through ``_manifest`` and returns a ``CopyResult``. A file whose size or mtime moved
  while it was read, or that gave more or fewer bytes than its size at open, is a change: it fails
  the copy (``changes="fail"``) or is recorded as a warning (``changes="warn"``, for engines whose
  recovery repairs such changes from their log).
* ``Lease`` is the progress hook of a copy watched by the on-host guard: it renews the lease file
  and stops the copy once the guard has released the database.

How a copy runs (``_Copier``): the calling thread walks the plan in order, creates directories and
symlinks, and opens each source file (so sources are opened in plan order); ``COPY_WORKERS`` workers
take the open files and copy them beside each other. A file that fits in a worker's page-aligned
buffer is read (each request exactly ``read_size`` bytes), hashed and written by that worker; a
larger one goes through the ring: the worker reads, a hashing thread feeds SHA-256 and a writing
thread writes the same buffer, so hashing overlaps the I/O. hashlib, preadv and os.write release
the GIL, so both cores work. Memory is ``(ring buffers + workers) * read_size`` whatever the sizes
and the number of files.

Where the files go is a sink: the ``DirectorySink`` (the default), or with ``run_copy(tar=TarSpec(...))`` one tar
stream of fixed-size records on a tape (``_tar_sink``; ``_copy_to_tar`` below feeds it in plan order, one file at a
time, because a stream has one position). For the directory sink: a file is
written under a temporary name, gets its owner, mode and mtime, has its writeback started and is
renamed. Durability is batched: a barrier (one syncfs(2) per filesystem, else an fsync of every file
and of every directory that gained a name) makes everything committed so far durable, and nothing
vouches for a file before its barrier: a later phase is written only after the barrier that ends the
earlier phases (pg_control after the data files, logs after a database's data), the manifest only
after the last barrier, and the resume journal ``<set>/.copy-journal`` lists a file only after the
barrier that covered it. A copy killed outright leaves no manifest (nor COMPLETE, which backup_set
writes later); the next run takes the journal's entries as known, skips those files when the source
still hashes the same (re-read, not rewritten), sweeps the killed run's temporary files and removes
the journal once the manifest is written.
"""

from __future__ import annotations

import ctypes
import dataclasses
import errno
import fnmatch
import hashlib
import itertools
import json
import mmap
import os
import queue
import re
import stat
import threading
import time
import typing as t
from dataclasses import dataclass, field

from ansible_collections.consistent.backup.plugins.module_utils._fsutil import atomic_write, fsync_dir
from ansible_collections.consistent.backup.plugins.module_utils._layout import COMPLETE_NAME, DATA_DIR, InvalidBackupId, check_backup_id, utc_iso
from ansible_collections.consistent.backup.plugins.module_utils._layout import set_path as layout_set_path
from ansible_collections.consistent.backup.plugins.module_utils import _manifest
from ansible_collections.consistent.backup.plugins.module_utils import _tar_sink
from ansible_collections.consistent.backup.plugins.module_utils._tape import TapeError, TapeOps, default_ops, explain_errno

DEFAULT_BLOCK_SIZE = 8192
DEFAULT_READ_SIZE = 1024 * 1024
# Buffers in the ring: one being read, one being hashed and written, spares to absorb jitter.
RING_BUFFERS = 4
# Above this ring size fewer buffers are used (never fewer than two) to keep memory bounded.
RING_MEMORY_LIMIT = 64 * 1024 * 1024
# The writer asks the kernel to start writing back every WRITEBACK_WINDOW bytes, so the final
# fsync waits for the last window only instead of the whole file.
WRITEBACK_WINDOW = 8 * 1024 * 1024
COMPLETE_MARKER = COMPLETE_NAME  # written by backup_set when every phase succeeded; a set holding it is never copied into
# The first attempt's list of a retried copy, in the set directory (never in data/); removed on success.
PLAN_NAME = ".copy-plan.json"
PLAN_FORMAT = 1

# Page sizes: a multiple of 512 (the sector size O_DIRECT aligns to), not necessarily a power of two,
# because Btrieve 6 files use 1536, 2560, 3072 and 3584 byte pages; at most 1 MiB, far above any database page.
BLOCK_SIZE_UNIT = 512
BLOCK_SIZE_MAX = 1024 * 1024
BLOCK_SIZE_RULE = "a multiple of %d from %d to %d bytes" % (BLOCK_SIZE_UNIT, BLOCK_SIZE_UNIT, BLOCK_SIZE_MAX)

# What a change of a source while it is read does: fail the copy, or record it as a warning.
CHANGES_FAIL = "fail"
CHANGES_WARN = "warn"
CHANGES_CHOICES = (CHANGES_FAIL, CHANGES_WARN)
DEFAULT_FREE_SPACE_MARGIN = 10

# The progress hook is called at least this often (seconds) while the copy makes progress; inside one file
# the clock is looked at every PROGRESS_EVERY_READS reads, so the hot loop pays one comparison per read.
PROGRESS_INTERVAL = 0.5
PROGRESS_EVERY_READS = 8

# The lease contract with the on-host guard (plugins/module_utils/_guard.py): the copy renews the mtime of the
# lease file (at most once per second) while it makes progress; the guard writes LEASE_FIRED_NAME next to
# the lease file before it releases the database itself, and records what it did in LEASE_STATE_NAME there.
LEASE_FIRED_NAME = "fired"
LEASE_STATE_NAME = "state.json"
LEASE_RENEW_INTERVAL = 1.0
LEASE_RELEASED_MESSAGE = "the guard released the database (see %s): this copy is not consistent; run the backup again"

# Errors a retry cannot fix: the same request would meet them again.
_PERMANENT_ERRNOS = frozenset((errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EDQUOT, errno.EROFS))

Reader = t.Callable[[int, memoryview, int], int]
Writer = t.Callable[[int, memoryview], int]
Opener = t.Callable[[str, int], int]
Progress = t.Callable[[int], None]


class CopyError(Exception):
    """A copy that cannot go on; the message names the object, what was found and what to do.

    ``retryable`` is False when the same call would fail the same way (invalid input, no space, permission
    denied, a file that vanished and may not, a released lease), so callers do not retry it. ``facts`` are
    return values the failure still has (for example ``changed_during_copy``).
    """

    def __init__(self, message: str, retryable: bool = True, facts: t.Optional[t.Dict[str, t.Any]] = None) -> None:
        super(CopyError, self).__init__(message)
        self.retryable = retryable
        self.facts = dict(facts or {})


def retryable_errno(exc: OSError) -> bool:
    """Whether a retry may get past this OSError (I/O errors may; permissions and a full medium do not)."""
    return exc.errno not in _PERMANENT_ERRNOS


class _DirectIORefused(Exception):
    """The filesystem refused an O_DIRECT read; the file is copied again without O_DIRECT."""


class _WriteFailed(Exception):
    """Wraps an OSError raised on the destination side, so it is reported as a write error."""

    def __init__(self, error: OSError) -> None:
        super(_WriteFailed, self).__init__(str(error))
        self.error = error


def default_reader(fd: int, buffer: memoryview, offset: int) -> int:
    """Read into ``buffer`` at ``offset``: one request of exactly ``len(buffer)`` bytes."""
    return os.preadv(fd, [buffer], offset)


def default_writer(fd: int, buffer: memoryview) -> int:
    """Write ``buffer`` (or its start) to ``fd``; returns the bytes written."""
    return os.write(fd, buffer)


def default_opener(path: str, flags: int) -> int:
    """Open a source file."""
    return os.open(path, flags)


# --------------------------------------------------------------------------------------------
# Requests and plans
# --------------------------------------------------------------------------------------------


@dataclass
class Source:
    """One entry of the module's ``sources`` option, validated."""

    path: str
    dest: str
    exclude: t.List[str] = field(default_factory=list)
    phase: int = 0
    allow_vanished: bool = False


@dataclass
class Item:
    """One thing to copy: a regular file, a directory or a symlink, as found by the walk."""

    kind: str  # "file", "dir" or "symlink"
    src: str
    rel: str  # path relative to data/
    phase: int
    allow_vanished: bool
    size: int = 0
    mtime_ns: int = 0
    atime_ns: int = 0
    mode: int = 0
    uid: int = -1
    gid: int = -1
    target: str = ""


@dataclass
class PlanKey:
    """Which request a recorded plan belongs to: the digest of the normalised sources and create_dirs, and the run."""

    request: str
    run_id: str = ""


@dataclass
class CopyPlan:
    """What a copy will do, in order. ``vanished`` lists paths already gone during the walk.

    ``key`` set (by ``plan_attempt``) makes ``run_copy`` record the list before it copies and remove the
    record once the copy succeeded; ``resumed`` says the list is a recorded first attempt's (plus new files).
    """

    items: t.List[Item] = field(default_factory=list)
    create_dirs: t.List[str] = field(default_factory=list)
    vanished: t.List[str] = field(default_factory=list)
    warnings: t.List[str] = field(default_factory=list)
    key: t.Optional[PlanKey] = None
    resumed: bool = False


@dataclass
class CopyResult:
    """What ``run_copy`` did; ``as_dict()`` gives the module's return values."""

    set_path: str
    manifest_path: str
    read_size: int
    block_size: int
    direct: bool
    files: int = 0
    copied: int = 0
    skipped_identical: int = 0
    bytes_copied: int = 0
    bytes_total: int = 0
    dirs_created: int = 0
    symlinks: int = 0
    vanished: t.List[str] = field(default_factory=list)
    seconds: float = 0.0
    phases: t.List[t.Dict[str, t.Any]] = field(default_factory=list)
    changed: bool = False
    manifest_written: bool = False
    warnings: t.List[str] = field(default_factory=list)
    changed_during_copy: t.List[t.Dict[str, t.Any]] = field(default_factory=list)
    tape: t.Dict[str, t.Any] = field(default_factory=dict)

    def as_dict(self) -> t.Dict[str, t.Any]:
        return {
            "tape": dict(self.tape),
            "set_path": self.set_path,
            "manifest_path": self.manifest_path,
            "files": self.files,
            "copied": self.copied,
            "skipped_identical": self.skipped_identical,
            "bytes_copied": self.bytes_copied,
            "bytes_total": self.bytes_total,
            "dirs_created": self.dirs_created,
            "symlinks": self.symlinks,
            "vanished": list(self.vanished),
            "seconds": round(self.seconds, 6),
            "read_size": self.read_size,
            "block_size": self.block_size,
            "direct": self.direct,
            "phases": [dict(p) for p in self.phases],
            "changed_during_copy": [dict(c) for c in self.changed_during_copy],
        }


def mode_string(mode: int) -> str:
    """Permission bits as the manifest stores them, e.g. ``0600``."""
    return "%04o" % stat.S_IMODE(mode)


def set_path_for(dest: str, backup_id: str) -> str:
    """The backup set directory of ``backup_id`` under ``dest`` for messages, without validation (``_layout.set_path``
    validates; ``validate_request`` and ``check_destination`` go through it)."""
    return os.path.join(dest, backup_id)


def _has_parent_reference(path: str) -> bool:
    return any(part == ".." for part in path.split("/"))


def validate_block_sizes(block_size: int, read_size: int) -> None:
    """Refuse a block size or read size that would break page alignment (not retryable)."""
    if block_size < BLOCK_SIZE_UNIT or block_size > BLOCK_SIZE_MAX or block_size % BLOCK_SIZE_UNIT:
        raise CopyError(
            "block_size must be the database page size, %s; found %d; give the page size of the database "
            "(PostgreSQL: 8192, see SHOW block_size; Berkeley DB: the environment's page size)" % (BLOCK_SIZE_RULE, block_size),
            retryable=False)
    if read_size <= 0 or read_size % block_size:
        raise CopyError(
            "read_size %d is not a positive multiple of block_size %d: every read must cover whole pages; "
            "choose read_size = N * %d (e.g. %d)" % (read_size, block_size, block_size, max(1, DEFAULT_READ_SIZE // block_size) * block_size),
            retryable=False)


def validate_changes(changes: str) -> None:
    """Refuse an unknown ``changes`` policy (not retryable)."""
    if changes not in CHANGES_CHOICES:
        raise CopyError("changes must be one of %s; found %r" % (", ".join(CHANGES_CHOICES), changes), retryable=False)


def normalize_sources(raw: t.Sequence[t.Dict[str, t.Any]]) -> t.List[Source]:
    """Validate the ``sources`` option and fill in defaults."""
    if not raw:
        raise CopyError("sources is empty: give at least one {path: /absolute/path} to copy", retryable=False)
    sources = []
    for index, entry in enumerate(raw):
        path = entry.get("path")
        if not path or not os.path.isabs(path):
            raise CopyError(
                "sources[%d].path must be an absolute path; found %r; write it from / (e.g. /var/lib/postgresql/15/main)" % (index, path),
                retryable=False)
        path = os.path.normpath(path)
        dest = entry.get("dest")
        if dest is None or dest == "":
            dest = path.lstrip("/") or "root"
        dest = str(dest)
        if os.path.isabs(dest) or _has_parent_reference(dest):
            raise CopyError(
                "sources[%d].dest must be a path relative to the set's data/ directory without '..'; found %r; "
                "write e.g. pgdata" % (index, dest), retryable=False)
        dest = os.path.normpath(dest)
        if dest in (".", ""):
            raise CopyError("sources[%d].dest must name a path inside data/; found %r; write e.g. pgdata" % (index, entry.get("dest")),
                            retryable=False)
        phase = entry.get("phase", 0)
        phase = 0 if phase is None else int(phase)
        if phase < 0:
            raise CopyError("sources[%d].phase must be 0 or more; found %d" % (index, phase), retryable=False)
        exclude = [str(p) for p in (entry.get("exclude") or [])]
        sources.append(Source(path=path, dest=dest, exclude=exclude, phase=phase, allow_vanished=bool(entry.get("allow_vanished", False))))
    return sources


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def validate_request(dest: str, backup_id: str, sources: t.Sequence[Source], create_dirs: t.Sequence[str] = ()) -> str:
    """Check the destination, the id and the sources against each other; return the set path.

    Everything refused here is refused before the database is touched (the roles run aligned_copy in check
    mode before pre) and is not retryable: the same request fails the same way.
    """
    if not dest or not os.path.isabs(dest):
        raise CopyError("dest must be an absolute path (the backup destination root); found %r" % (dest,), retryable=False)
    try:
        check_backup_id(backup_id)
    except InvalidBackupId as exc:
        raise CopyError(str(exc), retryable=False)
    for rel in create_dirs:
        if not rel or os.path.isabs(rel) or _has_parent_reference(rel):
            raise CopyError("create_dirs entry %r must be a path relative to data/ without '..'; write e.g. pgdata/pg_wal/archive_status" % (rel,),
                            retryable=False)
    real_dest = os.path.realpath(dest)
    real_set = os.path.join(real_dest, backup_id)
    for index, source in enumerate(sources):
        if not source.allow_vanished and not os.path.exists(source.path):
            raise CopyError(
                "sources[%d].path: source %s does not exist; check the path (is the database on this host?), or set "
                "allow_vanished: true for this source if it may be absent" % (index, source.path), retryable=False)
        real_source = os.path.realpath(source.path)
        if _inside(real_dest, real_source):
            raise CopyError(
                "backup destination %s (real path %s) is inside source %s: the copy would copy itself; "
                "choose a destination outside every source" % (dest, real_dest, source.path), retryable=False)
        if _inside(real_source, real_set):
            raise CopyError(
                "sources[%d].path %s is inside the backup set %s (dest %s, backup_id %s): the copy would copy itself; "
                "copy the database's files, not the set" % (index, source.path, real_set, dest, backup_id), retryable=False)
    return check_destination(dest, backup_id)


def check_destination(dest: str, backup_id: str) -> str:
    """The destination root exists and the set is not COMPLETE yet; return the set path.

    A missing root is refused rather than created: an unmounted medium would otherwise be
    filled on the root filesystem under its mount point.
    """
    if not os.path.isdir(dest):
        raise CopyError(
            "backup destination %s does not exist or is not a directory; mount the medium (consistent.backup.mount_check) "
            "or create the directory first" % dest, retryable=False)
    try:
        set_path = layout_set_path(dest, backup_id)
    except ValueError as exc:
        raise CopyError(str(exc), retryable=False)
    if os.path.exists(os.path.join(set_path, COMPLETE_MARKER)):
        raise CopyError(
            "backup set %s is already marked COMPLETE by an earlier run; choose a new backup_id or remove the set" % set_path,
            retryable=False)
    return set_path


# --------------------------------------------------------------------------------------------
# Walking
# --------------------------------------------------------------------------------------------


def is_excluded(rel: str, patterns: t.Sequence[str]) -> bool:
    """Whether ``rel`` (relative to its source root) matches one of the exclusion patterns.

    A pattern with a ``/`` is matched against the whole relative path (``*`` spans ``/``, so
    ``*/pgsql_tmp*`` matches at any depth); a pattern without one is also matched against the
    basename, so ``postmaster.pid`` excludes that name anywhere. A leading ``/`` anchors a pattern at
    the source root (``/postmaster.pid`` only at the top).
    """
    base = rel.rsplit("/", 1)[-1]
    for pattern in patterns:
        pattern = pattern.rstrip("/")
        if not pattern:
            continue
        if pattern.startswith("/"):
            if fnmatch.fnmatchcase(rel, pattern.lstrip("/")):
                return True
            continue
        if fnmatch.fnmatchcase(rel, pattern):
            return True
        if "/" not in pattern and fnmatch.fnmatchcase(base, pattern):
            return True
    return False


def _item_from_stat(kind: str, src: str, rel: str, source: Source, st: os.stat_result, target: str = "") -> Item:
    return Item(
        kind=kind, src=src, rel=rel, phase=source.phase, allow_vanished=source.allow_vanished,
        size=st.st_size if kind == "file" else (len(os.fsencode(target)) if kind == "symlink" else 0),
        mtime_ns=st.st_mtime_ns, atime_ns=st.st_atime_ns, mode=stat.S_IMODE(st.st_mode),
        uid=st.st_uid, gid=st.st_gid, target=target,
    )


class _Walker:
    def __init__(self, plan: CopyPlan) -> None:
        self.plan = plan

    def _gone(self, source: Source, path: str, rel: str, what: str) -> None:
        if source.allow_vanished:
            self.plan.vanished.append(rel)
            return
        raise CopyError(
            "%s %s vanished while the sources were listed; the source is changing under the copy: set allow_vanished: true "
            "for this source if files may disappear (e.g. dropped relations), or quiesce the database first" % (what, path),
            retryable=False)

    def walk_source(self, source: Source) -> None:
        try:
            st = os.stat(source.path)
        except FileNotFoundError:
            if source.allow_vanished:
                self.plan.vanished.append(source.dest)
                return
            raise CopyError(
                "source %s does not exist; check the path (is the database on this host?), or set allow_vanished: true "
                "for this source if it may be absent" % source.path, retryable=False)
        except OSError as exc:
            raise CopyError("cannot stat source %s: %s; check its permissions" % (source.path, exc.strerror), retryable=retryable_errno(exc))
        if stat.S_ISDIR(st.st_mode):
            self.plan.items.append(_item_from_stat("dir", source.path, source.dest, source, st))
            self._walk_dir(source, source.path, "")
        elif stat.S_ISREG(st.st_mode):
            if not is_excluded(os.path.basename(source.path), source.exclude):
                self.plan.items.append(_item_from_stat("file", source.path, source.dest, source, st))
        else:
            raise CopyError(
                "source %s is neither a regular file nor a directory (mode %s); name a file or a directory tree"
                % (source.path, stat.filemode(st.st_mode)), retryable=False)

    def _walk_dir(self, source: Source, directory: str, rel_dir: str) -> None:
        try:
            with os.scandir(directory) as iterator:
                entries = sorted(iterator, key=lambda e: e.name)
        except FileNotFoundError:
            self._gone(source, directory, self._dest_rel(source, rel_dir), "directory")
            return
        except OSError as exc:
            raise CopyError("cannot list directory %s: %s; check its permissions" % (directory, exc.strerror), retryable=retryable_errno(exc))
        for entry in entries:
            rel = entry.name if not rel_dir else rel_dir + "/" + entry.name
            if is_excluded(rel, source.exclude):
                continue
            dest_rel = self._dest_rel(source, rel)
            try:
                st = entry.stat(follow_symlinks=False)
                if stat.S_ISLNK(st.st_mode):
                    target = os.readlink(entry.path)
                    self.plan.items.append(_item_from_stat("symlink", entry.path, dest_rel, source, st, target))
                elif stat.S_ISDIR(st.st_mode):
                    self.plan.items.append(_item_from_stat("dir", entry.path, dest_rel, source, st))
                    self._walk_dir(source, entry.path, rel)
                elif stat.S_ISREG(st.st_mode):
                    self.plan.items.append(_item_from_stat("file", entry.path, dest_rel, source, st))
                else:
                    self.plan.warnings.append(
                        "skipped %s: a %s is not copied (only files, directories and symlinks are)" % (entry.path, stat.filemode(st.st_mode)[0])
                    )
            except FileNotFoundError:
                self._gone(source, entry.path, dest_rel, "file")
            except OSError as exc:
                raise CopyError("cannot read %s: %s; check its permissions" % (entry.path, exc.strerror), retryable=retryable_errno(exc))

    @staticmethod
    def _dest_rel(source: Source, rel: str) -> str:
        return source.dest if not rel else source.dest + "/" + rel


def plan_copy(sources: t.Sequence[Source], create_dirs: t.Sequence[str] = ()) -> CopyPlan:
    """Walk the sources and return the items in copy order.

    Order: every source of phase 0 in list order, each tree in sorted pre-order, then phase 1, ...
    That is how callers say "data files before logs" (Berkeley DB: a log copied after the data
    covers every change made during the data copy) or "global/pg_control strictly last"
    (PostgreSQL: the control file must be no newer than anything else in the copy).
    """
    plan = CopyPlan(create_dirs=[os.path.normpath(d) for d in create_dirs])
    walker = _Walker(plan)
    ordered = sorted(enumerate(sources), key=lambda pair: (pair[1].phase, pair[0]))
    for _index, source in ordered:
        walker.walk_source(source)
    return plan


# --------------------------------------------------------------------------------------------
# The first attempt's list
# --------------------------------------------------------------------------------------------


def request_digest(sources: t.Sequence[Source], create_dirs: t.Sequence[str] = ()) -> str:
    """SHA-256 of the normalised sources and create_dirs: what decides the list of a copy."""
    request = {"sources": [dataclasses.asdict(source) for source in sources],
               "create_dirs": [os.path.normpath(d) for d in create_dirs]}
    return hashlib.sha256(json.dumps(request, sort_keys=True).encode("utf-8")).hexdigest()


def plan_path(set_path: str) -> str:
    """Where the first attempt's list of the set's current copy is recorded."""
    return os.path.join(set_path, PLAN_NAME)


_ITEM_FIELDS = frozenset(f.name for f in dataclasses.fields(Item))


def load_recorded_plan(set_path: str, key: PlanKey) -> t.Optional[CopyPlan]:
    """The plan a first attempt of the same request and run recorded, or None (none, another request or run)."""
    path = plan_path(set_path)
    try:
        with open(path, "rb") as handle:
            data = json.loads(handle.read().decode("utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise CopyError("the recorded copy plan %s cannot be read (%s); remove it to list the sources again" % (path, exc),
                        retryable=False)
    if not isinstance(data, dict) or data.get("format") != PLAN_FORMAT:
        return None
    if data.get("request") != key.request or data.get("run_id", "") != key.run_id:
        return None
    try:
        items = [Item(**dict((k, v) for k, v in entry.items() if k in _ITEM_FIELDS)) for entry in data.get("items", [])]
    except (TypeError, AttributeError) as exc:
        raise CopyError("the recorded copy plan %s is not a plan this module wrote (%s); remove it to list the sources again"
                        % (path, exc), retryable=False)
    return CopyPlan(items=items, create_dirs=list(data.get("create_dirs", [])), vanished=list(data.get("vanished", [])), key=key)


def record_plan(plan: CopyPlan, set_path: str) -> None:
    """Write the plan's list to ``<set>/.copy-plan.json`` atomically, mode 0600 (it names the source files)."""
    if plan.key is None:
        return
    document = {"format": PLAN_FORMAT, "request": plan.key.request, "run_id": plan.key.run_id,
                "recorded": utc_iso(), "create_dirs": list(plan.create_dirs), "vanished": list(plan.vanished),
                "items": [dataclasses.asdict(item) for item in plan.items]}
    atomic_write(plan_path(set_path), (json.dumps(document, sort_keys=True) + "\n").encode("utf-8"), mode=0o600)


def discard_plan(set_path: str) -> bool:
    """Remove the recorded plan (the copy succeeded: the manifest is the truth now); True when one was removed."""
    try:
        os.unlink(plan_path(set_path))
    except FileNotFoundError:
        return False
    return True


def plan_attempt(sources: t.Sequence[Source], create_dirs: t.Sequence[str], set_path: str, run_id: str = "") -> CopyPlan:
    """The list one attempt of a retried copy must copy (read-only; ``run_copy`` records it).

    The first attempt walks the sources. A later attempt of the same request (same normalised sources and
    create_dirs) and the same ``run_id`` walks again and adds every item of the recorded list: files that
    appeared since are copied too (extra files do no harm), and a recorded file that is gone now fails at once,
    on every attempt, unless its source allows vanished files. A plan recorded by another request or run is
    ignored and replaced when this attempt copies.
    """
    key = PlanKey(request_digest(sources, create_dirs), run_id or "")
    plan = plan_copy(sources, create_dirs)
    plan.key = key
    recorded = load_recorded_plan(set_path, key)
    if recorded is None:
        return plan
    plan.resumed = True
    # A file listed again is held to what the first attempt listed: a file truncated between two attempts changed
    # during this copy, so the copy checks it against the first listing, not against a fresh one.
    first = dict((item.rel, item) for item in recorded.items)
    for item in plan.items:
        was = first.get(item.rel)
        if was is not None and was.kind == item.kind == "file":
            item.size, item.mtime_ns = was.size, was.mtime_ns
    listed = set(item.rel for item in plan.items)
    gone = []
    for item in recorded.items:
        if item.rel in listed:
            continue
        if os.path.lexists(item.src):
            plan.items.append(item)  # still there but no longer listed as it was (e.g. now a socket): the copy says why
        elif item.allow_vanished:
            if item.rel not in plan.vanished:
                plan.vanished.append(item.rel)
        else:
            gone.append(item)
    if gone:
        shown = ", ".join("%s %s" % (item.kind, item.src) for item in gone[:10])
        more = " and %d more" % (len(gone) - 10) if len(gone) > 10 else ""
        raise CopyError(
            "%s%s listed by the first attempt of this copy (recorded in %s) %s gone; a file that is not allowed to vanish "
            "must be in the copy, so every attempt fails: find out what removed it (is the database quiesced by pre?) and "
            "run the backup again, or set allow_vanished: true for its source if files may disappear"
            % (shown, more, plan_path(set_path), "is" if len(gone) == 1 else "are"), retryable=False)
    plan.items.sort(key=lambda item: item.phase)  # stable: recorded items join the end of their phase
    return plan


# --------------------------------------------------------------------------------------------
# Check mode
# --------------------------------------------------------------------------------------------


def _entry_matches_item(entry: t.Optional[t.Dict[str, t.Any]], item: Item) -> bool:
    """A manifest entry describes the same source file (size, mtime, mode) as ``item``."""
    if not entry or entry.get("type") != "file" or entry.get("size") != item.size:
        return False
    if entry.get("mode") != mode_string(item.mode):
        return False
    if "mtime_ns" in entry:
        return entry["mtime_ns"] == item.mtime_ns
    return entry.get("mtime") == item.mtime_ns / 1e9


def _target_has_size(path: str, size: int) -> bool:
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and st.st_size == size


def _phase_row(rows: t.Dict[int, t.Dict[str, t.Any]], phase: int, template: t.Dict[str, int]) -> t.Dict[str, t.Any]:
    if phase not in rows:
        row = {"phase": phase}
        row.update(template)
        rows[phase] = row
    return rows[phase]


def summarize_plan(plan: CopyPlan, set_path: str) -> t.Dict[str, t.Any]:
    """What ``run_copy`` would do, without writing anything (check mode).

    A file counts as identical when the set's manifest (or a killed run's journal) has it with the source's size, mtime and
    mode and the copy on the medium has that size. Unlike a real run, check mode does not re-read
    the source to compare checksums (an audit should not read a whole database), so a file changed
    without a new mtime is only caught by the real run.
    """
    try:
        known = _manifest.entries_by_path(_manifest.load_manifest(set_path))
    except ValueError as exc:
        raise CopyError(str(exc))
    known.update(load_journal(set_path)[1])  # what a killed run made durable is not written again either
    data_root = os.path.join(set_path, DATA_DIR)
    rows = {}  # type: t.Dict[int, t.Dict[str, t.Any]]
    template = {"files": 0, "bytes": 0, "dirs": 0, "symlinks": 0, "to_copy": 0, "bytes_to_copy": 0}
    summary = {"files": 0, "bytes": 0, "dirs": 0, "symlinks": 0, "to_copy": 0, "identical_files": 0,
               "dirs_to_create": 0, "symlinks_to_create": 0, "free_needed": 0}
    for item in plan.items:
        row = _phase_row(rows, item.phase, template)
        target = os.path.join(data_root, item.rel)
        if item.kind == "dir":
            summary["dirs"] += 1
            row["dirs"] += 1
            if not os.path.isdir(target) or os.path.islink(target):
                summary["dirs_to_create"] += 1
        elif item.kind == "symlink":
            summary["symlinks"] += 1
            row["symlinks"] += 1
            if not os.path.islink(target) or os.readlink(target) != item.target:
                summary["symlinks_to_create"] += 1
        else:
            summary["files"] += 1
            summary["bytes"] += item.size
            row["files"] += 1
            row["bytes"] += item.size
            if _entry_matches_item(known.get(item.rel), item) and _target_has_size(target, item.size):
                summary["identical_files"] += 1
            else:
                summary["to_copy"] += 1
                summary["free_needed"] += item.size
                row["to_copy"] += 1
                row["bytes_to_copy"] += item.size
    for rel in plan.create_dirs:
        summary["dirs"] += 1
        if not os.path.isdir(os.path.join(data_root, rel)):
            summary["dirs_to_create"] += 1
    summary["phases"] = [rows[p] for p in sorted(rows)]
    summary["vanished"] = list(plan.vanished)
    summary["changed"] = bool(summary["to_copy"] or summary["dirs_to_create"] or summary["symlinks_to_create"]
                              or not os.path.isdir(data_root))
    summary["resumed"] = plan.resumed
    return summary


def _human(count: int) -> str:
    value = float(count)
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return ("%d %s" % (count, unit)) if unit == "bytes" else ("%.1f %s" % (value, unit))
        value /= 1024
    return "%d bytes" % count  # not reached


def add_free_space(summary: t.Dict[str, t.Any], dest: str, margin: int = DEFAULT_FREE_SPACE_MARGIN) -> t.Dict[str, t.Any]:
    """Add ``free_required`` (bytes to write plus ``margin`` percent for growth), ``free_available`` and the margin.

    ``free_available`` is what an unprivileged writer may use (statvfs f_bavail): the blocks reserved for root
    are not counted on, so a copy run as root does not eat the root reserve of a shared filesystem.
    """
    if margin < 0:
        raise CopyError("free_space_margin must be a percentage of 0 or more; found %d" % margin, retryable=False)
    needed = int(summary.get("free_needed", 0))
    summary["free_space_margin"] = margin
    summary["free_required"] = needed + (needed * margin + 99) // 100
    try:
        st = os.statvfs(dest)
    except OSError as exc:
        raise CopyError("cannot read the free space of %s: [Errno %s] %s; check the medium" % (dest, exc.errno, exc.strerror),
                        retryable=retryable_errno(exc))
    summary["free_available"] = st.f_bavail * st.f_frsize
    return summary


def check_free_space(summary: t.Dict[str, t.Any], dest: str) -> None:
    """Refuse (not retryable) a copy whose bytes to write plus the margin do not fit the destination's free space."""
    required, available = summary["free_required"], summary["free_available"]
    if required > available:
        raise CopyError(
            "not enough free space on %s (dest) for the copy: it needs %s (%d bytes to write + %d%% free_space_margin "
            "for growth = %d bytes) but the filesystem has %s (%d bytes) free; free space on the medium or choose a larger "
            "one (dest), or lower free_space_margin if the sources cannot grow during the copy"
            % (dest, _human(required), summary["free_needed"], summary["free_space_margin"], required, _human(available), available),
            retryable=False)


# --------------------------------------------------------------------------------------------
# Streaming one file
# --------------------------------------------------------------------------------------------


class _Job:
    """One file going through the ring: its hash, its output fd and the first write error."""

    def __init__(self, out_fd: t.Optional[int]) -> None:
        self.out_fd = out_fd
        self.hasher = hashlib.sha256()
        self.error = None  # type: t.Optional[OSError]
        self.failure = None  # type: t.Optional[Exception]
        self.written = 0
        self.kicked = 0
        self.dropped = 0
        self.pending = 2 if out_fd is not None else 1
        self.done = threading.Event()
        self.lock = threading.Lock()

    def finish_side(self) -> None:
        with self.lock:
            self.pending -= 1
            if self.pending == 0:
                self.done.set()


class _Ring:
    """A fixed ring of page-aligned buffers with a hashing thread and a writing thread.

    The caller's thread reads; each filled buffer goes to both workers and comes back to the free
    pool once both are done with it. Memory is ``len(buffers) * read_size`` for any file size.
    """

    def __init__(self, read_size: int, reader: Reader, writer: Writer) -> None:
        self.read_size = read_size
        self.reader = reader
        self.writer = writer
        count = max(2, min(RING_BUFFERS, RING_MEMORY_LIMIT // read_size))
        # mmap gives page-aligned memory, which O_DIRECT needs; it is allocated once per run.
        self.buffers = [mmap.mmap(-1, read_size) for _slot in range(count)]
        self.views = [memoryview(b) for b in self.buffers]
        self.free = queue.Queue()  # type: queue.Queue
        for slot in range(count):
            self.free.put(slot)
        self.uses = [0] * count
        self.uses_lock = threading.Lock()
        self.hash_queue = queue.Queue()  # type: queue.Queue
        self.write_queue = queue.Queue()  # type: queue.Queue
        self.threads = [
            threading.Thread(target=self._hash_loop, name="aligned_copy-hash", daemon=True),
            threading.Thread(target=self._write_loop, name="aligned_copy-write", daemon=True),
        ]
        for thread in self.threads:
            thread.start()

    def close(self) -> None:
        self.hash_queue.put(None)
        self.write_queue.put(None)
        for thread in self.threads:
            thread.join()
        for view in self.views:
            view.release()
        for buffer in self.buffers:
            try:
                buffer.close()
            except BufferError:
                pass  # a slice is still referenced somewhere: the mapping goes when that reference does

    def _release(self, slot: int) -> None:
        with self.uses_lock:
            self.uses[slot] -= 1
            last = self.uses[slot] == 0
        if last:
            self.free.put(slot)

    def _hash_loop(self) -> None:
        while True:
            task = self.hash_queue.get()
            if task is None:
                return
            job, slot, length = task
            if slot is None:
                job.finish_side()
                continue
            try:
                job.hasher.update(self.views[slot][:length])
            except Exception as exc:  # pylint: disable=broad-exception-caught
                # Never let the worker die: the reader would wait for a free buffer forever.
                job.failure = exc.with_traceback(None)
            self._release(slot)

    def _write_loop(self) -> None:
        while True:
            task = self.write_queue.get()
            if task is None:
                return
            job, slot, length = task
            if slot is None:
                job.finish_side()
                continue
            if job.error is None:
                try:
                    self._write_all(job, self.views[slot][:length])
                except OSError as exc:
                    # Without its traceback: the frames would keep a slice of the buffer alive.
                    job.error = exc.with_traceback(None)
                except Exception as exc:  # pylint: disable=broad-exception-caught
                    job.failure = exc.with_traceback(None)
            self._release(slot)

    def _write_all(self, job: _Job, view: memoryview) -> None:
        done = 0
        while done < len(view):
            count = self.writer(job.out_fd, view[done:])
            if count <= 0:
                raise OSError(errno.EIO, "write returned %r" % count)
            done += count
        job.written += done
        if job.written - job.kicked >= WRITEBACK_WINDOW:
            self._start_writeback(job)

    @staticmethod
    def _start_writeback(job: _Job) -> None:
        # POSIX_FADV_DONTNEED on a range starts writeback of its dirty pages (without waiting) and
        # drops pages already written: the disk works while we hash and read, the final fsync has
        # little left to wait for, and a backup does not push the database's own pages out of cache.
        try:
            os.posix_fadvise(job.out_fd, job.dropped, job.written - job.dropped, os.POSIX_FADV_DONTNEED)
        except (OSError, AttributeError):
            pass
        job.dropped = job.kicked
        job.kicked = job.written

    def _read(self, fd: int, slot: int, offset: int, direct: bool) -> int:
        try:
            return self.reader(fd, self.views[slot], offset)
        except OSError as exc:
            if direct and offset == 0 and exc.errno == errno.EINVAL:
                raise _DirectIORefused()
            raise

    def stream(self, src_fd: int, out_fd: t.Optional[int], direct: bool = False,
               tick: t.Optional[t.Callable[[int], None]] = None) -> t.Tuple[str, int]:
        """Read ``src_fd`` to its end in ``read_size`` requests; hash it and write it to ``out_fd``.

        Returns (sha256 hex, bytes). ``out_fd`` None only hashes (the idempotence re-check).
        OSError from reading propagates; a write error is raised as ``_WriteFailed``. ``tick(bytes_read)``
        is called every PROGRESS_EVERY_READS reads of a long file (the progress hook; it may raise).
        """
        job = _Job(out_fd)
        offset = 0
        queued = False
        reads = 0
        try:
            while job.error is None and job.failure is None:
                slot = self.free.get()
                try:
                    length = self._read(src_fd, slot, offset, direct)
                except BaseException:
                    self.free.put(slot)
                    raise
                if length <= 0:
                    self.free.put(slot)
                    break
                offset += length
                if length < self.read_size and not queued:
                    # The whole file fit in one read (most files of a database directory): hash and
                    # write it here rather than paying two thread hand-offs.
                    self._inline(job, slot, length)
                    break
                queued = True
                with self.uses_lock:
                    self.uses[slot] = 2 if out_fd is not None else 1
                self.hash_queue.put((job, slot, length))
                if out_fd is not None:
                    self.write_queue.put((job, slot, length))
                if length < self.read_size:
                    break  # a short read is the end of the file
                if tick is not None:
                    reads += 1
                    if reads % PROGRESS_EVERY_READS == 0:
                        tick(offset)
        finally:
            if queued:
                self.hash_queue.put((job, None, 0))
                if out_fd is not None:
                    self.write_queue.put((job, None, 0))
                job.done.wait()
        if job.error is not None:
            raise _WriteFailed(job.error)
        if job.failure is not None:
            raise CopyError("the copy worker failed: %r; the partial copy was removed; run again" % job.failure)
        return job.hasher.hexdigest(), offset

    def _inline(self, job: _Job, slot: int, length: int) -> None:
        view = self.views[slot][:length]
        try:
            job.hasher.update(view)
            if job.out_fd is not None:
                try:
                    self._write_all(job, view)
                except OSError as exc:
                    job.error = exc.with_traceback(None)
                except Exception as exc:  # pylint: disable=broad-exception-caught
                    job.failure = exc.with_traceback(None)
        finally:
            view.release()
            self.free.put(slot)


# --------------------------------------------------------------------------------------------
# Running a copy
# --------------------------------------------------------------------------------------------


def _write_error_message(exc: OSError, src: str, target: str, dest_root: str) -> str:
    text = "[Errno %s] %s" % (exc.errno, exc.strerror or os.strerror(exc.errno or 0))
    if exc.errno == errno.ENOSPC:
        return ("no space left on %s: copying %s to %s failed: %s; the partial file was removed; "
                "free more space or choose a larger medium" % (dest_root, src, target, text))
    if exc.errno == errno.EDQUOT:
        return ("disk quota exceeded on %s: copying %s to %s failed: %s; the partial file was removed; "
                "raise the quota or choose another medium" % (dest_root, src, target, text))
    return ("writing %s (copy of %s) on %s failed: %s; the partial file was removed; check the medium "
            "(mounted read-write? healthy?) and run again" % (target, src, dest_root, text))


def _write_error(exc: OSError, src: str, target: str, dest_root: str) -> CopyError:
    return CopyError(_write_error_message(exc, src, target, dest_root), retryable=retryable_errno(exc))


def _change_record(item: Item, before: os.stat_result, after: os.stat_result, bytes_read: int) -> t.Optional[t.Dict[str, t.Any]]:
    """What changed in a source while it was read, or None: size or mtime moved, or the bytes read are not its size at open."""
    if bytes_read == before.st_size and after.st_size == before.st_size and after.st_mtime_ns == before.st_mtime_ns:
        return None
    return {"path": item.rel, "source": item.src, "size_before": before.st_size, "size_after": after.st_size,
            "bytes_read": bytes_read, "mtime_before": before.st_mtime_ns / 1e9, "mtime_after": after.st_mtime_ns / 1e9,
            "mtime_ns_before": before.st_mtime_ns, "mtime_ns_after": after.st_mtime_ns}


def describe_change(change: t.Dict[str, t.Any]) -> str:
    """``/src/f (size 268435456 -> 104857600 bytes, 104857600 bytes read of 268435456 at open, mtime ... -> ...)``."""
    parts = ["between the listing and its copy"] if change.get("since") == "listed" else []
    if change["size_after"] != change["size_before"]:
        parts.append("size %d -> %d bytes" % (change["size_before"], change["size_after"]))
    if change["bytes_read"] != change["size_before"]:
        parts.append("%d bytes read of %d at open" % (change["bytes_read"], change["size_before"]))
    if change["mtime_ns_after"] != change["mtime_ns_before"]:
        parts.append("mtime %s -> %s" % (_iso_ns(change["mtime_ns_before"]), _iso_ns(change["mtime_ns_after"])))
    return "%s (%s)" % (change["source"], ", ".join(parts))


def _iso_ns(ns: int) -> str:
    seconds, rest = divmod(ns, 1000000000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + ".%09dZ" % rest


# --------------------------------------------------------------------------------------------
# Durability: start writeback early, make a whole batch durable at once
# --------------------------------------------------------------------------------------------

# sync_file_range(2) flag: start writing the range's dirty pages back, without waiting.
SYNC_FILE_RANGE_WRITE = 2
# How a batch is made durable: "syncfs" (one syncfs(2) per destination filesystem, falling back to "fsync" where
# there is none) or "fsync" (fsync of every file of the batch, then of every directory that gained a name).
BARRIER_SYNCFS = "syncfs"
BARRIER_FSYNC = "fsync"
BARRIER = BARRIER_SYNCFS
# A batch of at most this many files is made durable file by file even where syncfs exists: syncfs also waits for every
# other writer's dirty data on the filesystem, an fsync only for ours, and a few fsyncs (one large file) cost no more.
BARRIER_FSYNC_FILES = 16

_LIBC_FUNCTIONS = {}  # type: t.Dict[str, t.Any]


def _libc_function(name: str, argtypes: t.Sequence[t.Any]) -> t.Any:
    """A libc function through ctypes (None where this libc has none); ctypes releases the GIL around the call."""
    if name not in _LIBC_FUNCTIONS:
        function = None
        try:
            # The running process's own symbols hold libc's (no ldconfig subprocess, as ctypes.util.find_library runs).
            libc = ctypes.CDLL(None, use_errno=True)
            function = getattr(libc, name, None)
        except (OSError, AttributeError, TypeError):
            function = None
        if function is not None:
            function.argtypes = list(argtypes)
            function.restype = ctypes.c_int
        _LIBC_FUNCTIONS[name] = function
    return _LIBC_FUNCTIONS[name]


def start_writeback(fd: int) -> None:
    """Ask the kernel to start writing ``fd``'s dirty pages to the disk now, without waiting for them.

    The batch's barrier then only waits for I/O that is already under way. An error here is not lost: the
    barrier's syncfs or fsync reports a failed writeback.
    """
    function = _libc_function("sync_file_range", (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint))
    if function is not None:
        function(fd, 0, 0, SYNC_FILE_RANGE_WRITE)


def syncfs(fd: int) -> bool:
    """syncfs(2) of the filesystem holding ``fd``: True once it is durable, False where there is no syncfs.

    Raises OSError when the filesystem reports a failed writeback (Linux 5.8 and later report it to syncfs).
    """
    if BARRIER != BARRIER_SYNCFS:
        return False
    function = _libc_function("syncfs", (ctypes.c_int,))
    if function is None:
        return False
    if function(fd) != 0:
        code = ctypes.get_errno()
        if code in (errno.ENOSYS, errno.EOPNOTSUPP):
            return False
        raise OSError(code, os.strerror(code))
    return True


# --------------------------------------------------------------------------------------------
# Sinks: where copied files go
# --------------------------------------------------------------------------------------------

# Files at least this large have their writeback started as soon as they are written (see DirectorySink.commit).
EARLY_WRITEBACK_MIN = 0

# Temporary names of files being written: hidden, marked as ours, swept by the next run after a crash.
TEMP_PATTERN = re.compile(r"^\..+\.cb-[0-9]+-[0-9]+\.partial\Z")


class SinkFile:
    """A file being written to a sink: ``fd`` receives the bytes; ``written``/``kicked``/``dropped`` are the ring's."""

    __slots__ = ("fd", "temp", "target", "written", "kicked", "dropped")

    def __init__(self, fd: int, temp: str, target: str) -> None:
        self.fd = fd
        self.temp = temp
        self.target = target
        self.written = 0
        self.kicked = 0
        self.dropped = 0


@dataclass
class FileMeta:
    """What a committed file gets besides its bytes (from the source's fstat at open)."""

    mode: int
    uid: int = -1
    gid: int = -1
    atime_ns: int = 0
    mtime_ns: int = 0


class DirectorySink:
    """The directory destination of the copy engine: a file is written under a temporary name and renamed.

    The engine talks to its destination only through these calls, so another destination (a tar stream with a fixed
    record size, for tape) is a second sink beside this one, not a second engine:

    * ``ensure_dir(path)``, ``make_symlink(path, target, uid, gid)``: the tree's directories and links;
    * ``open_file(path) -> SinkFile``: a new file, its bytes go to ``SinkFile.fd``; ``commit(file, meta)`` names it
      (metadata set first), ``abort(file)`` forgets it; ``has_copy(path, size)`` lets a resumed copy skip it;
    * ``barrier()``: everything committed so far is durable when it returns (the engine calls it before a later phase
      writes and before the manifest vouches for the files); ``sweep(keep)``: remove what a crashed run left.

    Durability is batched: a file is named once its bytes are written and its writeback started, and the barrier makes
    the whole batch durable with one syncfs(2) per filesystem (a batch of a few files, or without syncfs: one fsync per file and per directory
    that gained a name). Nothing vouches for a file before its barrier: the manifest and the resume journal are written
    after it, so a crash can leave named files nobody vouches for (copied again by the next run) but never a vouched-for
    file that is not on the medium. ``durable_each`` fsyncs every file before its rename instead (one-off copies).
    ``writeback=False`` starts no writeback at all: for a scratch copy that is read once and removed (bdb_verify's
    proof), whose bytes only have to reach the page cache; removed before the kernel writes them, they never cost the
    disk a write.
    """

    def __init__(self, root: str, dest_label: str, chown: bool, durable_each: bool = False, writeback: bool = True) -> None:
        self.root = root
        self.dest_label = dest_label
        self.chown = chown
        self.durable_each = durable_each
        self.writeback = writeback
        self.lock = threading.Lock()
        self.pending = []  # type: t.List[str]
        self.dirty_dirs = set()  # type: t.Set[str]
        self.existing_dirs = set()  # type: t.Set[str]
        self.dirs_created = 0
        self.changed = False
        self.counter = itertools.count()
        self.barriers = 0
        self.failed = None  # type: t.Optional[CopyError]

    def _error(self, exc: OSError, what: str, path: str) -> CopyError:
        return CopyError("%s %s on %s failed: [Errno %s] %s; check the medium (mounted read-write? space left?) and run again"
                         % (what, path, self.dest_label, exc.errno, exc.strerror), retryable=retryable_errno(exc))

    def _temp_name(self, target: str) -> str:
        return os.path.join(os.path.dirname(target), ".%s.cb-%d-%d.partial" % (os.path.basename(target), os.getpid(), next(self.counter)))

    def ensure_dir(self, path: str) -> None:
        """Create ``path`` and its missing parents with mode 0700 (final modes are set at the end)."""
        if path in self.existing_dirs:
            return
        missing = []
        probe = path
        while not os.path.isdir(probe):
            missing.append(probe)
            parent = os.path.dirname(probe)
            if parent == probe:
                break
            probe = parent
        for directory in reversed(missing):
            try:
                os.mkdir(directory, 0o700)
            except FileExistsError:
                if not os.path.isdir(directory):
                    raise CopyError("cannot create directory %s: a non-directory is in the way; remove it or choose another backup_id"
                                    % directory, retryable=False)
                continue
            except OSError as exc:
                raise self._error(exc, "creating directory", directory)
            with self.lock:
                self.dirs_created += 1
                self.changed = True
                self.dirty_dirs.add(os.path.dirname(directory))
        self.existing_dirs.add(path)

    def make_symlink(self, path: str, link_target: str, uid: int, gid: int) -> None:
        """``path`` becomes a symlink to ``link_target`` (replacing what is there atomically); nothing when it already is."""
        if os.path.islink(path) and os.readlink(path) == link_target:
            return
        temp = self._temp_name(path)
        try:
            os.symlink(link_target, temp)
            if self.chown:
                os.lchown(temp, uid, gid)
            os.rename(temp, path)
        except OSError as exc:
            _unlink_quietly(temp)
            raise self._error(exc, "creating symlink", path)
        with self.lock:
            self.dirty_dirs.add(os.path.dirname(path))
            self.changed = True

    def note_dir_changed(self, path: str) -> None:
        """A directory's own mode or owner changed: the next barrier makes that durable too."""
        with self.lock:
            self.dirty_dirs.add(path)

    def has_copy(self, path: str, size: int) -> bool:
        return _target_has_size(path, size)

    def open_file(self, path: str) -> SinkFile:
        temp = self._temp_name(path)
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0), 0o600)
        return SinkFile(fd, temp, path)

    def commit(self, sink_file: SinkFile, meta: FileMeta, no_replace: bool = False, size: int = -1) -> None:
        """Set owner, mode and mtime, start the writeback (or fsync with durable_each), then name the file.

        The writeback of a file of ``size`` below EARLY_WRITEBACK_MIN is left to the barrier, which writes such files
        back together (one small write per file as it is named costs the filesystem more than it saves).
        """
        try:
            if self.chown:
                os.fchown(sink_file.fd, meta.uid, meta.gid)
            os.fchmod(sink_file.fd, meta.mode)
            os.utime(sink_file.fd, ns=(meta.atime_ns, meta.mtime_ns))
            if self.durable_each:
                os.fsync(sink_file.fd)
            elif self.writeback and (size < 0 or size >= EARLY_WRITEBACK_MIN):
                start_writeback(sink_file.fd)
        finally:
            os.close(sink_file.fd)
            sink_file.fd = -1
        if no_replace and os.path.lexists(sink_file.target):
            raise FileExistsError(errno.EEXIST, "a file of that name is already there (never replaced)", sink_file.target)
        os.rename(sink_file.temp, sink_file.target)
        with self.lock:
            self.pending.append(sink_file.target)
            self.dirty_dirs.add(os.path.dirname(sink_file.target))

    def abort(self, sink_file: SinkFile) -> None:
        if sink_file.fd >= 0:
            try:
                os.close(sink_file.fd)
            except OSError:
                pass
            sink_file.fd = -1
        _unlink_quietly(sink_file.temp)

    def barrier(self, directories: bool = True) -> int:
        """Make every file committed so far (and, with ``directories``, every new name) durable; returns files covered.

        Files committed by other threads while this runs may be covered too; they stay pending until the next barrier.
        A barrier that failed fails every later one too: the filesystem reports a failed writeback only once, so a later
        barrier that passed would vouch for files that never reached the medium.
        """
        if self.failed is not None:
            raise self.failed
        try:
            return self._barrier(directories)
        except CopyError as exc:
            self.failed = exc
            raise
        except OSError as exc:
            self.failed = self._error(exc, "syncing", self.root)
            raise self.failed from None

    def _barrier(self, directories: bool) -> int:
        with self.lock:
            files, self.pending = self.pending, []
            dirs = set(self.dirty_dirs) if directories else set()
            if directories:
                self.dirty_dirs.clear()
        use_syncfs = len(files) > BARRIER_FSYNC_FILES
        device_of = {}  # type: t.Dict[str, int]
        for path in [self.root] + sorted(set(os.path.dirname(f) for f in files) | dirs):
            try:
                device_of[path] = os.stat(path).st_dev
            except OSError as exc:
                raise self._error(exc, "syncing", path)
        places = dict((device, path) for path, device in sorted(device_of.items(), reverse=True))
        synced = set()
        for device, path in places.items() if use_syncfs else ():
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0))
            try:
                if syncfs(fd):
                    synced.add(device)
            except OSError as exc:
                raise self._error(exc, "syncing the filesystem of", path)
            finally:
                os.close(fd)
        # Without syncfs: each file, then each directory that gained a name (deepest first, so parents come last).
        for path in files:
            if device_of[os.path.dirname(path)] not in synced:
                try:
                    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
                    try:
                        os.fsync(fd)
                    finally:
                        os.close(fd)
                except OSError as exc:
                    raise self._error(exc, "syncing", path)
        for directory in sorted(dirs, key=len, reverse=True):
            try:
                if device_of[directory] not in synced:
                    fsync_dir(directory)
            except OSError as exc:
                raise self._error(exc, "syncing directory", directory)
        self.barriers += 1
        return len(files)

    def sweep(self, keep: t.Container[str] = ()) -> t.List[str]:
        """Remove the temporary files a killed run left below the root (never a path in ``keep``); the paths removed."""
        removed = []
        for directory, _dirnames, filenames in os.walk(self.root):
            for name in filenames:
                path = os.path.join(directory, name)
                if TEMP_PATTERN.match(name) and path not in keep:
                    _unlink_quietly(path)
                    removed.append(path)
        return removed


def stream_file(src_fd: int, out_fd: t.Optional[int], view: memoryview, reader: Reader, writer: Writer,
                direct: bool = False) -> t.Tuple[str, int]:
    """Read ``src_fd`` to its end in requests of ``len(view)`` bytes from aligned offsets, hashing each and writing it to ``out_fd``.

    The loop of one worker (files that fit in a few reads: most of a database's files). Returns (sha256 hex, bytes).
    OSError from reading propagates (``_DirectIORefused`` for an O_DIRECT read the filesystem refused); a write error is
    raised as ``_WriteFailed``.
    """
    hasher = hashlib.sha256()
    offset = 0
    size = len(view)
    while True:
        try:
            length = reader(src_fd, view, offset)
        except OSError as exc:
            if direct and offset == 0 and exc.errno == errno.EINVAL:
                raise _DirectIORefused()
            raise
        if length <= 0:
            break
        with view[:length] as chunk:
            hasher.update(chunk)
            if out_fd is not None:
                done = 0
                while done < length:
                    try:
                        count = writer(out_fd, chunk[done:])
                    except OSError as exc:
                        raise _WriteFailed(exc.with_traceback(None))
                    except Exception as exc:  # pylint: disable=broad-exception-caught
                        raise CopyError("the copy worker failed: %r; the partial copy was removed; run again" % exc.with_traceback(None))
                    if count <= 0:
                        raise _WriteFailed(OSError(errno.EIO, "write returned %r" % count))
                    done += count
        offset += length
        if length < size:
            break
    return hasher.hexdigest(), offset


def copy_file(src_fd: int, destination: str, meta: FileMeta, read_size: int = DEFAULT_READ_SIZE, chown: bool = True,
              check: t.Optional[t.Callable[[int, str], None]] = None, sink: t.Optional[DirectorySink] = None) -> t.Tuple[int, str]:
    """Copy the open regular file ``src_fd`` to the new name ``destination`` through a directory sink; (bytes, sha256).

    The one-file entry of the engine (the restore uses it): temporary name, SHA-256 in the same pass, ``check(size,
    sha256)`` before the file is named (it raises to refuse the copy, which is then removed), owner, mode and mtime from
    ``meta``, never onto an existing name. With a ``sink`` the file joins that sink's batch (call its ``barrier``);
    without, it is fsynced before its rename.
    """
    one_off = sink is None
    sink = sink or DirectorySink(os.path.dirname(destination), os.path.dirname(destination), chown, durable_each=True)
    buffer = mmap.mmap(-1, read_size)
    view = memoryview(buffer)
    sink_file = sink.open_file(destination)
    try:
        try:
            digest, size = stream_file(src_fd, sink_file.fd, view, default_reader, default_writer)
        except _WriteFailed as exc:
            raise exc.error from None
        if check is not None:
            check(size, digest)
        sink.commit(sink_file, meta, no_replace=True)
    except BaseException:
        sink.abort(sink_file)
        raise
    finally:
        view.release()
        buffer.close()
    if one_off:
        sink.barrier()  # the new name too
    return size, digest


def hash_file(src_fd: int, read_size: int = DEFAULT_READ_SIZE) -> t.Tuple[str, int]:
    """(sha256 hex, bytes) of the open file ``src_fd``, read the engine's way (aligned requests of ``read_size``)."""
    buffer = mmap.mmap(-1, read_size)
    view = memoryview(buffer)
    try:
        return stream_file(src_fd, None, view, default_reader, default_writer)
    finally:
        view.release()
        buffer.close()


# --------------------------------------------------------------------------------------------
# Workers: files copied beside each other
# --------------------------------------------------------------------------------------------

# Files copied at once: hashlib, preadv and os.write release the GIL, so two workers keep two cores busy on a tree of
# small files (a file larger than one read goes through the ring, which has its own hashing and writing threads).
COPY_WORKERS = 2
# The resume journal: file entries vouched for by a barrier, appended after it, so a killed copy resumes without
# copying those files again. A barrier and a journal entry come at least every JOURNAL_INTERVAL seconds or
# JOURNAL_BYTES copied bytes, and at the end of every phase.
JOURNAL_NAME = ".copy-journal"
JOURNAL_INTERVAL = 1.0
JOURNAL_BYTES = 512 * 1024 * 1024


@dataclass
class _FileTask:
    item: Item
    target: str
    fd: int
    direct: bool
    at_open: os.stat_result


class _Workers:
    """A small pool with a bounded queue (memory: one buffer of ``read_size`` per worker); the first failure stops it."""

    def __init__(self, count: int, read_size: int, handler: t.Callable[[_FileTask, memoryview], None]) -> None:
        self.tasks = queue.Queue(maxsize=count * 2)  # type: queue.Queue
        self.handler = handler
        self.read_size = read_size
        self.failure = None  # type: t.Optional[BaseException]
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._loop, name="aligned_copy-worker-%d" % n, daemon=True) for n in range(count)]
        for thread in self.threads:
            thread.start()

    def _loop(self) -> None:
        buffer = mmap.mmap(-1, self.read_size)  # page-aligned, as O_DIRECT needs
        view = memoryview(buffer)
        try:
            while True:
                task = self.tasks.get()
                try:
                    if task is None:
                        return
                    if self.failure is not None:
                        _close_quietly(task.fd)
                        continue
                    try:
                        self.handler(task, view)
                    except BaseException as exc:  # pylint: disable=broad-exception-caught
                        with self.lock:
                            if self.failure is None:
                                self.failure = exc
                finally:
                    self.tasks.task_done()
        finally:
            view.release()
            try:
                buffer.close()
            except BufferError:
                pass

    def submit(self, task: _FileTask) -> None:
        self.tasks.put(task)

    def wait(self) -> None:
        """Until every submitted file is done (committed, skipped or failed)."""
        self.tasks.join()

    def close(self) -> None:
        for _thread in self.threads:
            self.tasks.put(None)
        for thread in self.threads:
            thread.join()


def _close_quietly(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


def journal_path(set_path: str) -> str:
    return os.path.join(set_path, JOURNAL_NAME)


def load_journal(set_path: str) -> t.Tuple[bool, t.Dict[str, t.Dict[str, t.Any]]]:
    """(whether a journal is there, its file entries by path). A torn last line (a crash while appending) is ignored."""
    try:
        with open(journal_path(set_path), "rb") as handle:
            raw = handle.read()
    except FileNotFoundError:
        return False, {}
    except OSError as exc:
        raise CopyError("the copy journal %s cannot be read (%s); remove it to copy every file again" % (journal_path(set_path), exc),
                        retryable=False)
    entries = {}
    for line in raw.split(b"\n"):
        try:
            entry = json.loads(line.decode("utf-8"))
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("type") == "file" and isinstance(entry.get("path"), str) \
                and isinstance(entry.get("sha256"), str) and isinstance(entry.get("size"), int):
            entries[entry["path"]] = entry
    return True, entries


class _Copier:
    def __init__(self, plan: CopyPlan, dest: str, set_path: str, block_size: int, read_size: int, direct: bool,
                 preserve_owner: bool, reader: Reader, writer: Writer, opener: Opener, result: CopyResult,
                 changes: str = CHANGES_FAIL, progress: t.Optional[Progress] = None, workers: int = COPY_WORKERS) -> None:
        self.plan = plan
        self.dest = dest
        self.set_path = set_path
        self.data_root = os.path.join(set_path, DATA_DIR)
        self.block_size = block_size
        self.read_size = read_size
        self.direct = direct
        self.chown = preserve_owner and hasattr(os, "geteuid") and os.geteuid() == 0
        self.reader = reader
        self.writer = writer
        self.opener = opener
        self.result = result
        self.sink = DirectorySink(self.data_root, dest, self.chown)
        self.ring = None  # type: t.Optional[_Ring]
        self.ring_lock = threading.Lock()
        self.pool = None  # type: t.Optional[_Workers]
        self.workers = max(1, workers)
        self.lock = threading.RLock()
        self.known = {}  # type: t.Dict[str, t.Dict[str, t.Any]]
        self.entries = []  # type: t.List[t.Dict[str, t.Any]]
        self.unjournaled = []  # type: t.List[t.Dict[str, t.Any]]
        self.unjournaled_bytes = 0
        self.journal_fd = -1
        self.journaled_at = time.monotonic()
        self.vanished = list(plan.vanished)
        self.dir_modes = []  # type: t.List[t.Tuple[str, Item]]
        self.rows = {}  # type: t.Dict[int, t.Dict[str, t.Any]]
        self.changes = changes
        self.changed = []  # type: t.List[t.Dict[str, t.Any]]
        self.progress = progress
        self.bytes_done = 0
        self.reported = 0
        self.progress_due = time.monotonic() + PROGRESS_INTERVAL
        self.tick = self._tick if progress is not None else None

    # -- helpers -------------------------------------------------------------------------

    def _get_ring(self) -> _Ring:
        if self.ring is None:
            self.ring = _Ring(self.read_size, self.reader, self.writer)
        return self.ring

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
            self.pool = None
        if self.ring is not None:
            self.ring.close()
            self.ring = None
        if self.journal_fd >= 0:
            _close_quietly(self.journal_fd)
            self.journal_fd = -1

    def _dest_error(self, exc: OSError, what: str, path: str) -> CopyError:
        return self.sink._error(exc, what, path)  # pylint: disable=protected-access

    def _tick(self, in_file: int = 0) -> None:
        """Call the progress hook when PROGRESS_INTERVAL has passed since the last call (from any worker)."""
        with self.lock:
            now = time.monotonic()
            if now < self.progress_due:
                return
            self.progress_due = now + PROGRESS_INTERVAL
            # Workers finish files out of order: never report less than before.
            self.reported = max(self.reported, self.bytes_done + in_file)
            self.progress(self.reported)  # type: ignore[misc]

    def _row(self, phase: int) -> t.Dict[str, t.Any]:
        return _phase_row(self.rows, phase, {"files": 0, "bytes": 0, "copied": 0, "skipped_identical": 0, "bytes_copied": 0})

    def _open_source(self, path: str) -> t.Tuple[int, bool]:
        flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        if self.direct and hasattr(os, "O_DIRECT"):
            try:
                return self.opener(path, flags | os.O_DIRECT), True
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                self._direct_refused(path)
        return self.opener(path, flags), False

    def _direct_refused(self, path: str) -> None:
        with self.lock:
            if not self.direct:
                return
            self.direct = False
            self.result.direct = False
            self.result.warnings.append(
                "the filesystem of %s refused O_DIRECT (e.g. tmpfs); copying through the page cache instead" % path)

    # -- the journal ------------------------------------------------------------------------

    def open_journal(self) -> None:
        """Take over what a killed run vouched for, sweep its temporary files, and start this run's journal."""
        existed, journaled = load_journal(self.set_path)
        self.known.update(journaled)
        self.sink.ensure_dir(self.data_root)
        if existed:
            self.sink.sweep()
        try:
            self.journal_fd = os.open(journal_path(self.set_path), os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_CLOEXEC", 0), 0o600)
        except OSError as exc:
            raise self._dest_error(exc, "opening the copy journal", journal_path(self.set_path))

    def _barrier(self, journal: bool = True) -> None:
        """Make every committed file durable, then journal them (a journal line vouches only for a durable file)."""
        with self.lock:
            batch, self.unjournaled, self.unjournaled_bytes = self.unjournaled, [], 0
        self.journaled_at = time.monotonic()
        self.sink.barrier()
        if journal and batch and self.journal_fd >= 0:
            lines = b"".join(json.dumps(entry, sort_keys=True).encode("utf-8") + b"\n" for entry in batch)
            try:
                os.write(self.journal_fd, lines)
            except OSError as exc:
                raise self._dest_error(exc, "appending to the copy journal", journal_path(self.set_path))

    def _barrier_when_due(self) -> None:
        if self.unjournaled and (self.unjournaled_bytes >= JOURNAL_BYTES or time.monotonic() - self.journaled_at >= JOURNAL_INTERVAL):
            self._barrier()

    # -- items ----------------------------------------------------------------------------

    def _check_workers(self) -> None:
        if self.pool is not None and self.pool.failure is not None:
            failure = self.pool.failure
            self.pool.wait()
            raise failure

    def run(self) -> None:
        self.sink.ensure_dir(self.data_root)
        if self.plan.key is not None:
            # Recorded before the first byte is copied: a retry must copy at least this list.
            try:
                record_plan(self.plan, self.set_path)
            except OSError as exc:
                raise self._dest_error(exc, "recording the copy plan", plan_path(self.set_path))
        self.pool = _Workers(self.workers, self.read_size, self._copy_open_file)
        phase = None
        for item in self.plan.items:
            if phase is not None and item.phase != phase:
                # A later phase (pg_control, a database's logs) is written only once the earlier phases are durable.
                self.pool.wait()
                self._check_workers()
                self._barrier()
            phase = item.phase
            self._check_workers()
            target = os.path.join(self.data_root, item.rel)
            if item.kind == "file":
                self._dispatch_file(item, target)  # its worker calls the progress hook
            else:
                if item.kind == "dir":
                    self._copy_dir(item, target)
                else:
                    self._copy_symlink(item, target)
                if self.tick is not None:
                    self.tick()
            self._barrier_when_due()
        self.pool.wait()
        self._check_workers()
        for rel in self.plan.create_dirs:
            self.sink.ensure_dir(os.path.join(self.data_root, rel))
        # Recorded once all of them exist, so a parent's mtime does not move after it was recorded.
        walked = set(entry["path"] for entry in self.entries if entry["type"] == "dir")
        for rel in self.plan.create_dirs:
            if rel not in walked:
                self._record_created_dir(rel)
        # Directory modes last: a read-only source directory must not stop us filling its copy.
        for target, item in self.dir_modes:
            self._set_dir_mode(target, item)
        # Every file and every new name is durable before the manifest declares them present.
        self._barrier(journal=False)

    def _copy_dir(self, item: Item, target: str) -> None:
        if os.path.islink(target) or (os.path.lexists(target) and not os.path.isdir(target)):
            try:
                os.unlink(target)
            except OSError as exc:
                raise self._dest_error(exc, "replacing non-directory", target)
        self.sink.ensure_dir(target)
        self.dir_modes.append((target, item))
        with self.lock:
            self._row(item.phase)
            self.entries.append({"path": item.rel, "type": "dir", "size": 0, "mtime": item.mtime_ns / 1e9,
                                 "mtime_ns": item.mtime_ns, "mode": mode_string(item.mode), "phase": item.phase})

    def _set_dir_mode(self, target: str, item: Item) -> None:
        try:
            st = os.lstat(target)
            if self.chown and (st.st_uid, st.st_gid) != (item.uid, item.gid):
                os.lchown(target, item.uid, item.gid)
                self.result.changed = True
                self.sink.note_dir_changed(target)
            if stat.S_IMODE(st.st_mode) != item.mode:
                os.chmod(target, item.mode)
                self.result.changed = True
                self.sink.note_dir_changed(target)
        except OSError as exc:
            raise self._dest_error(exc, "setting owner/mode of directory", target)

    def _record_created_dir(self, rel: str) -> None:
        st = os.stat(os.path.join(self.data_root, rel))
        self.entries.append({"path": rel, "type": "dir", "size": 0, "mtime": st.st_mtime_ns / 1e9, "mtime_ns": st.st_mtime_ns,
                             "mode": mode_string(st.st_mode), "phase": 0})

    def _copy_symlink(self, item: Item, target: str) -> None:
        self.sink.ensure_dir(os.path.dirname(target))
        self.sink.make_symlink(target, item.target, item.uid, item.gid)
        with self.lock:
            self.result.symlinks += 1
            self._row(item.phase)
            self.entries.append({"path": item.rel, "type": "symlink", "size": item.size, "mtime": item.mtime_ns / 1e9,
                                 "mtime_ns": item.mtime_ns, "mode": mode_string(item.mode), "phase": item.phase, "target": item.target})

    def _file_entry(self, item: Item, size: int, digest: str) -> t.Dict[str, t.Any]:
        return {"path": item.rel, "type": "file", "size": size, "sha256": digest, "mtime": item.mtime_ns / 1e9,
                "mtime_ns": item.mtime_ns, "mode": mode_string(item.mode), "phase": item.phase}

    def _vanished(self, item: Item) -> None:
        if not item.allow_vanished:
            raise CopyError(
                "source file %s vanished before it could be copied; the source is changing under the copy: set "
                "allow_vanished: true for this source if files may disappear (e.g. dropped relations), or quiesce the "
                "database first" % item.src, retryable=False)
        with self.lock:
            self.vanished.append(item.rel)

    def _open_checked(self, item: Item) -> t.Optional[t.Tuple[int, bool, os.stat_result]]:
        """Open a source in plan order, check it against its listing; None when it vanished (and may)."""
        try:
            fd, direct = self._open_source(item.src)
        except FileNotFoundError:
            self._vanished(item)
            return None
        except OSError as exc:
            raise CopyError("cannot open source file %s: [Errno %s] %s; check that it is a regular file readable by this user"
                            % (item.src, exc.errno, exc.strerror), retryable=retryable_errno(exc))
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise CopyError("source %s is no longer a regular file (now %s); quiesce the database and run again"
                                % (item.src, stat.filemode(st.st_mode)), retryable=False)
            self._check_listed(item, st)
            if st.st_size >= self.read_size:  # read-ahead only matters for a file of several reads
                try:
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
                except (OSError, AttributeError):
                    pass
        except BaseException:
            os.close(fd)
            raise
        # The metadata recorded is the one seen at open: a later change gives a newer mtime,
        # so the next run copies the file again rather than trusting this copy.
        item.size, item.mtime_ns, item.atime_ns = st.st_size, st.st_mtime_ns, st.st_atime_ns
        item.mode, item.uid, item.gid = stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid
        return fd, direct, st

    def _dispatch_file(self, item: Item, target: str) -> None:
        """Open the source here (sources are opened in plan order), then hand it to a worker."""
        self.sink.ensure_dir(os.path.dirname(target))
        opened = self._open_checked(item)
        if opened is None:
            return
        fd, direct, st = opened
        self.pool.submit(_FileTask(item, target, fd, direct, st))  # type: ignore[union-attr]

    def _copy_open_file(self, task: _FileTask, view: memoryview) -> None:
        """A worker's part: hash (and, unless the set's copy is identical, write) one opened source; always closes it."""
        try:
            while True:
                try:
                    self._copy_or_skip(task, view)
                    return
                except _DirectIORefused:
                    self._direct_refused(task.item.src)
                    _close_quietly(task.fd)
                    task.fd = -1
                    opened = self._open_checked(task.item)
                    if opened is None:
                        return
                    task.fd, task.direct, task.at_open = opened
        finally:
            if task.fd >= 0:
                _close_quietly(task.fd)

    def _copy_or_skip(self, task: _FileTask, view: memoryview) -> None:
        item, target, fd = task.item, task.target, task.fd
        old = self.known.get(item.rel)
        if _entry_matches_item(old, item) and self.sink.has_copy(target, item.size):
            digest, size = self._read_source(fd, item, task.direct, None, view)
            if old is not None and digest == old.get("sha256") and size == old.get("size") \
                    and _change_record(item, task.at_open, os.fstat(fd), size) is None:
                with self.lock:
                    self.bytes_done += size
                    self._count(item, size, copied=False)
                    self.entries.append(dict(old, phase=item.phase))
                if self.tick is not None:
                    self.tick()
                return
            with self.lock:
                self.bytes_done += size
        digest, size = self._write_target(fd, item, target, task.direct, task.at_open, view)
        entry = self._file_entry(item, size, digest)
        with self.lock:
            self.bytes_done += size
            self._count(item, size, copied=True)
            self.entries.append(entry)
            self.unjournaled.append(entry)
            self.unjournaled_bytes += size
        if self.tick is not None:
            self.tick()

    def _check_change(self, fd: int, item: Item, before: os.stat_result, bytes_read: int) -> None:
        """Record a change of the source during its read; with changes=fail, fail the copy (the copy is not renamed)."""
        self._note_change(_change_record(item, before, os.fstat(fd), bytes_read))

    def _check_listed(self, item: Item, at_open: os.stat_result) -> None:
        """A file whose size or mtime at open differs from the listing (or the first attempt's recorded list) changed
        during the copy too: a file truncated from 256 MiB to 100 MiB before its turn came is not a 100 MiB file."""
        if item.mtime_ns and (item.size, item.mtime_ns) != (at_open.st_size, at_open.st_mtime_ns):
            self._note_change({"path": item.rel, "source": item.src, "size_before": item.size, "size_after": at_open.st_size,
                               "bytes_read": item.size, "mtime_before": item.mtime_ns / 1e9,
                               "mtime_after": at_open.st_mtime_ns / 1e9, "mtime_ns_before": item.mtime_ns,
                               "mtime_ns_after": at_open.st_mtime_ns, "since": "listed"})

    def _note_change(self, change: t.Optional[t.Dict[str, t.Any]]) -> None:
        if change is None:
            return
        with self.lock:
            self.changed.append(change)
            facts = {"changed_during_copy": [dict(c) for c in self.changed]}
        if self.changes == CHANGES_FAIL:
            raise CopyError(
                "source file %s changed while it was copied; the copy of a changing file is not consistent: check that pre "
                "quiesces the database and run again (changes: warn is only for engines whose recovery repairs such changes "
                "from their log, such as PostgreSQL and Berkeley DB)" % describe_change(change), facts=facts)

    def _count(self, item: Item, size: int, copied: bool) -> None:
        row = self._row(item.phase)
        row["files"] += 1
        row["bytes"] += size
        self.result.files += 1
        self.result.bytes_total += size
        if copied:
            row["copied"] += 1
            row["bytes_copied"] += size
            self.result.copied += 1
            self.result.bytes_copied += size
            self.result.changed = True
        else:
            row["skipped_identical"] += 1
            self.result.skipped_identical += 1

    def _read_source(self, fd: int, item: Item, direct: bool, out_fd: t.Optional[int], view: memoryview) -> t.Tuple[str, int]:
        """Stream one source: a file that fits in the worker's buffer is read, hashed and written by the worker itself;
        a larger one goes through the ring (read, hash and write overlapped; one such file at a time)."""
        try:
            if item.size < self.read_size:
                return stream_file(fd, out_fd, view, self.reader, self.writer, direct)
            with self.ring_lock:
                return self._get_ring().stream(fd, out_fd, direct, self.tick)
        except OSError as exc:
            raise CopyError("reading source file %s failed: [Errno %s] %s; check the source device and run again"
                            % (item.src, exc.errno, exc.strerror), retryable=retryable_errno(exc))

    def _write_target(self, fd: int, item: Item, target: str, direct: bool, before: os.stat_result,
                      view: memoryview) -> t.Tuple[str, int]:
        try:
            sink_file = self.sink.open_file(target)
        except OSError as exc:
            raise _write_error(exc, item.src, target, self.dest)
        try:
            digest, size = self._read_source(fd, item, direct, sink_file.fd, view)
            self._check_change(fd, item, before, size)
            self.sink.commit(sink_file, FileMeta(item.mode, item.uid, item.gid, item.atime_ns, item.mtime_ns), size=size)
        except _WriteFailed as exc:
            self.sink.abort(sink_file)
            raise _write_error(exc.error, item.src, target, self.dest)
        except OSError as exc:
            self.sink.abort(sink_file)
            raise _write_error(exc, item.src, target, self.dest)
        except BaseException:
            self.sink.abort(sink_file)
            raise
        return digest, size


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def run_copy(
    plan: CopyPlan,
    dest: str,
    backup_id: str,
    block_size: int = DEFAULT_BLOCK_SIZE,
    read_size: int = DEFAULT_READ_SIZE,
    direct: bool = False,
    engine: t.Optional[str] = "files",
    facts: t.Optional[t.Dict[str, t.Any]] = None,
    preserve_owner: bool = True,
    reader: t.Optional[Reader] = None,
    writer: t.Optional[Writer] = None,
    opener: t.Optional[Opener] = None,
    changes: str = CHANGES_FAIL,
    progress: t.Optional[Progress] = None,
    workers: int = COPY_WORKERS,
    tar: t.Optional[_tar_sink.TarSpec] = None,
    tape_ops: t.Optional[TapeOps] = None,
) -> CopyResult:
    """Copy ``plan`` into ``<dest>/<backup_id>/data/`` and merge it into the set's manifest.

    Call ``validate_request`` before planning (it also refuses a destination inside a source);
    ``run_copy`` itself re-checks the block sizes, the destination root and the COMPLETE marker.

    ``reader(fd, buffer, offset)``, ``writer(fd, buffer)`` and ``opener(path, flags)`` replace the
    os primitives (tests use them to check alignment, order and write failures). Raises CopyError.
    Files copied before a failure are made durable and recorded in the manifest (best effort), so a
    retry skips them when they are unchanged; a copy killed outright leaves ``.copy-journal``, from
    which the next run skips the files it vouches for.

    ``changes`` says what a source that changed while it was read does: ``fail`` (the default) fails the
    copy naming it, ``warn`` records it in ``result.changed_during_copy``, the manifest and the warnings.
    ``progress(bytes_done)`` is called at least every PROGRESS_INTERVAL seconds while the copy makes
    progress (bytes read from the sources so far) and once at the end, before the manifest is written; an
    exception it raises stops the copy. A plan with a ``key`` (``plan_attempt``) is recorded in the set
    before anything is copied and removed once the manifest is written. ``workers`` files are copied at once.

    With ``tar`` the files go to one tar stream on the tape ``tar.device`` instead of ``data/`` (see ``_copy_to_tar``);
    the set directory keeps the manifest.
    """
    validate_block_sizes(block_size, read_size)
    validate_changes(changes)
    set_path = check_destination(dest, backup_id)
    result = CopyResult(set_path=set_path, manifest_path=_manifest.manifest_path(set_path), read_size=read_size,
                        block_size=block_size, direct=bool(direct))
    copier = _Copier(plan, dest, set_path, block_size, read_size, bool(direct), preserve_owner,
                     reader or default_reader, writer or default_writer, opener or default_opener, result,
                     changes=changes, progress=progress, workers=workers)
    try:
        copier.known = _manifest.entries_by_path(_manifest.load_manifest(set_path))
    except ValueError as exc:
        raise CopyError(str(exc), retryable=False)
    result.warnings.extend(plan.warnings)
    meta = {"backup_id": backup_id, "engine": engine, "block_size": block_size, "facts": facts or {}}
    started = time.monotonic()
    if tar is not None:
        def write_manifest(entries: t.List[t.Dict[str, t.Any]]) -> bytes:
            return _manifest.dumps(_manifest.merge_and_write(set_path, entries, copier.vanished, meta, changed=copier.changed))

        try:
            os.makedirs(set_path, mode=0o700, exist_ok=True)
            if plan.key is not None:
                record_plan(plan, set_path)  # a retry streams at least this list again, as with the directory sink
        except OSError as exc:
            raise _write_error(exc, "the set directory", set_path, dest)
        _copy_to_tar(plan, tar, tape_ops or default_ops(), copier, write_manifest)
        if plan.key is not None:
            discard_plan(set_path)
        result.seconds = time.monotonic() - started
        result.phases = [copier.rows[p] for p in sorted(copier.rows)]
        result.vanished = list(copier.vanished)
        result.changed = True
        result.manifest_written = True
        return result
    try:
        copier.open_journal()
        copier.run()
        if progress is not None:
            progress(copier.bytes_done)
    except BaseException:
        if copier.pool is not None:
            copier.pool.wait()  # files in flight are finished or removed before anything is recorded
        copier.close()
        if copier.entries or copier.changed:
            try:
                copier.sink.barrier()  # what the manifest lists is durable first
                _manifest.merge_and_write(set_path, copier.entries, copier.vanished, meta, changed=copier.changed)
                _unlink_quietly(journal_path(set_path))
            except (OSError, ValueError, CopyError):
                pass  # the copy error is the one to report; a retry rebuilds the manifest from the journal
        raise
    copier.close()
    result.seconds = time.monotonic() - started
    result.dirs_created = copier.sink.dirs_created
    result.changed = result.changed or copier.sink.changed
    result.vanished = list(copier.vanished)
    result.phases = [copier.rows[p] for p in sorted(copier.rows)]
    result.changed_during_copy = list(copier.changed)
    if copier.changed:
        result.warnings.append(
            "%d source file%s changed while %s copied and %s recorded in changed_during_copy of %s (changes: warn; the "
            "engine's recovery repairs such changes from its log): %s%s"
            % (len(copier.changed), "" if len(copier.changed) == 1 else "s", "it was" if len(copier.changed) == 1 else "they were",
               "is" if len(copier.changed) == 1 else "are", result.manifest_path,
               "; ".join(describe_change(c) for c in copier.changed[:5]),
               " and %d more" % (len(copier.changed) - 5) if len(copier.changed) > 5 else ""))
    try:
        _manifest_data, written = _manifest.merge_and_write_changed(set_path, copier.entries, copier.vanished, meta,
                                                                    changed=copier.changed)
    except OSError as exc:
        raise _write_error(exc, "the manifest", _manifest.manifest_path(set_path), dest)
    except ValueError as exc:
        raise CopyError(str(exc), retryable=False)
    result.manifest_written = written
    result.changed = result.changed or written
    # The manifest is the truth now: the journal and the recorded list have done their work.
    _unlink_quietly(journal_path(set_path))
    if plan.key is not None:
        discard_plan(set_path)
    return result


def _tar_error(exc: Exception, device: str) -> CopyError:
    if isinstance(exc, CopyError):
        return exc
    if isinstance(exc, OSError):
        return CopyError(str(explain_errno(device, exc, "writing the tar stream")), retryable=retryable_errno(exc))
    return CopyError(str(exc), retryable=not isinstance(exc, _tar_sink.TarSinkError))


def _copy_to_tar(plan: CopyPlan, spec: _tar_sink.TarSpec, ops: TapeOps, copier: _Copier,
                 write_manifest: t.Callable[[t.List[t.Dict[str, t.Any]]], bytes]) -> None:
    """Write ``plan`` as one tar stream to the tape: ``data/<path>`` members in plan order, then ``manifest.json``.

    One file at a time (a stream has one position), each read the engine's way (aligned requests of ``read_size``,
    hashed in the same pass) by the copier's reader; a file whose size or mtime moved while it was read fails the copy
    whatever ``changes`` says, because its header already declared its size. ``write_manifest(entries)`` returns the
    manifest's bytes once every file is in the stream (``run_copy`` writes it to the set on disk there; the disk-then-tape
    copy checks the entries against the disk set's manifest); the same bytes end the stream, so the read-back compares
    the two. The tape file ends with a filemark.
    """
    buffer = mmap.mmap(-1, copier.read_size)
    view = memoryview(buffer)
    try:
        target = _tar_sink.TapeTarget(spec, ops)
    except (TapeError, _tar_sink.TarSinkError) as exc:
        raise CopyError(str(exc), retryable=False)
    records = _tar_sink.RecordWriter(target.write, spec.record_size)
    stream = _tar_sink.TarStream(records)
    # A file of several reads goes through the engine's ring: read, hash and the stream's writes overlap (one file at a
    # time, so the stream's bytes stay in order); the out fd is unused (-1): the writer is the stream.
    ring = _Ring(copier.read_size, copier.reader, lambda _fd, chunk: _tar_write(copier, stream, chunk))
    try:
        for item in plan.items:
            name = _tar_sink.DATA_PREFIX + item.rel
            if item.kind == "dir":
                stream.add_dir(name, item.mode, item.uid, item.gid, item.mtime_ns)
                copier.entries.append({"path": item.rel, "type": "dir", "size": 0, "mtime": item.mtime_ns / 1e9,
                                       "mtime_ns": item.mtime_ns, "mode": mode_string(item.mode), "phase": item.phase})
            elif item.kind == "symlink":
                stream.add_symlink(name, item.target, item.mode, item.uid, item.gid, item.mtime_ns)
                copier.result.symlinks += 1
                copier.entries.append({"path": item.rel, "type": "symlink", "size": item.size, "mtime": item.mtime_ns / 1e9,
                                       "mtime_ns": item.mtime_ns, "mode": mode_string(item.mode), "phase": item.phase,
                                       "target": item.target})
            else:
                _tar_one_file(copier, stream, ring, item, name, view)
            copier._row(item.phase)  # pylint: disable=protected-access
        walked = set(entry["path"] for entry in copier.entries if entry["type"] == "dir")
        for rel in plan.create_dirs:
            if rel not in walked:
                now_ns = time.time_ns()
                stream.add_dir(_tar_sink.DATA_PREFIX + rel, 0o700, os.geteuid(), os.getegid(), now_ns)
                copier.entries.append({"path": rel, "type": "dir", "size": 0, "mtime": now_ns / 1e9, "mtime_ns": now_ns,
                                       "mode": "0700", "phase": 0})
        manifest_bytes = write_manifest(copier.entries)
        stream.add_bytes(_tar_sink.MANIFEST_MEMBER, manifest_bytes, mtime_ns=time.time_ns())
        stream.close()
        target.finish()
    except (TapeError, _tar_sink.TarSinkError, OSError) as exc:
        raise _tar_error(exc, spec.device) from None
    finally:
        ring.close()
        target.close()
        view.release()
        buffer.close()
    copier.result.tape = {"device": spec.device, "volume": spec.volume, "file_number": target.file_number,
                          "record_size": spec.record_size, "block_size": spec.block_size, "records": records.records,
                          "stream_bytes": records.bytes, "members": stream.members,
                          "manifest_sha256": hashlib.sha256(manifest_bytes).hexdigest()}


def stream_set_to_tape(set_path: str, spec: _tar_sink.TarSpec, ops: t.Optional[TapeOps] = None,
                       read_size: int = DEFAULT_READ_SIZE) -> CopyResult:
    """Write a COMPLETE set on disk (``<set>/data`` and its manifest) to tape as one tar stream (disk, then tape).

    Every file read from the disk set must hash as its manifest says (a set that rotted on disk is not copied to
    tape); the stream ends with the disk manifest's exact bytes.
    """
    manifest_file = _manifest.manifest_path(set_path)
    try:
        with open(manifest_file, "rb") as handle:
            manifest_bytes = handle.read()
        manifest = json.loads(manifest_bytes.decode("utf-8"))
    except (OSError, ValueError) as exc:
        raise CopyError("the set's manifest %s cannot be read (%s); only a COMPLETE set with its manifest is copied to tape"
                        % (manifest_file, exc), retryable=False)
    data_root = os.path.join(set_path, DATA_DIR)
    names = sorted(os.listdir(data_root)) if os.path.isdir(data_root) else []
    plan = plan_copy([Source(path=os.path.join(data_root, name), dest=name) for name in names])
    result = CopyResult(set_path=set_path, manifest_path=manifest_file, read_size=read_size,
                        block_size=int(manifest.get("block_size") or DEFAULT_BLOCK_SIZE), direct=False)
    copier = _Copier(plan, os.path.dirname(set_path), set_path, result.block_size, read_size, False, True,
                     default_reader, default_writer, default_opener, result)
    expected = _manifest.entries_by_path(manifest)

    def check_against_manifest(entries: t.List[t.Dict[str, t.Any]]) -> bytes:
        for entry in entries:
            known = expected.get(entry["path"])
            if entry["type"] == "file" and (known is None or (known.get("size"), known.get("sha256")) != (entry["size"], entry["sha256"])):
                why = "not listed" if known is None else "checksum differs"
                raise CopyError("%s in the disk set %s does not match its manifest (%s); the disk copy is damaged: it is not "
                                "copied to tape - run a new backup" % (entry["path"], set_path, why), retryable=False)
        return manifest_bytes

    started = time.monotonic()
    _copy_to_tar(plan, spec, ops or default_ops(), copier, check_against_manifest)
    result.seconds = time.monotonic() - started
    return result


def _tar_write(copier: _Copier, stream: _tar_sink.TarStream, chunk: memoryview) -> int:
    written = stream.file_data(chunk)
    if copier.tick is not None:
        copier.tick()  # the guard's lease is renewed inside a large file too
    return written


def _tar_one_file(copier: _Copier, stream: _tar_sink.TarStream, ring: _Ring, item: Item, name: str, view: memoryview) -> None:
    opened = copier._open_checked(item)  # pylint: disable=protected-access
    if opened is None:
        return
    fd, direct, before = opened
    try:
        stream.begin_file(name, before.st_size, item.mode, item.uid, item.gid, item.mtime_ns)
        try:
            if before.st_size >= copier.read_size:
                digest, size = ring.stream(fd, -1, direct, copier.tick)
            else:
                digest, size = stream_file(fd, -1, view, copier.reader, lambda _fd, chunk: _tar_write(copier, stream, chunk), direct)
        except _DirectIORefused:
            raise CopyError("source %s refused O_DIRECT; copy to tape with direct: false" % item.src, retryable=False)
        except _WriteFailed as exc:
            raise exc.error from None
        stream.end_file()
        change = _change_record(item, before, os.fstat(fd), size)
        if change is not None or size != before.st_size:
            raise CopyError("source file %s changed while it was written to tape (%s); a tar member cannot change its size "
                            "after its header: quiesce the database (check pre) and run again"
                            % (item.src, describe_change(change) if change else "%d bytes read, %d at open" % (size, before.st_size)),
                            retryable=False)
    finally:
        _close_quietly(fd)
    entry = copier._file_entry(item, size, digest)  # pylint: disable=protected-access
    copier.bytes_done += size
    copier._count(item, size, copied=True)  # pylint: disable=protected-access
    copier.entries.append(entry)
    if copier.progress is not None:
        copier.progress(copier.bytes_done)


class Lease:
    """The progress hook of a copy watched by the on-host guard (the ``lease_file`` option of aligned_copy).

    Each call renews the lease (the mtime of ``lease_file``) at most once per LEASE_RENEW_INTERVAL and fails
    the copy, not retryable, once the lease file is gone or LEASE_FIRED_NAME is next to it: the guard then
    released the database (or is releasing it), so the files being copied are no longer a consistent backup.
    """

    def __init__(self, lease_file: str, clock: t.Callable[[], float] = time.monotonic) -> None:
        self.lease_file = lease_file
        self.directory = os.path.dirname(lease_file) or "."
        self.fired_path = os.path.join(self.directory, LEASE_FIRED_NAME)
        self.state_path = os.path.join(self.directory, LEASE_STATE_NAME)
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
