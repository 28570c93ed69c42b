# -*- coding: utf-8 -*-
# Copyright: contributors to consistent.backup
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""The copy engine behind ``consistent.backup.aligned_copy``: the copier, its workers and ``run_copy``.

This is a private module_utils file of consistent.backup: it is not part of the collection's
public API and may change without notice.

The engine in four files, one concern each (none of them knows a medium: no drive, no changer):

* ``_copy_plan``: requests, plans, the walk, the first attempt's list, the resume journal's reader, check mode;
* ``_copy_stream``: one file read page-aligned and hashed in the same pass (``stream_file``, the ``Ring``);
* ``_copy_sink``: where files go (``DirectorySink``, the ``StreamSink`` protocol) and their durability;
* here: ``run_copy`` and ``stream_set``, which copy a plan through a sink.

``run_copy(plan, dest, backup_id, ...)`` copies into ``<dest>/<backup_id>/data/``, writes the manifest through
``_manifest`` and returns a ``CopyResult``. A file whose size or mtime moved while it was read, or that gave more or
fewer bytes than its size at open, is a change: it fails the copy (``changes="fail"``) or is recorded as a warning
(``changes="warn"``, for engines whose recovery repairs such changes from their log).

How a copy runs (``_Copier``): the calling thread walks the plan in order, creates directories and
symlinks, and opens each source file (so sources are opened in plan order); ``COPY_WORKERS`` workers
take the open files and copy them beside each other. A file that fits in a worker's page-aligned
buffer is read (each request exactly ``read_size`` bytes), hashed and written by that worker; a
larger one goes through the ring: the worker reads, a hashing thread feeds SHA-256 and a writing
thread writes the same buffer, so hashing overlaps the I/O. hashlib, preadv and os.write release
the GIL, so both cores work. Memory is ``(ring buffers + workers) * read_size`` whatever the sizes
and the number of files.

Where the files go is a sink: the ``DirectorySink`` (the default), or with ``run_copy(stream=...)`` a ``StreamSink``
(a tar stream of fixed-size records on a tape: ``_tape_stream``; ``_copy_to_stream`` below feeds it in plan order,
one file at a time, because a stream has one position). For the directory sink: a file is
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

import errno
import hashlib
import json
import mmap
import os
import queue
import stat
import threading
import time
import typing as t
from dataclasses import dataclass, field

from ansible_collections.consistent.backup.plugins.module_utils import _copy_stream
from ansible_collections.consistent.backup.plugins.module_utils import _manifest
from ansible_collections.consistent.backup.plugins.module_utils._copy_plan import (
    CHANGES_FAIL, DEFAULT_BLOCK_SIZE, DEFAULT_READ_SIZE, CopyError, CopyPlan, Item, Source, check_destination,
    discard_plan, entry_matches_item, journal_path, load_journal, mode_string, phase_row, plan_copy, plan_path,
    record_plan, retryable_errno, validate_block_sizes, validate_changes)
from ansible_collections.consistent.backup.plugins.module_utils._layout import DATA_DIR
from ansible_collections.consistent.backup.plugins.module_utils._copy_sink import DirectorySink, FileMeta, StreamSink, unlink_quietly
from ansible_collections.consistent.backup.plugins.module_utils._copy_stream import DirectIORefused, Opener, Reader, Ring, WriteFailed, Writer, stream_file

# The progress hook is called at least this often (seconds) while the copy makes progress.
PROGRESS_INTERVAL = 0.5

