# -*- coding: utf-8 -*-
# Copyright: contributors to consistent.backup
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Specification of how the copy engine makes a many-file copy durable and fast: files are named after their bytes are
written and their writeback started, a barrier makes a whole batch durable before anything vouches for it (the manifest,
the resume journal) and before a later phase writes, and two workers copy small files beside each other."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import threading
import time

import pytest

from ansible_collections.consistent.backup.plugins.module_utils import _copy, _copy_plan, _copy_sink, _copy_stream, _manifest
from ansible_collections.consistent.backup.plugins.module_utils._copy import run_copy
from ansible_collections.consistent.backup.plugins.module_utils._copy_plan import CopyError, normalize_sources, plan_copy
from ansible_collections.consistent.backup.plugins.module_utils._copy_sink import DirectorySink

BLOCK = 8192
READ = 4 * BLOCK
SET = "set1"


def write(path, data: bytes):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.fixture
def src(tmp_path):
    path = tmp_path / "src"
    path.mkdir()
    return path


@pytest.fixture
def dest(tmp_path):
    path = tmp_path / "backup"
    path.mkdir()
    return path


def copy(sources, dest, **kwargs):
    kwargs.setdefault("block_size", BLOCK)
    kwargs.setdefault("read_size", READ)
    return run_copy(plan_copy(normalize_sources(sources)), str(dest), SET, **kwargs)


def set_path(dest) -> str:
    return os.path.join(str(dest), SET)


def many(src, count: int = 40, size: int = BLOCK):
    for n in range(count):
        write(src / ("f%03d" % n), bytes([n % 251]) * size)


class Events:
    """Records, in order, the sink's commits and barriers and the manifest writes of one copy."""

    def __init__(self, monkeypatch):
        self.log = []
        self.lock = threading.Lock()
        commit, barrier = DirectorySink.commit, DirectorySink.barrier
        write_manifest = _manifest.merge_and_write_changed
        events = self

        def recording_commit(sink, sink_file, meta, no_replace=False, size=-1):
            commit(sink, sink_file, meta, no_replace, size)
            with events.lock:
                events.log.append(("commit", os.path.basename(sink_file.target)))

        def recording_barrier(sink, directories=True):
            covered = barrier(sink, directories)
            with events.lock:
                events.log.append(("barrier", covered))
            return covered

        def recording_manifest(*args, **kwargs):
            with events.lock:
                events.log.append(("manifest", None))
            return write_manifest(*args, **kwargs)

        monkeypatch.setattr(DirectorySink, "commit", recording_commit)
        monkeypatch.setattr(DirectorySink, "barrier", recording_barrier)
        monkeypatch.setattr(_manifest, "merge_and_write_changed", recording_manifest)

    def kinds(self):
        return [kind for kind, _what in self.log]


# -- durability ---------------------------------------------------------------------------------------------------------


def test_the_manifest_is_written_only_after_a_barrier_that_follows_the_last_file(src, dest, monkeypatch):
    many(src)
    events = Events(monkeypatch)
    copy([{"path": str(src), "dest": "s"}], dest)
    kinds = events.kinds()
    assert kinds[-2:] == ["barrier", "manifest"]
    assert kinds.count("commit") == 40
    assert max(i for i, kind in enumerate(kinds) if kind == "commit") < len(kinds) - 2


def test_a_later_phase_is_written_only_after_the_earlier_phases_are_durable(src, dest, monkeypatch):
    many(src / "data", count=20)
    write(src / "control", b"c" * BLOCK)
    events = Events(monkeypatch)
    copy([{"path": str(src / "data"), "dest": "data"}, {"path": str(src / "control"), "dest": "control", "phase": 1}], dest)
    log = events.log
    control = log.index(("commit", "control"))
    assert [kind for kind, _what in log[:control]].count("commit") == 20
    assert log[control - 1][0] == "barrier" and log[control - 1][1] >= 1


def test_without_syncfs_every_file_and_every_directory_that_gained_a_name_is_fsynced(src, dest, monkeypatch):
    many(src / "a", count=5)
    many(src / "b", count=5)
    monkeypatch.setattr(_copy_sink, "syncfs", lambda fd: False)
    synced = set()
    real_fsync = os.fsync

    def recording_fsync(fd):
        st = os.fstat(fd)
        synced.add((st.st_dev, st.st_ino))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    copy([{"path": str(src), "dest": "s"}], dest)
    data_root = os.path.join(set_path(dest), "data", "s")
    for directory in ("a", "b"):
        for name in os.listdir(os.path.join(data_root, directory)) + [""]:
            st = os.stat(os.path.join(data_root, directory, name))
            assert (st.st_dev, st.st_ino) in synced, os.path.join(directory, name)


