# -*- coding: utf-8 -*-
# Copyright: contributors to consistent.backup
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""The copy engine's stream sink on a tape: a set copied as one tar stream of fixed-size records, then a filemark.

This is a private module_utils file of consistent.backup: it is not part of the collection's public API and may
change without notice.

The tape side imports the copy engine, never the other way round: ``_copy`` writes through the ``StreamSink``
protocol of ``_copy_sink`` and knows no drive.

* ``TarTapeSink(spec, ops)`` is that sink over ``_tar_sink`` (the records and the tar members) and ``_tape`` (the
  drive): ``_copy.run_copy(plan, ..., stream=TarTapeSink(spec))`` copies a plan straight to tape (aligned_copy's
  ``sink: {kind: tar}``).
* ``stream_set_to_tape(set_path, spec, ops)`` copies a COMPLETE set on disk to tape (tape_set's disk, then tape).
"""

from __future__ import annotations

import time
import typing as t

from ansible_collections.consistent.backup.plugins.module_utils import _copy
from ansible_collections.consistent.backup.plugins.module_utils._copy_plan import DEFAULT_READ_SIZE, CopyError, retryable_errno
from ansible_collections.consistent.backup.plugins.module_utils._copy_sink import FileMeta, StreamSink
from ansible_collections.consistent.backup.plugins.module_utils._tape import TapeError, TapeOps, default_ops, explain_errno
from ansible_collections.consistent.backup.plugins.module_utils._tar_sink import (
    DATA_PREFIX, MANIFEST_MEMBER, RecordWriter, TapeTarget, TarSinkError, TarSpec, TarStream)


class TarTapeSink(StreamSink):
    """The set's files as ``data/<path>`` members of one tar stream on the tape ``spec.device``, ``manifest.json`` last.

    ``ops`` None is the real kernel (``_tape.default_ops``, looked up when the stream opens).
    """

    errors = (TapeError, TarSinkError)

    def __init__(self, spec: TarSpec, ops: t.Optional[TapeOps] = None) -> None:
        self.spec = spec
        self.ops = ops
        self.target = None  # type: t.Optional[TapeTarget]
        self.records = None  # type: t.Optional[RecordWriter]
        self.stream = None  # type: t.Optional[TarStream]

    def open(self) -> None:
        ops = self.ops or default_ops()
        try:
            self.target = TapeTarget(self.spec, ops)
        except (TapeError, TarSinkError) as exc:
            raise CopyError(str(exc), retryable=False)
        self.records = RecordWriter(self.target.write, self.spec.record_size)
        self.stream = TarStream(self.records)

    def _tar(self) -> TarStream:
        if self.stream is None:
            raise TarSinkError("tape %s: the stream is not open" % self.spec.device)
        return self.stream

    def add_dir(self, path: str, meta: FileMeta) -> None:
        self._tar().add_dir(DATA_PREFIX + path, meta.mode, meta.uid, meta.gid, meta.mtime_ns)

    def add_symlink(self, path: str, link_target: str, meta: FileMeta) -> None:
        self._tar().add_symlink(DATA_PREFIX + path, link_target, meta.mode, meta.uid, meta.gid, meta.mtime_ns)

    def begin_file(self, path: str, size: int, meta: FileMeta) -> None:
        self._tar().begin_file(DATA_PREFIX + path, size, meta.mode, meta.uid, meta.gid, meta.mtime_ns)

    def write(self, chunk: memoryview) -> int:
        return self._tar().file_data(chunk)

    def end_file(self) -> None:
        self._tar().end_file()

    def add_manifest(self, data: bytes) -> None:
        self._tar().add_bytes(MANIFEST_MEMBER, data, mtime_ns=time.time_ns())

    def finish(self) -> None:
        self._tar().close()
        if self.target is not None:
            self.target.finish()

    def close(self) -> None:
        if self.target is not None:
            self.target.close()

    def error(self, exc: BaseException) -> CopyError:
        if isinstance(exc, OSError):
            return CopyError(str(explain_errno(self.spec.device, exc, "writing the tar stream")), retryable=retryable_errno(exc))
        return CopyError(str(exc), retryable=not isinstance(exc, TarSinkError))

    def facts(self) -> t.Dict[str, t.Any]:
        return {"device": self.spec.device, "volume": self.spec.volume,
                "file_number": self.target.file_number if self.target is not None else -1,
                "record_size": self.spec.record_size, "block_size": self.spec.block_size,
                "records": self.records.records if self.records is not None else 0,
                "stream_bytes": self.records.bytes if self.records is not None else 0,
                "members": self.stream.members if self.stream is not None else 0}


def stream_set_to_tape(set_path: str, spec: TarSpec, ops: t.Optional[TapeOps] = None,
                       read_size: int = DEFAULT_READ_SIZE) -> _copy.CopyResult:
    """Write a COMPLETE set on disk (``<set>/data`` and its manifest) to tape as one tar stream (disk, then tape).

    Every file read from the disk set must hash as its manifest says (a set that rotted on disk is not copied to
    tape); the stream ends with the disk manifest's exact bytes.
    """
    return _copy.stream_set(set_path, TarTapeSink(spec, ops), read_size)
