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
* ``summarize_plan(plan, set_path)`` answers "what would a copy do?" for check mode.
* ``run_copy(plan, dest, backup_id, ...)`` copies into ``<dest>/<backup_id>/data/``, writes the
  manifest through ``_manifest`` and returns a ``CopyResult``.

Every regular file is streamed through a small fixed ring of page-aligned buffers: the calling
thread reads (each request exactly ``read_size`` bytes), a hashing thread feeds SHA-256 and a
writing thread writes the same buffer, so hashing overlaps the I/O and memory stays
``buffers * read_size`` whatever the file size. hashlib and os.write release the GIL on large
buffers, so the two workers really run beside the reader.
"""

from __future__ import annotations

import errno
import fnmatch
import hashlib
import mmap
import os
import queue
import stat
import tempfile
import threading
import time
import typing as t
from dataclasses import dataclass, field

from ansible_collections.consistent.backup.plugins.module_utils._fsutil import fsync_dir
from ansible_collections.consistent.backup.plugins.module_utils import _manifest

DEFAULT_BLOCK_SIZE = 8192
DEFAULT_READ_SIZE = 1024 * 1024
# Buffers in the ring: one being read, one being hashed and written, spares to absorb jitter.
RING_BUFFERS = 4
# Above this ring size fewer buffers are used (never fewer than two) to keep memory bounded.
RING_MEMORY_LIMIT = 64 * 1024 * 1024
# The writer asks the kernel to start writing back every WRITEBACK_WINDOW bytes, so the final
# fsync waits for the last window only instead of the whole file.
WRITEBACK_WINDOW = 8 * 1024 * 1024
COMPLETE_MARKER = "COMPLETE"
DATA_DIR = "data"

Reader = t.Callable[[int, memoryview, int], int]
Writer = t.Callable[[int, memoryview], int]
Opener = t.Callable[[str, int], int]


class CopyError(Exception):
    """A copy that cannot go on; the message names the object, what was found and what to do."""


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
class CopyPlan:
    """What a copy will do, in order. ``vanished`` lists paths already gone during the walk."""

    items: t.List[Item] = field(default_factory=list)
    create_dirs: t.List[str] = field(default_factory=list)
    vanished: t.List[str] = field(default_factory=list)
    warnings: t.List[str] = field(default_factory=list)


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

    def as_dict(self) -> t.Dict[str, t.Any]:
        return {
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
        }


def mode_string(mode: int) -> str:
    """Permission bits as the manifest stores them, e.g. ``0600``."""
    return "%04o" % stat.S_IMODE(mode)


def set_path_for(dest: str, backup_id: str) -> str:
    """The backup set directory of ``backup_id`` under the destination root ``dest``."""
    return os.path.join(dest, backup_id)


def _has_parent_reference(path: str) -> bool:
    return any(part == ".." for part in path.split("/"))


def validate_block_sizes(block_size: int, read_size: int) -> None:
    """Refuse a block size or read size that would break page alignment."""
    if block_size <= 0:
        raise CopyError("block_size must be a positive page size in bytes (e.g. 8192 for PostgreSQL); found %d" % block_size)
    if read_size <= 0 or read_size % block_size:
        raise CopyError(
            "read_size %d is not a positive multiple of block_size %d: every read must cover whole pages; "
            "choose read_size = N * %d (e.g. %d)" % (read_size, block_size, block_size, max(1, DEFAULT_READ_SIZE // block_size) * block_size)
        )


def normalize_sources(raw: t.Sequence[t.Dict[str, t.Any]]) -> t.List[Source]:
    """Validate the ``sources`` option and fill in defaults."""
    if not raw:
        raise CopyError("sources is empty: give at least one {path: /absolute/path} to copy")
    sources = []
    for index, entry in enumerate(raw):
        path = entry.get("path")
        if not path or not os.path.isabs(path):
            raise CopyError(
                "sources[%d].path must be an absolute path; found %r; write it from / (e.g. /var/lib/postgresql/15/main)" % (index, path)
            )
        path = os.path.normpath(path)
        dest = entry.get("dest")
        if dest is None or dest == "":
            dest = path.lstrip("/") or "root"
        dest = str(dest)
        if os.path.isabs(dest) or _has_parent_reference(dest):
            raise CopyError(
                "sources[%d].dest must be a path relative to the set's data/ directory without '..'; found %r; "
                "write e.g. pgdata" % (index, dest)
            )
        dest = os.path.normpath(dest)
        if dest in (".", ""):
            raise CopyError("sources[%d].dest must name a path inside data/; found %r; write e.g. pgdata" % (index, entry.get("dest")))
        phase = entry.get("phase", 0)
        phase = 0 if phase is None else int(phase)
        if phase < 0:
            raise CopyError("sources[%d].phase must be 0 or more; found %d" % (index, phase))
        exclude = [str(p) for p in (entry.get("exclude") or [])]
        sources.append(Source(path=path, dest=dest, exclude=exclude, phase=phase, allow_vanished=bool(entry.get("allow_vanished", False))))
    return sources


def validate_request(dest: str, backup_id: str, sources: t.Sequence[Source], create_dirs: t.Sequence[str] = ()) -> str:
    """Check the destination, the id and the sources against each other; return the set path."""
    if not dest or not os.path.isabs(dest):
        raise CopyError("dest must be an absolute path (the backup destination root); found %r" % (dest,))
    if not backup_id or "/" in backup_id or backup_id in (".", ".."):
        raise CopyError("backup_id must be a single path component (no '/'); found %r; use e.g. 20240101T000000" % (backup_id,))
    for rel in create_dirs:
        if not rel or os.path.isabs(rel) or _has_parent_reference(rel):
            raise CopyError("create_dirs entry %r must be a path relative to data/ without '..'; write e.g. pgdata/pg_wal/archive_status" % (rel,))
    real_dest = os.path.realpath(dest)
    for source in sources:
        real_source = os.path.realpath(source.path)
        if real_dest == real_source or real_dest.startswith(real_source.rstrip("/") + "/"):
            raise CopyError(
                "backup destination %s (real path %s) is inside source %s: the copy would copy itself; "
                "choose a destination outside every source" % (dest, real_dest, source.path)
            )
    return check_destination(dest, backup_id)


def check_destination(dest: str, backup_id: str) -> str:
    """The destination root exists and the set is not COMPLETE yet; return the set path.

    A missing root is refused rather than created: an unmounted medium would otherwise be
    filled on the root filesystem under its mount point.
    """
    if not os.path.isdir(dest):
        raise CopyError(
            "backup destination %s does not exist or is not a directory; mount the medium (consistent.backup.mount_check) "
            "or create the directory first" % dest
        )
    set_path = set_path_for(dest, backup_id)
    if os.path.exists(os.path.join(set_path, COMPLETE_MARKER)):
        raise CopyError(
            "backup set %s is already marked COMPLETE by an earlier run; choose a new backup_id or remove the set" % set_path
        )
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
            "for this source if files may disappear (e.g. dropped relations), or quiesce the database first" % (what, path)
        )

    def walk_source(self, source: Source) -> None:
        try:
            st = os.stat(source.path)
        except FileNotFoundError:
            if source.allow_vanished:
                self.plan.vanished.append(source.dest)
                return
            raise CopyError(
                "source %s does not exist; check the path (is the database on this host?), or set allow_vanished: true "
                "for this source if it may be absent" % source.path
            )
        except OSError as exc:
            raise CopyError("cannot stat source %s: %s; check its permissions" % (source.path, exc.strerror))
        if stat.S_ISDIR(st.st_mode):
            self.plan.items.append(_item_from_stat("dir", source.path, source.dest, source, st))
            self._walk_dir(source, source.path, "")
        elif stat.S_ISREG(st.st_mode):
            if not is_excluded(os.path.basename(source.path), source.exclude):
                self.plan.items.append(_item_from_stat("file", source.path, source.dest, source, st))
        else:
            raise CopyError(
                "source %s is neither a regular file nor a directory (mode %s); name a file or a directory tree"
                % (source.path, stat.filemode(st.st_mode))
            )

    def _walk_dir(self, source: Source, directory: str, rel_dir: str) -> None:
        try:
            with os.scandir(directory) as iterator:
                entries = sorted(iterator, key=lambda e: e.name)
        except FileNotFoundError:
            self._gone(source, directory, self._dest_rel(source, rel_dir), "directory")
            return
        except OSError as exc:
            raise CopyError("cannot list directory %s: %s; check its permissions" % (directory, exc.strerror))
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
                raise CopyError("cannot read %s: %s; check its permissions" % (entry.path, exc.strerror))

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

    A file counts as identical when the set's manifest has it with the source's size, mtime and
    mode and the copy on the medium has that size. Unlike a real run, check mode does not re-read
    the source to compare checksums (an audit should not read a whole database), so a file changed
    without a new mtime is only caught by the real run.
    """
    try:
        known = _manifest.entries_by_path(_manifest.load_manifest(set_path))
    except ValueError as exc:
        raise CopyError(str(exc))
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
    return summary


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

    def stream(self, src_fd: int, out_fd: t.Optional[int], direct: bool = False) -> t.Tuple[str, int]:
        """Read ``src_fd`` to its end in ``read_size`` requests; hash it and write it to ``out_fd``.

        Returns (sha256 hex, bytes). ``out_fd`` None only hashes (the idempotence re-check).
        OSError from reading propagates; a write error is raised as ``_WriteFailed``.
        """
        job = _Job(out_fd)
        offset = 0
        queued = False
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


