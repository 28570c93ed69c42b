# -*- coding: utf-8 -*-
# Copyright: contributors to consistent.backup
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""The tape destination of the copy engine: one tar stream per backup set, in records of one fixed size, then a filemark.

This is a private module_utils file of consistent.backup: it is not part of the collection's public API and may
change without notice.

* ``RecordWriter`` turns a byte stream into write(2) calls of exactly ``record_size`` bytes (the last record padded
  with zeros): a tape written in records of one size is read back with reads of that size, whatever wrote it.
* ``TarStream`` writes POSIX tar members (ustar headers, pax extended headers where ustar cannot hold a name or a
  size) to a RecordWriter: the set's files as ``data/<path>``, then ``manifest.json`` last, then the end-of-archive
  blocks. GNU tar, bsdtar and Python's tarfile read it (``tar -b <record_size/512> -xf /dev/nst0``).
* ``TapeTarget`` opens the drive, checks the tape is where the catalog says the set goes (file number, start of a
  file), refuses a record size that is not a multiple of the drive's block size, writes, and ends with a filemark.
* ``read_back`` positions on the set's file, reads the stream record by record and compares every member with the
  manifest (size and SHA-256), and the stream's manifest with the one on disk.

``_tape_stream.TarTapeSink`` puts these behind the copy engine's ``StreamSink`` protocol: the engine (``_copy``)
feeds the stream in plan order; the copy rules (page-aligned reads, changes detected, the manifest written through
``_manifest``) are the engine's, not repeated here.
"""

from __future__ import annotations

import hashlib
import tarfile
import typing as t
from dataclasses import dataclass

from ansible_collections.consistent.backup.plugins.module_utils._tape import Drive, TapeError, TapeOps

TAR_BLOCK = 512
DEFAULT_RECORD_SIZE = 256 * 1024
RECORD_SIZE_MAX = 16 * 1024 * 1024
DATA_PREFIX = "data/"
MANIFEST_MEMBER = "manifest.json"


class TarSinkError(Exception):
    """The stream cannot go on; the message names the device, what was expected, what was found and what to do."""


@dataclass
class TarSpec:
    """The aligned_copy option ``sink: {kind: tar, ...}``, validated."""

    device: str
    record_size: int = DEFAULT_RECORD_SIZE
    file_number: int = -1  # where the set goes (from the media role's positioning); -1 = wherever the tape is
    volume: str = ""
    block_size: int = 0  # the volume's block size (0 = variable); the record size must be a multiple of it


def record_size_problem(record_size: int, block_size: int) -> str:
    if record_size <= 0 or record_size % TAR_BLOCK or record_size > RECORD_SIZE_MAX:
        return "record_size %d is not a multiple of %d from %d to %d bytes" % (record_size, TAR_BLOCK, TAR_BLOCK, RECORD_SIZE_MAX)
    if block_size and record_size % block_size:
        return ("record_size %d is not a multiple of the volume's block size %d; use a multiple of it (a tape's block size "
                "is fixed per volume)" % (record_size, block_size))
    return ""


class RecordWriter:
    """Bytes in, write calls of exactly ``record_size`` out."""

    def __init__(self, write: t.Callable[[memoryview], int], record_size: int) -> None:
        self.write = write
        self.record_size = record_size
        self.buffer = bytearray(record_size)
        self.view = memoryview(self.buffer)
        self.fill = 0
        self.records = 0
        self.bytes = 0

    def feed(self, data: t.Any) -> None:
        data = memoryview(data).cast("B")
        offset = 0
        while offset < len(data):
            take = min(len(data) - offset, self.record_size - self.fill)
            self.view[self.fill:self.fill + take] = data[offset:offset + take]
            self.fill += take
            offset += take
            if self.fill == self.record_size:
                self._emit()

    def _emit(self) -> None:
        written = self.write(self.view)
        if written != self.record_size:
            raise TarSinkError("a record of %d bytes was written as %d bytes (record %d); the drive or its block size "
                               "does not take this record size" % (self.record_size, written, self.records))
        self.records += 1
        self.bytes += self.record_size
        self.fill = 0

    def finish(self) -> None:
        """Pad the last record with zeros and write it."""
        if self.fill:
            self.view[self.fill:] = bytes(self.record_size - self.fill)
            self.fill = self.record_size
            self._emit()


class TarStream:
    """POSIX tar members written to a RecordWriter."""

    def __init__(self, records: RecordWriter) -> None:
        self.records = records
        self.members = 0
        self.open_member = None  # type: t.Optional[t.List[int]]  # [declared size, written]

    def _header(self, info: tarfile.TarInfo) -> None:
        self.records.feed(info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))
        self.members += 1

    @staticmethod
    def _info(name: str, kind: bytes, mode: int, uid: int, gid: int, mtime_ns: int, size: int = 0) -> tarfile.TarInfo:
        info = tarfile.TarInfo(name)
        info.type = kind
        info.mode = mode & 0o7777
        info.uid, info.gid = max(uid, 0), max(gid, 0)
        info.mtime = mtime_ns // 1000000000  # whole seconds fit ustar (a float asks for a pax header per member)
        info.size = size
        return info

    def add_dir(self, name: str, mode: int, uid: int, gid: int, mtime_ns: int) -> None:
        self._header(self._info(name.rstrip("/") + "/", tarfile.DIRTYPE, mode, uid, gid, mtime_ns))

    def add_symlink(self, name: str, target: str, mode: int, uid: int, gid: int, mtime_ns: int) -> None:
        info = self._info(name, tarfile.SYMTYPE, mode, uid, gid, mtime_ns)
        info.linkname = target
        self._header(info)

    def begin_file(self, name: str, size: int, mode: int, uid: int, gid: int, mtime_ns: int) -> None:
        self._header(self._info(name, tarfile.REGTYPE, mode, uid, gid, mtime_ns, size))
        self.open_member = [size, 0]

    def file_data(self, data: t.Any) -> int:
        """Bytes of the open member; never more than its header declared (the engine then reports the change)."""
        member = self.open_member
        if member is None:
            raise RuntimeError("tar sink: file data with no open member (the engine calls begin_file first)")
        length = len(data)
        room = member[0] - member[1]
        if length > room:
            data = memoryview(data)[:room]
        self.records.feed(data)
        member[1] += min(length, room)
        return length

    def end_file(self) -> int:
        """Close the member (zero-filled up to its declared size, then to a 512-byte block); the bytes it got."""
        member = self.open_member
        if member is None:
            raise RuntimeError("tar sink: end of a file with no open member (the engine calls begin_file first)")
        self.open_member = None
        declared, written = member
        if written < declared:
            self.records.feed(bytes(declared - written))
        if declared % TAR_BLOCK:
            self.records.feed(bytes(TAR_BLOCK - declared % TAR_BLOCK))
        return written

    def add_bytes(self, name: str, data: bytes, mode: int = 0o600, mtime_ns: int = 0) -> None:
        self.begin_file(name, len(data), mode, 0, 0, mtime_ns)
        self.file_data(data)
        self.end_file()

    def close(self) -> None:
        self.records.feed(bytes(2 * TAR_BLOCK))
        self.records.finish()


class TapeTarget:
    """The drive a set is written to: position checked, records written, a filemark at the end."""

    def __init__(self, spec: TarSpec, ops: TapeOps) -> None:
        self.spec = spec
        problem = record_size_problem(spec.record_size, spec.block_size)
        if problem:
            raise TarSinkError("tape %s: %s" % (spec.device, problem))
        self.drive = Drive(spec.device, ops, write=True)
        try:
            self.file_number = self._position()
        except BaseException:
            self.drive.close()
            raise

    def _position(self) -> int:
        status = self.drive.status()
        if status["write_protected"]:
            raise TarSinkError("tape %s: expected a writable tape, found it write-protected (WR_PROT set); load a writable "
                               "volume or remove the write tab" % self.spec.device)
        drive_block = int(status["block_size"])
        if drive_block and self.spec.record_size % drive_block:
            raise TarSinkError("tape %s: record_size %d is not a multiple of the drive's block size %d; use the volume's "
                               "record size" % (self.spec.device, self.spec.record_size, drive_block))
        wanted = self.spec.file_number
        if wanted < 0:
            return int(status["file_number"])
        if (status["file_number"], status["block_number"]) != (wanted, 0):
            # A retry after a failed attempt, or a drive that moved: go back to the start of the set's file.
            try:
                self.drive.to_file(wanted)
            except TapeError as exc:
                raise TarSinkError("tape %s: expected to write at the start of file %d, but the tape could not be spaced "
                                   "there (%s); the tape holds fewer files than its catalog: check the volume and run the "
                                   "backup again" % (self.spec.device, wanted, exc))
            status = self.drive.status()
            if (status["file_number"], status["block_number"]) != (wanted, 0):
                raise TarSinkError("tape %s: expected to write at the start of file %d, found file %s block %s; the tape "
                                   "does not match its catalog: run the backup again (the media role positions the tape)"
                                   % (self.spec.device, wanted, status["file_number"], status["block_number"]))
        return wanted

    def write(self, view: memoryview) -> int:
        """One record; an OSError propagates as it is (the engine's writer thread reports it as a write error)."""
        return self.drive.ops.write(self.drive.fd, view)

    def finish(self) -> None:
        """The filemark that ends the set's tape file (st also writes one at close after a write; one is enough)."""
        self.drive.filemark()

    def close(self) -> None:
        self.drive.close()


# --------------------------------------------------------------------------------------------
# Reading a set back
# --------------------------------------------------------------------------------------------


class _RecordReader:
    """A file object over the drive's records for tarfile's stream mode; every record must be ``record_size``."""

    def __init__(self, drive: Drive, record_size: int) -> None:
        self.drive = drive
        self.record_size = record_size
        self.pending = memoryview(b"")
        self.records = 0
        self.ended = False

    def read(self, size: int = -1) -> bytes:
        out = []
        wanted = size if size >= 0 else 1 << 62
        while wanted > 0:
            if not self.pending:
                if self.ended:
                    break
                record = self.drive.read(self.record_size)
                if not record:
                    self.ended = True  # the filemark
                    break
                if len(record) != self.record_size:
                    raise TarSinkError("tape %s: record %d is %d bytes, the set was written in records of %d bytes"
                                       % (self.drive.device, self.records, len(record), self.record_size))
                self.records += 1
                self.pending = memoryview(record)
            take = self.pending[:wanted]
            out.append(bytes(take))
            self.pending = self.pending[len(take):]
            wanted -= len(take)
        return b"".join(out)


def read_back(device: str, ops: TapeOps, file_number: int, record_size: int, manifest: t.Dict[str, t.Any],
              manifest_bytes: bytes) -> t.Dict[str, t.Any]:
    """Read the set in tape file ``file_number`` and compare it with ``manifest``: {verified, problems, ...}."""
    expected = dict((DATA_PREFIX + e["path"], e) for e in manifest.get("files", []) if e.get("type", "file") == "file")
    seen = {}  # type: t.Dict[str, t.Dict[str, t.Any]]
    problems = []  # type: t.List[str]
    stream_manifest = None  # type: t.Optional[bytes]
    members = 0
    with Drive(device, ops) as drive:
        drive.to_file(file_number)
        reader = _RecordReader(drive, record_size)
        try:
            with tarfile.open(fileobj=reader, mode="r|", bufsize=record_size) as archive:  # type: ignore[call-overload]
                for member in archive:
                    members += 1
                    if not member.isfile():
                        continue
                    handle = archive.extractfile(member)
                    hasher = hashlib.sha256()
                    size = 0
                    data = []
                    while True:
                        chunk = handle.read(1024 * 1024)
                        if not chunk:
                            break
                        hasher.update(chunk)
                        size += len(chunk)
                        if member.name == MANIFEST_MEMBER:
                            data.append(chunk)
                    if member.name == MANIFEST_MEMBER:
                        stream_manifest = b"".join(data)
                    else:
                        seen[member.name] = {"size": size, "sha256": hasher.hexdigest()}
        except tarfile.TarError as exc:
            problems.append("the tar stream in file %d is damaged (%s) after %d members" % (file_number, exc, members))
        records = reader.records
    for name, entry in sorted(expected.items()):
        got = seen.get(name)
        if got is None:
            problems.append("%s is in the manifest but not in the stream" % name)
        elif (got["size"], got["sha256"]) != (entry.get("size"), entry.get("sha256")):
            problems.append("%s differs from the manifest: %d bytes sha256 %s on tape, %s bytes sha256 %s expected"
                            % (name, got["size"], got["sha256"], entry.get("size"), entry.get("sha256")))
    for name in sorted(set(seen) - set(expected)):
        problems.append("%s is in the stream but not in the manifest" % name)
    if stream_manifest is None:
        problems.append("the stream holds no %s" % MANIFEST_MEMBER)
    elif stream_manifest != manifest_bytes:
        problems.append("the stream's %s differs from the set's manifest on disk" % MANIFEST_MEMBER)
    return {"verified": not problems, "problems": problems, "files_checked": len(seen), "members": members,
            "records": records, "file_number": file_number, "record_size": record_size}
