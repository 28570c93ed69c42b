# -*- coding: utf-8 -*-
# Copyright: contributors to consistent.backup
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""Streaming one file the copy engine's way: page-aligned reads, SHA-256 in the same pass, the bytes to a writer.

This is a private module_utils file of consistent.backup: it is not part of the collection's
public API and may change without notice.

Why page-aligned: a database writes whole pages, but on Linux a read() is not atomic against a
concurrent write of the same page. Reading in whole multiples of the page size from page-aligned
offsets means a read never splits a page, so a torn page can only be one the database itself
repairs from its log (PostgreSQL full-page writes, Berkeley DB log records).

* ``stream_file`` is one worker's loop for a file that fits in a few reads (most of a database's files).
* ``Ring`` streams a larger file: the caller's thread reads, a hashing thread feeds SHA-256 and a writing thread
  writes the same page-aligned buffer, so hashing overlaps the I/O (hashlib, preadv and os.write release the GIL).
  Memory is ``len(buffers) * read_size`` whatever the file's size.
* ``hash_file`` reads a file the same way without writing it (the restore gate's check).

The writer is where the bytes go: ``os.write`` to a file of a directory sink, or a stream sink's ``write``.
"""

from __future__ import annotations

import errno
import hashlib
import mmap
import os
import queue
import threading
import typing as t

from ansible_collections.consistent.backup.plugins.module_utils._copy_plan import DEFAULT_READ_SIZE, CopyError

# Buffers in the ring: one being read, one being hashed and written, spares to absorb jitter.
RING_BUFFERS = 4
# Above this ring size fewer buffers are used (never fewer than two) to keep memory bounded.
RING_MEMORY_LIMIT = 64 * 1024 * 1024
# The writer asks the kernel to start writing back every WRITEBACK_WINDOW bytes, so the final
# fsync waits for the last window only instead of the whole file.
WRITEBACK_WINDOW = 8 * 1024 * 1024
# Inside one file the clock is looked at every PROGRESS_EVERY_READS reads, so the hot loop pays one comparison per read.
PROGRESS_EVERY_READS = 8

Reader = t.Callable[[int, memoryview, int], int]
Writer = t.Callable[[int, memoryview], int]
Opener = t.Callable[[str, int], int]


class DirectIORefused(Exception):
    """The filesystem refused an O_DIRECT read; the file is copied again without O_DIRECT."""


class WriteFailed(Exception):
    """Wraps an OSError raised on the destination side, so it is reported as a write error."""

    def __init__(self, error: OSError) -> None:
        super(WriteFailed, self).__init__(str(error))
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


class Ring:
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
                raise DirectIORefused()
            raise

    def stream(self, src_fd: int, out_fd: t.Optional[int], direct: bool = False,
               tick: t.Optional[t.Callable[[int], None]] = None) -> t.Tuple[str, int]:
        """Read ``src_fd`` to its end in ``read_size`` requests; hash it and write it to ``out_fd``.

        Returns (sha256 hex, bytes). ``out_fd`` None only hashes (the idempotence re-check).
        OSError from reading propagates; a write error is raised as ``WriteFailed``. ``tick(bytes_read)``
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
            raise WriteFailed(job.error)
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


def stream_file(src_fd: int, out_fd: t.Optional[int], view: memoryview, reader: Reader, writer: Writer,
                direct: bool = False) -> t.Tuple[str, int]:
    """Read ``src_fd`` to its end in requests of ``len(view)`` bytes from aligned offsets, hashing each and writing it to ``out_fd``.

    The loop of one worker (files that fit in a few reads: most of a database's files). Returns (sha256 hex, bytes).
    OSError from reading propagates (``DirectIORefused`` for an O_DIRECT read the filesystem refused); a write error is
    raised as ``WriteFailed``.
    """
    hasher = hashlib.sha256()
    offset = 0
    size = len(view)
    while True:
        try:
            length = reader(src_fd, view, offset)
        except OSError as exc:
            if direct and offset == 0 and exc.errno == errno.EINVAL:
                raise DirectIORefused()
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
                        raise WriteFailed(exc.with_traceback(None))
                    except Exception as exc:  # pylint: disable=broad-exception-caught
                        raise CopyError("the copy worker failed: %r; the partial copy was removed; run again" % exc.with_traceback(None))
                    if count <= 0:
                        raise WriteFailed(OSError(errno.EIO, "write returned %r" % count))
                    done += count
        offset += length
        if length < size:
            break
    return hasher.hexdigest(), offset


def hash_file(src_fd: int, read_size: int = DEFAULT_READ_SIZE) -> t.Tuple[str, int]:
    """(sha256 hex, bytes) of the open file ``src_fd``, read the engine's way (aligned requests of ``read_size``)."""
    buffer = mmap.mmap(-1, read_size)
    view = memoryview(buffer)
    try:
        return stream_file(src_fd, None, view, default_reader, default_writer)
    finally:
        view.release()
        buffer.close()