class _Copier:
    def __init__(self, plan: CopyPlan, dest: str, set_path: str, block_size: int, read_size: int, direct: bool,
                 preserve_owner: bool, reader: Reader, writer: Writer, opener: Opener, result: CopyResult) -> None:
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
        self.ring = None  # type: t.Optional[_Ring]
        self.known = {}  # type: t.Dict[str, t.Dict[str, t.Any]]
        self.entries = []  # type: t.List[t.Dict[str, t.Any]]
        self.vanished = list(plan.vanished)
        self.dirty_dirs = set()  # type: t.Set[str]
        self.existing_dirs = set()  # type: t.Set[str]
        self.dir_modes = []  # type: t.List[t.Tuple[str, Item]]
        self.rows = {}  # type: t.Dict[int, t.Dict[str, t.Any]]

    # -- helpers -------------------------------------------------------------------------

    def _get_ring(self) -> _Ring:
        if self.ring is None:
            self.ring = _Ring(self.read_size, self.reader, self.writer)
        return self.ring

    def close(self) -> None:
        if self.ring is not None:
            self.ring.close()
            self.ring = None

    def _dest_error(self, exc: OSError, what: str, path: str) -> CopyError:
        return CopyError("%s %s on %s failed: [Errno %s] %s; check the medium (mounted read-write? space left?) and run again"
                         % (what, path, self.dest, exc.errno, exc.strerror))

    def _ensure_dir(self, path: str) -> None:
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
                                    % directory)
                continue
            except OSError as exc:
                raise self._dest_error(exc, "creating directory", directory)
            self.result.dirs_created += 1
            self.result.changed = True
            self.dirty_dirs.add(os.path.dirname(directory))
        self.existing_dirs.add(path)

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
        self.direct = False
        self.result.direct = False
        self.result.warnings.append(
            "the filesystem of %s refused O_DIRECT (e.g. tmpfs); copying through the page cache instead" % path)

    # -- items ----------------------------------------------------------------------------

    def run(self) -> None:
        self._ensure_dir(self.data_root)
        for item in self.plan.items:
            target = os.path.join(self.data_root, item.rel)
            if item.kind == "dir":
                self._copy_dir(item, target)
            elif item.kind == "symlink":
                self._copy_symlink(item, target)
            else:
                self._copy_file(item, target)
        for rel in self.plan.create_dirs:
            self._ensure_dir(os.path.join(self.data_root, rel))
        # Recorded once all of them exist, so a parent's mtime does not move after it was recorded.
        walked = set(entry["path"] for entry in self.entries if entry["type"] == "dir")
        for rel in self.plan.create_dirs:
            if rel not in walked:
                self._record_created_dir(rel)
        # Directory modes last: a read-only source directory must not stop us filling its copy.
        for target, item in self.dir_modes:
            self._set_dir_mode(target, item)
        # One fsync per directory that gained entries, before the manifest declares them present.
        for directory in sorted(self.dirty_dirs, key=len, reverse=True):
            try:
                fsync_dir(directory)
            except OSError as exc:
                raise self._dest_error(exc, "syncing directory", directory)

    def _copy_dir(self, item: Item, target: str) -> None:
        if os.path.islink(target) or (os.path.lexists(target) and not os.path.isdir(target)):
            try:
                os.unlink(target)
            except OSError as exc:
                raise self._dest_error(exc, "replacing non-directory", target)
        self._ensure_dir(target)
        self.dir_modes.append((target, item))
        self._row(item.phase)
        self.entries.append({"path": item.rel, "type": "dir", "size": 0, "mtime": item.mtime_ns / 1e9,
                             "mtime_ns": item.mtime_ns, "mode": mode_string(item.mode), "phase": item.phase})

    def _set_dir_mode(self, target: str, item: Item) -> None:
        try:
            st = os.lstat(target)
            if self.chown and (st.st_uid, st.st_gid) != (item.uid, item.gid):
                os.lchown(target, item.uid, item.gid)
                self.result.changed = True
            if stat.S_IMODE(st.st_mode) != item.mode:
                os.chmod(target, item.mode)
                self.result.changed = True
        except OSError as exc:
            raise self._dest_error(exc, "setting owner/mode of directory", target)

    def _record_created_dir(self, rel: str) -> None:
        st = os.stat(os.path.join(self.data_root, rel))
        self.entries.append({"path": rel, "type": "dir", "size": 0, "mtime": st.st_mtime_ns / 1e9, "mtime_ns": st.st_mtime_ns,
                             "mode": mode_string(st.st_mode), "phase": 0})

    def _copy_symlink(self, item: Item, target: str) -> None:
        parent = os.path.dirname(target)
        self._ensure_dir(parent)
        self.result.symlinks += 1
        self._row(item.phase)
        entry = {"path": item.rel, "type": "symlink", "size": item.size, "mtime": item.mtime_ns / 1e9,
                 "mtime_ns": item.mtime_ns, "mode": mode_string(item.mode), "phase": item.phase, "target": item.target}
        if not (os.path.islink(target) and os.readlink(target) == item.target):
            temp = os.path.join(parent, ".%s.%d.symlink" % (os.path.basename(target), os.getpid()))
            try:
                if os.path.lexists(temp):
                    os.unlink(temp)
                os.symlink(item.target, temp)
                if self.chown:
                    os.lchown(temp, item.uid, item.gid)
                os.rename(temp, target)
            except OSError as exc:
                try:
                    os.unlink(temp)
                except OSError:
                    pass
                raise self._dest_error(exc, "creating symlink", target)
            self.dirty_dirs.add(parent)
            self.result.changed = True
        self.entries.append(entry)

    def _file_entry(self, item: Item, size: int, digest: str) -> t.Dict[str, t.Any]:
        return {"path": item.rel, "type": "file", "size": size, "sha256": digest, "mtime": item.mtime_ns / 1e9,
                "mtime_ns": item.mtime_ns, "mode": mode_string(item.mode), "phase": item.phase}

    def _vanished(self, item: Item) -> None:
        if not item.allow_vanished:
            raise CopyError(
                "source file %s vanished before it could be copied; the source is changing under the copy: set "
                "allow_vanished: true for this source if files may disappear (e.g. dropped relations), or quiesce the "
                "database first" % item.src)
        self.vanished.append(item.rel)

    def _copy_file(self, item: Item, target: str) -> None:
        while True:
            try:
                self._copy_file_once(item, target)
                return
            except _DirectIORefused:
                self._direct_refused(item.src)

    def _copy_file_once(self, item: Item, target: str) -> None:
        parent = os.path.dirname(target)
        self._ensure_dir(parent)
        try:
            fd, direct = self._open_source(item.src)
        except FileNotFoundError:
            self._vanished(item)
            return
        except OSError as exc:
            raise CopyError("cannot open source file %s: [Errno %s] %s; check that it is a regular file readable by this user"
                            % (item.src, exc.errno, exc.strerror))
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise CopyError("source %s is no longer a regular file (now %s); quiesce the database and run again"
                                % (item.src, stat.filemode(st.st_mode)))
            # The metadata recorded is the one seen at open: a later change gives a newer mtime,
            # so the next run copies the file again rather than trusting this copy.
            item.size, item.mtime_ns, item.atime_ns = st.st_size, st.st_mtime_ns, st.st_atime_ns
            item.mode, item.uid, item.gid = stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
            except (OSError, AttributeError):
                pass
            old = self.known.get(item.rel)
            if _entry_matches_item(old, item) and _target_has_size(target, item.size):
                digest, size = self._read_source(fd, item, direct, None)
                if old is not None and digest == old.get("sha256") and size == old.get("size"):
                    self._count(item, size, copied=False)
                    self.entries.append(dict(old, phase=item.phase))
                    return
            digest, size = self._write_target(fd, item, target, direct)
            self._count(item, size, copied=True)
            self.entries.append(self._file_entry(item, size, digest))
        finally:
            os.close(fd)

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

    def _read_source(self, fd: int, item: Item, direct: bool, out_fd: t.Optional[int]) -> t.Tuple[str, int]:
        try:
            return self._get_ring().stream(fd, out_fd, direct)
        except OSError as exc:
            raise CopyError("reading source file %s failed: [Errno %s] %s; check the source device and run again"
                            % (item.src, exc.errno, exc.strerror))

    def _write_target(self, fd: int, item: Item, target: str, direct: bool) -> t.Tuple[str, int]:
        parent = os.path.dirname(target)
        try:
            out_fd, temp = tempfile.mkstemp(prefix=".%s." % os.path.basename(target), suffix=".partial", dir=parent)
        except OSError as exc:
            raise CopyError(_write_error_message(exc, item.src, target, self.dest))
        try:
            try:
                digest, size = self._read_source(fd, item, direct, out_fd)
                if self.chown:
                    os.fchown(out_fd, item.uid, item.gid)
                os.fchmod(out_fd, item.mode)
                os.utime(out_fd, ns=(item.atime_ns, item.mtime_ns))
                os.fsync(out_fd)
            finally:
                os.close(out_fd)
            os.rename(temp, target)
        except _WriteFailed as exc:
            _unlink_quietly(temp)
            raise CopyError(_write_error_message(exc.error, item.src, target, self.dest))
        except OSError as exc:
            _unlink_quietly(temp)
            raise CopyError(_write_error_message(exc, item.src, target, self.dest))
        except BaseException:
            _unlink_quietly(temp)
            raise
        self.dirty_dirs.add(parent)
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
) -> CopyResult:
    """Copy ``plan`` into ``<dest>/<backup_id>/data/`` and merge it into the set's manifest.

    Call ``validate_request`` before planning (it also refuses a destination inside a source);
    ``run_copy`` itself re-checks the block sizes, the destination root and the COMPLETE marker.

    ``reader(fd, buffer, offset)``, ``writer(fd, buffer)`` and ``opener(path, flags)`` replace the
    os primitives (tests use them to check alignment, order and write failures). Raises CopyError.
    Files copied before a failure are still recorded in the manifest (best effort), so a retry
    skips them when they are unchanged.
    """
    validate_block_sizes(block_size, read_size)
    set_path = check_destination(dest, backup_id)
    result = CopyResult(set_path=set_path, manifest_path=_manifest.manifest_path(set_path), read_size=read_size,
                        block_size=block_size, direct=bool(direct))
    copier = _Copier(plan, dest, set_path, block_size, read_size, bool(direct), preserve_owner,
                     reader or default_reader, writer or default_writer, opener or default_opener, result)
    try:
        copier.known = _manifest.entries_by_path(_manifest.load_manifest(set_path))
    except ValueError as exc:
        raise CopyError(str(exc))
    result.warnings.extend(plan.warnings)
    meta = {"backup_id": backup_id, "engine": engine, "block_size": block_size, "facts": facts or {}}
    started = time.monotonic()
    try:
        copier.run()
    except BaseException:
        copier.close()
        if copier.entries:
            try:
                _manifest.merge_and_write(set_path, copier.entries, copier.vanished, meta)
            except (OSError, ValueError):
                pass  # the copy error is the one to report; a retry rebuilds the manifest
        raise
    copier.close()
    result.seconds = time.monotonic() - started
    result.vanished = list(copier.vanished)
    result.phases = [copier.rows[p] for p in sorted(copier.rows)]
    try:
        _manifest_data, written = _manifest.merge_and_write_changed(set_path, copier.entries, copier.vanished, meta)
    except OSError as exc:
        raise CopyError(_write_error_message(exc, "the manifest", _manifest.manifest_path(set_path), dest))
    except ValueError as exc:
        raise CopyError(str(exc))
    result.manifest_written = written
    result.changed = result.changed or written
    return result