Progress = t.Callable[[int], None]


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
    stream: t.Dict[str, t.Any] = field(default_factory=dict)  # the stream sink's facts, returned as ``tape``

    def as_dict(self) -> t.Dict[str, t.Any]:
        return {
            "tape": dict(self.stream),
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
# Workers: files copied beside each other
# --------------------------------------------------------------------------------------------

# Files copied at once: hashlib, preadv and os.write release the GIL, so two workers keep two cores busy on a tree of
# small files (a file larger than one read goes through the ring, which has its own hashing and writing threads).
COPY_WORKERS = 2
# The resume journal: file entries vouched for by a barrier, appended after it, so a killed copy resumes without
# copying those files again. A barrier and a journal entry come at least every JOURNAL_INTERVAL seconds or
# JOURNAL_BYTES copied bytes, and at the end of every phase.
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
        self.ring = None  # type: t.Optional[Ring]
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

    def _get_ring(self) -> Ring:
        if self.ring is None:
            self.ring = Ring(self.read_size, self.reader, self.writer)
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
        return phase_row(self.rows, phase, {"files": 0, "bytes": 0, "copied": 0, "skipped_identical": 0, "bytes_copied": 0})

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
                except DirectIORefused:
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
        if entry_matches_item(old, item) and self.sink.has_copy(target, item.size):
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
        except WriteFailed as exc:
            self.sink.abort(sink_file)
            raise _write_error(exc.error, item.src, target, self.dest)
        except OSError as exc:
            self.sink.abort(sink_file)
            raise _write_error(exc, item.src, target, self.dest)
        except BaseException:
            self.sink.abort(sink_file)
            raise
        return digest, size


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
    stream: t.Optional[StreamSink] = None,
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

    With ``stream`` the files go to that stream sink instead of ``data/`` (a tar stream on a tape:
    ``_tape_stream.TarTapeSink``; see ``_copy_to_stream``); the set directory keeps the manifest.
    """
    validate_block_sizes(block_size, read_size)
    validate_changes(changes)
    set_path = check_destination(dest, backup_id)
    result = CopyResult(set_path=set_path, manifest_path=_manifest.manifest_path(set_path), read_size=read_size,
                        block_size=block_size, direct=bool(direct))
    copier = _Copier(plan, dest, set_path, block_size, read_size, bool(direct), preserve_owner,
                     reader or _copy_stream.default_reader, writer or _copy_stream.default_writer,
                     opener or _copy_stream.default_opener, result, changes=changes, progress=progress, workers=workers)
    try:
        copier.known = _manifest.entries_by_path(_manifest.load_manifest(set_path))
    except ValueError as exc:
        raise CopyError(str(exc), retryable=False)
    result.warnings.extend(plan.warnings)
    meta = {"backup_id": backup_id, "engine": engine, "block_size": block_size, "facts": facts or {}}
    started = time.monotonic()
    if stream is not None:
        def write_manifest(entries: t.List[t.Dict[str, t.Any]]) -> bytes:
            return _manifest.dumps(_manifest.merge_and_write(set_path, entries, copier.vanished, meta, changed=copier.changed))

        try:
            os.makedirs(set_path, mode=0o700, exist_ok=True)
            if plan.key is not None:
                record_plan(plan, set_path)  # a retry streams at least this list again, as with the directory sink
        except OSError as exc:
            raise _write_error(exc, "the set directory", set_path, dest)
        _copy_to_stream(plan, stream, copier, write_manifest)
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
                unlink_quietly(journal_path(set_path))
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
    unlink_quietly(journal_path(set_path))
    if plan.key is not None:
        discard_plan(set_path)
    return result


def _copy_to_stream(plan: CopyPlan, stream: StreamSink, copier: _Copier,
                    write_manifest: t.Callable[[t.List[t.Dict[str, t.Any]]], bytes]) -> None:
    """Write ``plan`` to the stream sink: ``data/<path>`` members in plan order, then ``manifest.json``.

    One file at a time (a stream has one position), each read the engine's way (aligned requests of ``read_size``,
    hashed in the same pass) by the copier's reader; a file whose size or mtime moved while it was read fails the copy
    whatever ``changes`` says, because its header already declared its size. ``write_manifest(entries)`` returns the
    manifest's bytes once every file is in the stream (``run_copy`` writes it to the set on disk there; ``stream_set``
    checks the entries against the disk set's manifest); the same bytes end the stream, so the read-back compares
    the two. The sink's ``finish`` ends the stream (a tape file ends with a filemark).
    """
    buffer = mmap.mmap(-1, copier.read_size)
    view = memoryview(buffer)
    stream.open()
    # A file of several reads goes through the engine's ring: read, hash and the stream's writes overlap (one file at a
    # time, so the stream's bytes stay in order); the out fd is unused (-1): the writer is the stream.
    ring = Ring(copier.read_size, copier.reader, lambda _fd, chunk: _stream_write(copier, stream, chunk))
    try:
        for item in plan.items:
            meta = FileMeta(item.mode, item.uid, item.gid, item.atime_ns, item.mtime_ns)
            if item.kind == "dir":
                stream.add_dir(item.rel, meta)
                copier.entries.append({"path": item.rel, "type": "dir", "size": 0, "mtime": item.mtime_ns / 1e9,
                                       "mtime_ns": item.mtime_ns, "mode": mode_string(item.mode), "phase": item.phase})
            elif item.kind == "symlink":
                stream.add_symlink(item.rel, item.target, meta)
                copier.result.symlinks += 1
                copier.entries.append({"path": item.rel, "type": "symlink", "size": item.size, "mtime": item.mtime_ns / 1e9,
                                       "mtime_ns": item.mtime_ns, "mode": mode_string(item.mode), "phase": item.phase,
                                       "target": item.target})
            else:
                _stream_one_file(copier, stream, ring, item, view)
            copier._row(item.phase)  # pylint: disable=protected-access
        walked = set(entry["path"] for entry in copier.entries if entry["type"] == "dir")
        for rel in plan.create_dirs:
            if rel not in walked:
                now_ns = time.time_ns()
                stream.add_dir(rel, FileMeta(0o700, os.geteuid(), os.getegid(), mtime_ns=now_ns))
                copier.entries.append({"path": rel, "type": "dir", "size": 0, "mtime": now_ns / 1e9, "mtime_ns": now_ns,
                                       "mode": "0700", "phase": 0})
        manifest_bytes = write_manifest(copier.entries)
        stream.add_manifest(manifest_bytes)
        stream.finish()
    except (OSError,) + stream.errors as exc:
        raise stream.error(exc) from None
    finally:
        ring.close()
        stream.close()
        view.release()
        buffer.close()
    copier.result.stream = dict(stream.facts(), manifest_sha256=hashlib.sha256(manifest_bytes).hexdigest())


def stream_set(set_path: str, stream: StreamSink, read_size: int = DEFAULT_READ_SIZE) -> CopyResult:
    """Write a COMPLETE set on disk (``<set>/data`` and its manifest) to a stream sink (disk, then tape).

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
                     _copy_stream.default_reader, _copy_stream.default_writer, _copy_stream.default_opener, result)
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
    _copy_to_stream(plan, stream, copier, check_against_manifest)
    result.seconds = time.monotonic() - started
    return result


def _stream_write(copier: _Copier, stream: StreamSink, chunk: memoryview) -> int:
    written = stream.write(chunk)
    if copier.tick is not None:
        copier.tick()  # the guard's lease is renewed inside a large file too
    return written


def _stream_one_file(copier: _Copier, stream: StreamSink, ring: Ring, item: Item, view: memoryview) -> None:
    opened = copier._open_checked(item)  # pylint: disable=protected-access
    if opened is None:
        return
    fd, direct, before = opened
    try:
        stream.begin_file(item.rel, before.st_size, FileMeta(item.mode, item.uid, item.gid, item.atime_ns, item.mtime_ns))
        try:
            if before.st_size >= copier.read_size:
                digest, size = ring.stream(fd, -1, direct, copier.tick)
            else:
                digest, size = stream_file(fd, -1, view, copier.reader, lambda _fd, chunk: _stream_write(copier, stream, chunk), direct)
        except DirectIORefused:
            raise CopyError("source %s refused O_DIRECT; copy to tape with direct: false" % item.src, retryable=False)
        except WriteFailed as exc:
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
