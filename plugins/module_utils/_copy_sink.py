# -*- coding: utf-8 -*-
# Copyright: contributors to consistent.backup
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""Where the copy engine's files go (its sinks) and how they become durable.

This is a private module_utils file of consistent.backup: it is not part of the collection's
public API and may change without notice.

The engine (``_copy``) knows no medium: it writes through one of two sinks and imports neither a drive nor a changer.

* ``DirectorySink`` (the default, for a set on disk): a file is written under a temporary name, gets its owner, mode
  and mtime, has its writeback started and is renamed. Durability is batched: a barrier (one syncfs(2) per
  filesystem, else an fsync of every file and of every directory that gained a name) makes everything committed so
  far durable, and nothing vouches for a file before its barrier.
* ``StreamSink``: a destination with one position (a tar stream of fixed-size records on a tape: ``_tape_stream``
  holds the one there is, over ``_tar_sink`` and ``_tape``); the engine feeds it in plan order, one file at a time.

``copy_file`` is the one-file entry of the engine (the restores use it), ``start_writeback`` and ``syncfs`` the
durability primitives.
"""

from __future__ import annotations

import ctypes
import errno
import itertools
import mmap
import os
import re
import threading
import typing as t
from dataclasses import dataclass

from ansible_collections.consistent.backup.plugins.module_utils._fsutil import fsync_dir
from ansible_collections.consistent.backup.plugins.module_utils._copy_plan import DEFAULT_READ_SIZE, CopyError, retryable_errno, target_has_size
from ansible_collections.consistent.backup.plugins.module_utils._copy_stream import WriteFailed, default_reader, default_writer, stream_file


def unlink_quietly(path: str) -> None:
    """Remove ``path`` if it is there (what is left of a failed or finished step)."""
    try:
        os.unlink(path)
    except OSError:
        pass


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
            unlink_quietly(temp)
            raise self._error(exc, "creating symlink", path)
        with self.lock:
            self.dirty_dirs.add(os.path.dirname(path))
            self.changed = True

    def note_dir_changed(self, path: str) -> None:
        """A directory's own mode or owner changed: the next barrier makes that durable too."""
        with self.lock:
            self.dirty_dirs.add(path)

    def has_copy(self, path: str, size: int) -> bool:
        return target_has_size(path, size)

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
        unlink_quietly(sink_file.temp)

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
                    unlink_quietly(path)
                    removed.append(path)
        return removed


class StreamSink:
    """The stream destination of the copy engine: one position, so one file at a time, in plan order.

    ``_copy.run_copy(stream=...)`` and ``_copy.stream_set`` write through these calls (``_tape_stream.TarTapeSink``
    is a tar stream on a tape). Paths are relative to the set's ``data/``; ``meta`` is the item's ``FileMeta``.

    * ``open()`` before the first byte (raises CopyError); ``close()`` always, after ``finish()`` or a failure;
    * ``add_dir(path, meta)``, ``add_symlink(path, link_target, meta)``: the tree's directories and links;
    * ``begin_file(path, size, meta)``, then ``write(chunk)`` (returns the bytes taken) until ``size`` bytes, then
      ``end_file()``: a member declares its size before its bytes, so a file must not change while it is written;
    * ``add_manifest(data)`` once every file is in, ``finish()`` ends the stream (for a tape: a filemark);
    * ``errors``: the exceptions of the medium, which ``error(exc)`` (as for an OSError) turns into a CopyError that
      names the device; ``facts()``: what the stream was (returned as ``tape`` by aligned_copy).
    """

    errors = ()  # type: t.Tuple[t.Type[BaseException], ...]

    def open(self) -> None:
        raise NotImplementedError

    def add_dir(self, path: str, meta: FileMeta) -> None:
        raise NotImplementedError

    def add_symlink(self, path: str, link_target: str, meta: FileMeta) -> None:
        raise NotImplementedError

    def begin_file(self, path: str, size: int, meta: FileMeta) -> None:
        raise NotImplementedError

    def write(self, chunk: memoryview) -> int:
        raise NotImplementedError

    def end_file(self) -> None:
        raise NotImplementedError

    def add_manifest(self, data: bytes) -> None:
        raise NotImplementedError

    def finish(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def error(self, exc: BaseException) -> CopyError:
        raise NotImplementedError

    def facts(self) -> t.Dict[str, t.Any]:
        raise NotImplementedError


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
        except WriteFailed as exc:
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