def test_syncfs_is_used_where_the_system_has_it(dest):
    fd = os.open(str(dest), os.O_RDONLY)
    try:
        assert _copy_sink.syncfs(fd) is True
    finally:
        os.close(fd)


def test_the_barrier_fsync_setting_uses_fsync_instead_of_syncfs(dest, monkeypatch):
    monkeypatch.setattr(_copy_sink, "BARRIER", _copy_sink.BARRIER_FSYNC)
    fd = os.open(str(dest), os.O_RDONLY)
    try:
        assert _copy_sink.syncfs(fd) is False
    finally:
        os.close(fd)


def test_writeback_of_every_file_is_started_before_it_is_named(src, dest, monkeypatch):
    many(src, count=6)
    started = []
    real = _copy_sink.start_writeback

    def recording(fd):
        started.append(os.fstat(fd).st_size)
        real(fd)

    monkeypatch.setattr(_copy_sink, "start_writeback", recording)
    copy([{"path": str(src), "dest": "s"}], dest)
    assert started == [BLOCK] * 6


def test_a_medium_that_fails_the_barrier_fails_the_copy_and_nothing_vouches_for_the_files(src, dest, monkeypatch):
    many(src, count=5)

    def failing_syncfs(fd):
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(_copy_sink, "syncfs", failing_syncfs)
    monkeypatch.setattr(_copy_sink, "BARRIER_FSYNC_FILES", 0)
    with pytest.raises(CopyError, match=r"syncing the filesystem of .*\[Errno 5\]") as caught:
        copy([{"path": str(src), "dest": "s"}], dest)
    assert caught.value.retryable is True
    assert not os.path.exists(os.path.join(set_path(dest), "manifest.json"))
    assert _copy_plan.load_journal(set_path(dest))[1] == {}


# -- the resume journal -------------------------------------------------------------------------------------------------


def test_a_successful_copy_leaves_no_journal(src, dest):
    many(src, count=3)
    copy([{"path": str(src), "dest": "s"}], dest)
    assert sorted(os.listdir(set_path(dest))) == ["data", "manifest.json"]


def test_the_journal_is_appended_only_after_a_barrier_and_lists_only_files_it_covered(src, dest, monkeypatch):
    many(src, count=30)
    monkeypatch.setattr(_copy, "JOURNAL_INTERVAL", 0.0)
    seen = []
    real_barrier = DirectorySink.barrier
    journal = os.path.join(set_path(dest), _copy_plan.JOURNAL_NAME)

    def checking_barrier(sink, directories=True):
        # Every file the journal vouches for was committed before this barrier or an earlier one.
        listed = set(_copy_plan.load_journal(set_path(dest))[1]) if os.path.exists(journal) else set()
        seen.append(listed)
        return real_barrier(sink, directories)

    monkeypatch.setattr(DirectorySink, "barrier", checking_barrier)
    copy([{"path": str(src), "dest": "s"}], dest)
    assert len(seen) > 2
    assert [len(listed) for listed in seen] == sorted(len(listed) for listed in seen)
    assert 0 < len(seen[-1]) <= 30


def test_files_a_journal_vouches_for_are_skipped_without_a_manifest(src, dest):
    many(src, count=10)
    copy([{"path": str(src), "dest": "s"}], dest)
    manifest_path = os.path.join(set_path(dest), "manifest.json")
    with open(manifest_path) as handle:
        files = [e for e in json.load(handle)["files"] if e["type"] == "file"]
    os.unlink(manifest_path)
    with open(os.path.join(set_path(dest), _copy_plan.JOURNAL_NAME), "w") as handle:
        handle.write("".join(json.dumps(e) + "\n" for e in files[:7]))
        handle.write('{"path": "s/f009", "type": "fi')  # torn by the crash
    result = copy([{"path": str(src), "dest": "s"}], dest)
    assert (result.skipped_identical, result.copied) == (7, 3)


