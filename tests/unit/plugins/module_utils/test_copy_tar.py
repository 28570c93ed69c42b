# -*- coding: utf-8 -*-
# Copyright: contributors to consistent.backup
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The copy engine's tar-stream sink: fixed-size records, members that match the manifest, a filemark, read-back.

The tape is the drive double of tests/integration/files/fake_tape.py (one file per tape file), passed in as the
injected kernel layer.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tarfile

import pytest

from ansible_collections.consistent.backup.plugins.module_utils import _copy, _copy_plan, _manifest, _tape_stream, _tar_sink

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "..", "integration"))
from tape_fixtures import fake_tape, tar_members  # noqa: E402  pylint: disable=wrong-import-position

RECORD = 64 * 1024


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "db"
    (root / "tables").mkdir(parents=True)
    (root / "logs").mkdir()
    (root / "tables" / "a.dat").write_bytes(os.urandom(3 * 1024 * 1024 + 123))
    (root / "tables" / "empty.dat").write_bytes(b"")
    (root / "logs" / "log.1").write_bytes(os.urandom(4095))
    os.symlink("tables/a.dat", str(root / "link"))
    return root


@pytest.fixture
def drive(tmp_path):
    return fake_tape.create(str(tmp_path / "nst0"), volume="LT1000L3")


def copy_to_tape(tmp_path, tree, drive, file_number=0, **spec):
    dest = tmp_path / "catalog"
    dest.mkdir(exist_ok=True)
    sources = _copy_plan.normalize_sources([{"path": str(tree), "dest": "db"}])
    plan = _copy_plan.plan_copy(sources)
    tar = _tar_sink.TarSpec(device=drive, record_size=spec.pop("record_size", RECORD), file_number=file_number, **spec)
    return _copy.run_copy(plan, str(dest), "b1", stream=_tape_stream.TarTapeSink(tar, fake_tape.make_ops()))


def test_record_writer_writes_only_whole_records():
    sizes = []
    writer = _tar_sink.RecordWriter(lambda view: sizes.append(len(view)) or len(view), 1024)
    for chunk in (b"a" * 100, b"b" * 3000, b"c" * 7):
        writer.feed(chunk)
    writer.finish()
    assert sizes == [1024, 1024, 1024, 1024] and writer.records == 4


def test_a_short_write_is_an_error():
    writer = _tar_sink.RecordWriter(lambda view: 512, 1024)
    with pytest.raises(_tar_sink.TarSinkError, match="written as 512 bytes"):
        writer.feed(b"x" * 1024)


def test_the_set_is_one_stream_of_fixed_records_whose_members_match_the_manifest(tmp_path, tree, drive):
    result = copy_to_tape(tmp_path, tree, drive)
    tape_file = fake_tape.tape_file(drive, "LT1000L3", 0)
    records = [int(line.split()[2]) for line in open(os.path.join(drive, "records.log"), encoding="utf-8")]
    assert records and set(records) == {RECORD}
    assert os.path.getsize(tape_file) == len(records) * RECORD == result.stream["stream_bytes"]
    assert result.stream["records"] == len(records) and result.stream["file_number"] == 0
    assert fake_tape.load(drive)["file"] == 1  # the filemark
    manifest = _manifest.load_manifest(result.set_path)
    members = tar_members(tape_file)
    files = {e["path"]: e for e in manifest["files"] if e["type"] == "file"}
    assert sorted(members) == sorted(["data/" + p for p in files] + ["manifest.json"])
    for path, entry in files.items():
        assert hashlib.sha256(members["data/" + path]).hexdigest() == entry["sha256"]
    with open(_manifest.manifest_path(result.set_path), "rb") as handle:
        assert members["manifest.json"] == handle.read()
    assert not os.path.exists(os.path.join(result.set_path, "data"))