def test_a_journal_entry_whose_source_changed_is_copied_again(src, dest):
    many(src, count=2)
    copy([{"path": str(src), "dest": "s"}], dest)
    manifest_path = os.path.join(set_path(dest), "manifest.json")
    with open(manifest_path) as handle:
        files = [e for e in json.load(handle)["files"] if e["type"] == "file"]
    os.unlink(manifest_path)
    with open(os.path.join(set_path(dest), _copy_plan.JOURNAL_NAME), "w") as handle:
        handle.write("".join(json.dumps(e) + "\n" for e in files))
    write(src / "f001", b"new content of the same page count".ljust(BLOCK, b"."))
    os.utime(str(src / "f001"), ns=(0, files[1]["mtime_ns"]))
    result = copy([{"path": str(src), "dest": "s"}], dest)
    assert (result.skipped_identical, result.copied) == (1, 1)
    assert (dest / SET / "data" / "s" / "f001").read_bytes().startswith(b"new content")


def test_only_our_temporary_names_are_swept_after_a_killed_run(src, dest):
    many(src, count=1)
    data_root = dest / SET / "data"
    ours = write(data_root / "s" / ".f000.cb-4242-7.partial", b"half")
    theirs = write(data_root / "s" / ".notes.partial", b"kept")
    write(dest / SET / _copy_plan.JOURNAL_NAME, b"")
    copy([{"path": str(src), "dest": "s"}], dest)
    assert not ours.exists() and theirs.exists()


# -- workers ------------------------------------------------------------------------------------------------------------


def test_two_workers_read_small_files_at_the_same_time(src, dest):
    many(src, count=12)
    active, peak, lock = [0], [0], threading.Lock()

    def overlapping_reader(fd, buffer, offset):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.01)
        with lock:
            active[0] -= 1
        return _copy_stream.default_reader(fd, buffer, offset)

    copy([{"path": str(src), "dest": "s"}], dest, reader=overlapping_reader)
    assert peak[0] == _copy.COPY_WORKERS == 2


def test_one_worker_and_two_workers_give_the_same_set(src, dest, tmp_path):
    many(src, count=25, size=3 * BLOCK + 5)
    write(src / "big", os.urandom(5 * READ + 3))
    other = tmp_path / "other"
    other.mkdir()
    copy([{"path": str(src), "dest": "s"}], dest, workers=2)
    copy([{"path": str(src), "dest": "s"}], other, workers=1)

    def files(root):
        with open(os.path.join(str(root), SET, "manifest.json")) as handle:
            return [(e["path"], e.get("sha256"), e["size"]) for e in json.load(handle)["files"]]

    assert files(dest) == files(other)
    assert len(files(dest)) == 27


def test_memory_stays_a_fixed_set_of_buffers_with_workers_and_the_ring(src, dest):
    many(src, count=20, size=BLOCK)
    write(src / "big", os.urandom(10 * READ))
    buffers = set()

    def recording_reader(fd, buffer, offset):
        buffers.add(id(buffer.obj))
        return _copy_stream.default_reader(fd, buffer, offset)

    copy([{"path": str(src), "dest": "s"}], dest, reader=recording_reader)
    assert len(buffers) <= _copy_stream.RING_BUFFERS + _copy.COPY_WORKERS


def test_a_failing_worker_stops_the_copy_and_the_files_done_before_are_recorded(src, dest):
    many(src, count=30)

    def failing_on_f020(fd, buffer):
        if bytes(buffer[:1]) == bytes([20]):
            raise OSError(errno.EIO, "Input/output error")
        return os.write(fd, buffer)

    with pytest.raises(CopyError, match="f020"):
        copy([{"path": str(src), "dest": "s"}], dest, writer=failing_on_f020)
    with open(os.path.join(set_path(dest), "manifest.json")) as handle:
        recorded = [e["path"] for e in json.load(handle)["files"] if e["type"] == "file"]
    assert "s/f020" not in recorded and "s/f000" in recorded
    names = os.listdir(str(dest / SET / "data" / "s"))
    assert not [name for name in names if name.endswith(".partial")]
    for rel in recorded:
        content = (dest / SET / "data" / rel).read_bytes()
        assert hashlib.sha256(content).hexdigest() == hashlib.sha256((src / rel[2:]).read_bytes()).hexdigest()


# -- the one-file entry (the restore's copy) ----------------------------------------------------------------------------


def open_source(path):
    return os.open(str(path), os.O_RDONLY)