def test_gnu_tar_reads_the_stream_with_the_record_size(tmp_path, tree, drive):
    copy_to_tape(tmp_path, tree, drive)
    listing = subprocess.run(["tar", "-b", str(RECORD // 512), "-tvf", fake_tape.tape_file(drive, "LT1000L3", 0)],
                             capture_output=True, text=True, check=True).stdout
    assert "data/db/tables/a.dat" in listing and "data/db/link -> tables/a.dat" in listing


def test_read_back_verifies_every_checksum(tmp_path, tree, drive):
    result = copy_to_tape(tmp_path, tree, drive)
    manifest_bytes = open(_manifest.manifest_path(result.set_path), "rb").read()
    verdict = _tar_sink.read_back(drive, fake_tape.make_ops(), 0, RECORD, json.loads(manifest_bytes), manifest_bytes)
    assert verdict["verified"] is True and verdict["problems"] == []
    assert verdict["files_checked"] == 3 and verdict["records"] == result.stream["records"]


def test_a_flipped_byte_fails_the_read_back(tmp_path, tree, drive):
    result = copy_to_tape(tmp_path, tree, drive)
    path = fake_tape.tape_file(drive, "LT1000L3", 0)
    with tarfile.open(path) as archive:
        offset = archive.getmember("data/db/tables/a.dat").offset_data + 1000
    with open(path, "r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0xFF]))
    manifest_bytes = open(_manifest.manifest_path(result.set_path), "rb").read()
    verdict = _tar_sink.read_back(drive, fake_tape.make_ops(), 0, RECORD, json.loads(manifest_bytes), manifest_bytes)
    assert verdict["verified"] is False
    assert verdict["problems"][0].startswith("data/db/tables/a.dat differs from the manifest")


def test_a_record_size_that_is_not_a_multiple_of_the_volume_block_size_is_refused(tmp_path, tree, drive):
    with pytest.raises(_copy_plan.CopyError, match="not a multiple of the volume's block size 3072"):
        copy_to_tape(tmp_path, tree, drive, block_size=3072)
    assert not os.path.exists(os.path.join(drive, "records.log"))


def test_a_drive_in_fixed_block_mode_refuses_another_record_size(tmp_path, tree, drive):
    fake_tape.save(drive, dict(fake_tape.load(drive), block_size=48 * 1024))
    with pytest.raises(_copy_plan.CopyError, match="not a multiple of the drive's block size 49152"):
        copy_to_tape(tmp_path, tree, drive)


def test_a_retry_goes_back_to_the_start_of_the_sets_file(tmp_path, tree, drive):
    open(fake_tape.tape_file(drive, "LT1000L3", 0), "wb").close()  # the label's file
    fake_tape.save(drive, dict(fake_tape.load(drive), file=1, offset=10 * RECORD))  # a failed attempt wrote 10 records
    result = copy_to_tape(tmp_path, tree, drive, file_number=1)
    assert result.stream["file_number"] == 1 and fake_tape.load(drive)["file"] == 2


def test_a_set_beyond_the_end_of_data_is_refused(tmp_path, tree, drive):
    with pytest.raises(_copy_plan.CopyError, match="expected to write at the start of file 3"):
        copy_to_tape(tmp_path, tree, drive, file_number=3)


def test_a_complete_disk_set_is_streamed_with_its_own_manifest(tmp_path, tree, drive):
    dest = tmp_path / "disk"
    dest.mkdir()
    plan = _copy_plan.plan_copy(_copy_plan.normalize_sources([{"path": str(tree), "dest": "db"}]))
    disk = _copy.run_copy(plan, str(dest), "b1")
    result = _tape_stream.stream_set_to_tape(disk.set_path, _tar_sink.TarSpec(device=drive, record_size=RECORD, file_number=0),
                                             fake_tape.make_ops())
    members = tar_members(fake_tape.tape_file(drive, "LT1000L3", 0))
    assert members["manifest.json"] == open(_manifest.manifest_path(disk.set_path), "rb").read()
    assert result.stream["records"] * RECORD == os.path.getsize(fake_tape.tape_file(drive, "LT1000L3", 0))


def test_a_rotten_disk_set_is_not_streamed(tmp_path, tree, drive):
    dest = tmp_path / "disk"
    dest.mkdir()
    disk = _copy.run_copy(_copy_plan.plan_copy(_copy_plan.normalize_sources([{"path": str(tree), "dest": "db"}])), str(dest), "b1")
    with open(os.path.join(disk.set_path, "data", "db", "logs", "log.1"), "r+b") as handle:
        handle.write(b"\0")
    with pytest.raises(_copy_plan.CopyError, match="does not match its manifest"):
        _tape_stream.stream_set_to_tape(disk.set_path, _tar_sink.TarSpec(device=drive, record_size=RECORD, file_number=0),
                                        fake_tape.make_ops())


class FailingDrive(fake_tape.FakeTapeOps):
    """The drive double whose fourth record fails with an I/O error (a medium error half way through a file)."""

    def __init__(self):
        super().__init__()
        self.writes = 0

    def write(self, fd, data):
        self.writes += 1
        if self.writes == 4:
            raise OSError(5, "Input/output error")
        return super().write(fd, data)


def test_a_write_error_in_the_middle_of_a_large_file_names_the_drive_and_is_retryable(tmp_path, tree, drive):
    dest = tmp_path / "catalog"
    dest.mkdir()
    plan = _copy_plan.plan_copy(_copy_plan.normalize_sources([{"path": str(tree), "dest": "db"}]))
    with pytest.raises(_copy_plan.CopyError) as failure:
        _copy.run_copy(plan, str(dest), "b1",
                       stream=_tape_stream.TarTapeSink(_tar_sink.TarSpec(device=drive, record_size=RECORD, file_number=0), FailingDrive()))
    assert str(failure.value).startswith("tape %s: writing the tar stream failed with [Errno 5]" % drive)
    assert failure.value.retryable is True


def test_a_retried_stream_keeps_the_first_attempts_list_so_a_vanished_file_fails_again(tmp_path, tree, drive):
    dest = tmp_path / "catalog"
    dest.mkdir()
    sources = _copy_plan.normalize_sources([{"path": str(tree), "dest": "db"}])
    set_path = os.path.join(str(dest), "b1")
    os.makedirs(set_path)
    spec = _tar_sink.TarSpec(device=drive, record_size=RECORD, file_number=0)
    first = _copy_plan.plan_attempt(sources, [], set_path, "run1")
    failing = FailingDrive()
    with pytest.raises(_copy_plan.CopyError):
        _copy.run_copy(first, str(dest), "b1", stream=_tape_stream.TarTapeSink(spec, failing))
    assert os.path.exists(_copy_plan.plan_path(set_path))
    os.unlink(str(tree / "logs" / "log.1"))
    with pytest.raises(_copy_plan.CopyError, match="listed by the first attempt of this copy"):
        _copy_plan.plan_attempt(sources, [], set_path, "run1")