def test_copy_file_checks_before_it_names_the_file_and_a_refused_copy_leaves_nothing(tmp_path):
    source = write(tmp_path / "src" / "rel", b"x" * 3 * BLOCK)
    target = tmp_path / "target"
    target.mkdir()
    seen = []

    def refuse(size, checksum):
        seen.append((size, checksum, sorted(os.listdir(str(target)))))
        raise ValueError("refused")

    fd = open_source(source)
    try:
        with pytest.raises(ValueError, match="refused"):
            _copy_sink.copy_file(fd, str(target / "rel"), _copy_sink.FileMeta(0o600), check=refuse)
    finally:
        os.close(fd)
    assert seen[0][:2] == (3 * BLOCK, hashlib.sha256(b"x" * 3 * BLOCK).hexdigest())
    assert not (target / "rel").exists() and seen[0][2][0].endswith(".partial")
    assert os.listdir(str(target)) == []


def test_copy_file_never_replaces_an_existing_name(tmp_path):
    source = write(tmp_path / "src" / "rel", b"new")
    existing = write(tmp_path / "target" / "rel", b"old")
    fd = open_source(source)
    try:
        with pytest.raises(FileExistsError):
            _copy_sink.copy_file(fd, str(existing), _copy_sink.FileMeta(0o600))
    finally:
        os.close(fd)
    assert existing.read_bytes() == b"old"
    assert os.listdir(str(existing.parent)) == ["rel"]


def test_copy_file_sets_mode_and_mtime_and_returns_size_and_sha256(tmp_path):
    source = write(tmp_path / "src" / "rel", b"page" * 2048)
    fd = open_source(source)
    try:
        size, checksum = _copy_sink.copy_file(fd, str(tmp_path / "copy"), _copy_sink.FileMeta(0o640, atime_ns=1, mtime_ns=1_500_000_000_123_456_789))
    finally:
        os.close(fd)
    st = os.stat(str(tmp_path / "copy"))
    assert (size, checksum) == (8192, hashlib.sha256(b"page" * 2048).hexdigest())
    assert (st.st_mode & 0o777, st.st_mtime_ns) == (0o640, 1_500_000_000_123_456_789)


def test_small_files_can_leave_their_writeback_to_the_barrier(src, dest, monkeypatch):
    many(src, count=4, size=BLOCK)
    write(src / "large", os.urandom(3 * READ))
    monkeypatch.setattr(_copy_sink, "EARLY_WRITEBACK_MIN", 2 * READ)
    started = []
    monkeypatch.setattr(_copy_sink, "start_writeback", lambda fd: started.append(os.fstat(fd).st_size))
    copy([{"path": str(src), "dest": "s"}], dest)
    assert started == [3 * READ]


def test_a_batch_of_a_few_files_is_made_durable_file_by_file_without_waiting_for_other_writers(src, dest, monkeypatch):
    many(src, count=_copy_sink.BARRIER_FSYNC_FILES)
    calls = []
    monkeypatch.setattr(_copy_sink, "syncfs", lambda fd: calls.append(fd) or True)
    copy([{"path": str(src), "dest": "s"}], dest)
    assert calls == []


def test_a_batch_of_many_files_is_made_durable_with_one_syncfs(src, dest, monkeypatch):
    many(src, count=_copy_sink.BARRIER_FSYNC_FILES + 1)
    calls = []
    real = _copy_sink.syncfs
    monkeypatch.setattr(_copy_sink, "syncfs", lambda fd: calls.append(fd) or real(fd))
    fsynced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: fsynced.append(fd) or real_fsync(fd))
    copy([{"path": str(src), "dest": "s"}], dest)
    assert len(calls) == 1
    assert len(fsynced) <= 2  # the manifest and its directory (atomic_write), no copied file


def test_after_a_failed_barrier_every_later_barrier_fails_too(tmp_path, monkeypatch):
    sink = DirectorySink(str(tmp_path), str(tmp_path), chown=False)
    sink_file = sink.open_file(str(tmp_path / "f"))
    os.write(sink_file.fd, b"x")
    sink.commit(sink_file, _copy_sink.FileMeta(0o600))

    def failing_fsync(fd):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(CopyError, match=r"\[Errno 5\]"):
        sink.barrier()
    monkeypatch.undo()
    with pytest.raises(CopyError, match=r"\[Errno 5\]"):
        sink.barrier()  # nothing is pending any more, but the lost writeback must not be vouched for
