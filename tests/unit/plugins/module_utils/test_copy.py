# -*- coding: utf-8 -*-
# Copyright: contributors to consistent.backup
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Specification of the page-aligned copy engine: alignment, exact copies, order, exclusions, idempotence,
refusals, check mode and what happens when the destination fills up."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import stat
import subprocess

import pytest

from ansible_collections.consistent.backup.plugins.module_utils import _copy_stream
from ansible_collections.consistent.backup.plugins.module_utils._copy import run_copy
from ansible_collections.consistent.backup.plugins.module_utils._copy_plan import (
    CopyError,
    normalize_sources,
    plan_copy,
    summarize_plan,
    validate_block_sizes,
    validate_request,
)

BLOCK = 8192
READ = 4 * BLOCK  # small read size: multi-read files stay small in tests
SET = "set1"


# -- helpers -------------------------------------------------------------------------------------------------------


def write(path, data: bytes, mode: int = 0o644):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.chmod(str(path), mode)
    return path


def pattern(size: int, seed: int = 0) -> bytes:
    """Deterministic bytes that differ at every page, so a misplaced or dropped block shows."""
    unit = hashlib.sha256(b"%d" % seed).digest()
    return (unit * (size // len(unit) + 1))[:size] if size else b""


def copy(sources, dest, backup_id=SET, create_dirs=(), **kwargs):
    kwargs.setdefault("block_size", BLOCK)
    kwargs.setdefault("read_size", READ)
    plan = plan_copy(normalize_sources(sources), create_dirs)
    return run_copy(plan, str(dest), backup_id, **kwargs)


def manifest(dest, backup_id=SET) -> dict:
    return json.loads((dest / backup_id / "manifest.json").read_text())


def entries(dest, backup_id=SET) -> dict:
    return dict((e["path"], e) for e in manifest(dest, backup_id)["files"])


def data(dest, rel, backup_id=SET):
    return dest / backup_id / "data" / rel


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


class RecordingReader:
    """Wraps the default reader and records every request (length, offset)."""

    def __init__(self):
        self.requests = []
        self.buffers = set()

    def __call__(self, fd, buffer, offset):
        self.requests.append((len(buffer), offset))
        self.buffers.add(id(buffer.obj))
        return _copy_stream.default_reader(fd, buffer, offset)


class RecordingOpener:
    def __init__(self):
        self.paths = []

    def __call__(self, path, flags):
        self.paths.append(path)
        return os.open(path, flags)


# -- alignment and exact copies ------------------------------------------------------------------------------------

SIZES = [0, 1, BLOCK - 1, BLOCK, READ + 1, 3 * READ + 17]


@pytest.mark.parametrize("size", SIZES)
def test_every_read_request_is_a_whole_multiple_of_block_size_at_an_aligned_offset(src, dest, size):
    write(src / "f", pattern(size))
    reader = RecordingReader()
    copy([{"path": str(src / "f"), "dest": "f"}], dest, reader=reader)
    assert reader.requests, "the instrumented reader was not used"
    for length, offset in reader.requests:
        assert length % BLOCK == 0 and length > 0
        assert offset % BLOCK == 0


@pytest.mark.parametrize("size", SIZES)
def test_copy_is_byte_exact_including_a_short_last_block(src, dest, size):
    content = pattern(size, seed=size)
    write(src / "f", content)
    result = copy([{"path": str(src / "f"), "dest": "f"}], dest)
    assert data(dest, "f").read_bytes() == content
    assert result.bytes_copied == size


def test_reads_stop_at_the_first_short_read(src, dest):
    write(src / "f", pattern(3 * READ + 17))
    reader = RecordingReader()
    copy([{"path": str(src / "f"), "dest": "f"}], dest, reader=reader)
    assert [offset for _length, offset in reader.requests] == [0, READ, 2 * READ, 3 * READ]


def test_sha256_in_manifest_equals_hashlib_of_the_source(src, dest):
    content = pattern(3 * READ + 17, seed=7)
    write(src / "f", content)
    copy([{"path": str(src / "f"), "dest": "f"}], dest)
    entry = entries(dest)["f"]
    assert entry["sha256"] == hashlib.sha256(content).hexdigest()
    assert entry["size"] == len(content)
    assert entry["type"] == "file"


def test_empty_file_is_copied_and_recorded_with_the_sha256_of_nothing(src, dest):
    write(src / "empty", b"")
    result = copy([{"path": str(src)}], dest)
    rel = str(src).lstrip("/") + "/empty"
    assert data(dest, rel).read_bytes() == b""
    assert entries(dest)[rel]["sha256"] == hashlib.sha256(b"").hexdigest()
    assert result.copied == 1


def test_memory_is_a_fixed_ring_of_buffers_whatever_the_file_size(src, dest):
    write(src / "f", pattern(40 * READ + 5))
    reader = RecordingReader()
    copy([{"path": str(src / "f"), "dest": "f"}], dest, reader=reader)
    assert len(reader.requests) == 41
    assert len(reader.buffers) <= _copy_stream.RING_BUFFERS


def test_mode_and_nanosecond_mtime_are_preserved(src, dest):
    path = write(src / "f", pattern(BLOCK + 3), mode=0o640)
    os.utime(str(path), ns=(1_600_000_000_123_456_789, 1_500_000_000_987_654_321))
    copy([{"path": str(path), "dest": "f"}], dest)
    copied = os.stat(str(data(dest, "f")))
    assert stat.S_IMODE(copied.st_mode) == 0o640
    assert copied.st_mtime_ns == 1_500_000_000_987_654_321
    entry = entries(dest)["f"]
    assert entry["mode"] == "0640"
    assert entry["mtime_ns"] == 1_500_000_000_987_654_321
    assert entry["mtime"] == 1_500_000_000_987_654_321 / 1e9


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="chown needs root")
def test_owner_is_preserved_when_running_as_root(src, dest):
    path = write(src / "f", b"x")
    os.chown(str(path), 4321, 4322)
    copy([{"path": str(path), "dest": "f"}], dest)
    copied = os.stat(str(data(dest, "f")))
    assert (copied.st_uid, copied.st_gid) == (4321, 4322)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="chown needs root")
def test_owner_is_not_changed_without_preserve_owner(src, dest):
    path = write(src / "f", b"x")
    os.chown(str(path), 4321, 4322)
    copy([{"path": str(path), "dest": "f"}], dest, preserve_owner=False)
    assert os.stat(str(data(dest, "f"))).st_uid == os.geteuid()


def test_directories_keep_their_mode_even_a_read_only_one(src, dest):
    write(src / "ro" / "f", b"inside")
    os.chmod(str(src / "ro"), 0o555)
    try:
        copy([{"path": str(src), "dest": "s"}], dest)
    finally:
        os.chmod(str(src / "ro"), 0o755)
    assert stat.S_IMODE(os.stat(str(data(dest, "s/ro"))).st_mode) == 0o555
    assert data(dest, "s/ro/f").read_bytes() == b"inside"
    assert entries(dest)["s/ro"]["mode"] == "0555"


def test_empty_directories_are_kept(src, dest):
    (src / "a" / "b").mkdir(parents=True)
    copy([{"path": str(src), "dest": "s"}], dest)
    assert data(dest, "s/a/b").is_dir()
    assert entries(dest)["s/a/b"]["type"] == "dir"


def test_default_dest_is_the_source_path_without_its_leading_slash(src, dest):
    write(src / "f", b"x")
    copy([{"path": str(src)}], dest)
    assert data(dest, str(src).lstrip("/") + "/f").read_bytes() == b"x"


def test_direct_io_copies_exactly_or_falls_back_with_a_warning(src, dest):
    content = pattern(2 * READ + 100)
    write(src / "f", content)
    result = copy([{"path": str(src / "f"), "dest": "f"}], dest, direct=True)
    assert data(dest, "f").read_bytes() == content
    if not result.direct:
        assert any("O_DIRECT" in w for w in result.warnings)


def refusing_direct_opener(path, flags):
    """What open(2) answers on a filesystem without O_DIRECT support (older tmpfs, some FUSE): EINVAL."""
    if flags & getattr(os, "O_DIRECT", 0):
        raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
    return os.open(path, flags)


def test_direct_io_refused_at_open_falls_back_to_the_page_cache_with_a_warning(src, dest):
    write(src / "f", pattern(READ + 1))
    result = copy([{"path": str(src / "f"), "dest": "f"}], dest, direct=True, opener=refusing_direct_opener)
    assert result.direct is False
    assert any("refused O_DIRECT" in w for w in result.warnings)
    assert data(dest, "f").read_bytes() == pattern(READ + 1)


def test_direct_io_refused_at_the_first_read_restarts_the_file_without_it(src, dest):
    write(src / "f", pattern(3 * READ + 1))
    flags_seen = []

    def opener(path, flags):
        flags_seen.append(flags)
        return os.open(path, flags)

    def reader(fd, buffer, offset):
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT:
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        return os.preadv(fd, [buffer], offset)

    result = copy([{"path": str(src / "f"), "dest": "f"}], dest, direct=True, opener=opener, reader=reader)
    assert result.direct is False
    assert [bool(f & os.O_DIRECT) for f in flags_seen] == [True, False]
    assert data(dest, "f").read_bytes() == pattern(3 * READ + 1)


# -- symlinks ---------------------------------------------------------------------------------------------------------


def test_symlinks_are_recreated_not_followed_and_recorded(src, dest, tmp_path):
    outside = write(tmp_path / "outside" / "big", b"must not be copied")
    write(src / "f", b"x")
    os.symlink(str(outside), str(src / "abs"))
    os.symlink("f", str(src / "rel"))
    result = copy([{"path": str(src), "dest": "s"}], dest)
    assert os.readlink(str(data(dest, "s/abs"))) == str(outside)
    assert os.readlink(str(data(dest, "s/rel"))) == "f"
    recorded = entries(dest)
    assert recorded["s/abs"]["type"] == "symlink" and recorded["s/abs"]["target"] == str(outside)
    assert "sha256" not in recorded["s/abs"]
    assert result.symlinks == 2
    assert result.copied == 1


def test_a_symlinked_directory_inside_a_tree_is_not_descended(src, dest, tmp_path):
    write(tmp_path / "elsewhere" / "secret", b"s")
    os.symlink(str(tmp_path / "elsewhere"), str(src / "link"))
    copy([{"path": str(src), "dest": "s"}], dest)
    assert os.path.islink(str(data(dest, "s/link")))
    assert "s/link/secret" not in entries(dest)


# -- order ------------------------------------------------------------------------------------------------------------


def test_all_phase_0_sources_in_list_order_are_copied_before_phase_1(src, dest):
    for name in ("logs/log.2", "logs/log.1", "data/b.db", "data/a.db", "control"):
        write(src / name, name.encode())
    opener = RecordingOpener()
    copy([
        {"path": str(src / "control"), "dest": "control", "phase": 1},
        {"path": str(src / "logs"), "dest": "logs", "phase": 0},
        {"path": str(src / "data"), "dest": "data", "phase": 0},
    ], dest, opener=opener)
    assert [os.path.relpath(p, str(src)) for p in opener.paths] == [
        "logs/log.1", "logs/log.2", "data/a.db", "data/b.db", "control"]


def test_a_tree_is_walked_in_sorted_order(src, dest):
    for name in ("b/2", "b/1", "a", "c/z/9", "B"):
        write(src / name, b"x")
    opener = RecordingOpener()
    copy([{"path": str(src), "dest": "s"}], dest, opener=opener)
    assert [os.path.relpath(p, str(src)) for p in opener.paths] == ["B", "a", "b/1", "b/2", "c/z/9"]


def test_pg_control_excluded_from_the_tree_and_copied_last_as_its_own_phase(src, dest):
    for name in ("global/pg_control", "global/1262", "base/1/1259"):
        write(src / name, name.encode())
    opener = RecordingOpener()
    copy([
        {"path": str(src), "dest": "pgdata", "exclude": ["global/pg_control"]},
        {"path": str(src / "global" / "pg_control"), "dest": "pgdata/global/pg_control", "phase": 1},
    ], dest, opener=opener)
    assert opener.paths[-1] == str(src / "global" / "pg_control")
    assert opener.paths.count(str(src / "global" / "pg_control")) == 1
    assert manifest(dest)["files"][-1]["path"] == "pgdata/global/pg_control"


# -- exclusions and created directories -------------------------------------------------------------------------------


def test_a_pattern_without_slash_excludes_that_basename_at_any_depth(src, dest):
    write(src / "postmaster.pid", b"1")
    write(src / "base" / "postmaster.pid", b"2")
    write(src / "base" / "keep", b"3")
    copy([{"path": str(src), "dest": "s", "exclude": ["postmaster.pid"]}], dest)
    assert not data(dest, "s/postmaster.pid").exists()
    assert not data(dest, "s/base/postmaster.pid").exists()
    assert data(dest, "s/base/keep").exists()


def test_a_pattern_with_slash_matches_the_path_relative_to_the_source_root(src, dest):
    write(src / "pg_wal" / "000000010000000000000001", b"w")
    write(src / "base" / "pgsql_tmp" / "t1", b"t")
    write(src / "base" / "pgsql_tmp_x", b"t")
    write(src / "base" / "1", b"keep")
    copy([{"path": str(src), "dest": "s", "exclude": ["pg_wal/*", "*/pgsql_tmp*"]}], dest)
    assert data(dest, "s/pg_wal").is_dir()  # the directory is kept, its contents are not
    assert os.listdir(str(data(dest, "s/pg_wal"))) == []
    assert not data(dest, "s/base/pgsql_tmp").exists()
    assert not data(dest, "s/base/pgsql_tmp_x").exists()
    assert data(dest, "s/base/1").exists()


def test_a_leading_slash_anchors_a_pattern_at_the_source_root(src, dest):
    write(src / "postmaster.opts", b"1")
    write(src / "sub" / "postmaster.opts", b"2")
    copy([{"path": str(src), "dest": "s", "exclude": ["/postmaster.opts"]}], dest)
    assert not data(dest, "s/postmaster.opts").exists()
    assert data(dest, "s/sub/postmaster.opts").exists()


def test_an_excluded_directory_is_neither_descended_nor_created(src, dest):
    write(src / "pg_replslot" / "slot" / "state", b"s")
    write(src / "keep", b"k")
    opener = RecordingOpener()
    copy([{"path": str(src), "dest": "s", "exclude": ["pg_replslot"]}], dest, opener=opener)
    assert not data(dest, "s/pg_replslot").exists()
    assert all("pg_replslot" not in p for p in opener.paths)
    assert "s/pg_replslot" not in entries(dest)


def test_create_dirs_makes_empty_directories_with_mode_0700(src, dest):
    write(src / "f", b"x")
    result = copy([{"path": str(src), "dest": "pgdata", "exclude": ["pg_wal"]}], dest,
                  create_dirs=["pgdata/pg_wal/archive_status"])
    target = data(dest, "pgdata/pg_wal/archive_status")
    assert target.is_dir() and os.listdir(str(target)) == []
    assert stat.S_IMODE(os.stat(str(target)).st_mode) == 0o700
    assert entries(dest)["pgdata/pg_wal/archive_status"]["type"] == "dir"
    assert result.dirs_created >= 2


# -- vanished files ---------------------------------------------------------------------------------------------------


def test_a_file_deleted_after_listing_is_recorded_as_vanished_when_allowed(src, dest):
    write(src / "a", b"a")
    write(src / "gone", b"g")
    plan = plan_copy(normalize_sources([{"path": str(src), "dest": "s", "allow_vanished": True}]))
    os.unlink(str(src / "gone"))
    result = run_copy(plan, str(dest), SET, block_size=BLOCK, read_size=READ)
    assert result.vanished == ["s/gone"]
    assert result.copied == 1
    assert manifest(dest)["vanished"] == ["s/gone"]
    assert "s/gone" not in entries(dest)


def test_a_file_deleted_after_listing_fails_the_copy_without_allow_vanished(src, dest):
    write(src / "gone", b"g")
    plan = plan_copy(normalize_sources([{"path": str(src), "dest": "s"}]))
    os.unlink(str(src / "gone"))
    with pytest.raises(CopyError, match="vanished.*allow_vanished"):
        run_copy(plan, str(dest), SET, block_size=BLOCK, read_size=READ)


def test_a_missing_source_root_is_vanished_when_allowed(src, dest):
    result = copy([{"path": str(src / "nope"), "dest": "n", "allow_vanished": True}, {"path": str(src), "dest": "s"}], dest)
    assert result.vanished == ["n"]


def test_a_missing_source_root_is_refused_without_allow_vanished(src):
    with pytest.raises(CopyError, match="source %s does not exist" % (src / "nope")):
        plan_copy(normalize_sources([{"path": str(src / "nope")}]))


# -- idempotence ------------------------------------------------------------------------------------------------------


def make_tree(src):
    write(src / "a", pattern(3 * READ + 17, 1))
    write(src / "d" / "b", pattern(BLOCK, 2))
    write(src / "d" / "empty", b"")


def test_a_second_run_copies_nothing_and_leaves_the_manifest_unchanged(src, dest):
    make_tree(src)
    first = copy([{"path": str(src), "dest": "s"}], dest)
    before = (dest / SET / "manifest.json").read_bytes()
    second = copy([{"path": str(src), "dest": "s"}], dest)
    assert first.copied == 3 and first.changed is True
    assert second.copied == 0
    assert second.skipped_identical == 3
    assert second.changed is False
    assert second.bytes_total == first.bytes_total and second.bytes_copied == 0
    assert (dest / SET / "manifest.json").read_bytes() == before


def test_a_source_file_with_new_content_and_mtime_is_copied_again(src, dest):
    make_tree(src)
    copy([{"path": str(src), "dest": "s"}], dest)
    write(src / "d" / "b", pattern(BLOCK, 99))
    os.utime(str(src / "d" / "b"), ns=(1, 2_000_000_000))
    result = copy([{"path": str(src), "dest": "s"}], dest)
    assert result.copied == 1 and result.skipped_identical == 2
    assert data(dest, "s/d/b").read_bytes() == pattern(BLOCK, 99)
    assert entries(dest)["s/d/b"]["sha256"] == hashlib.sha256(pattern(BLOCK, 99)).hexdigest()


def test_a_source_file_changed_behind_an_unchanged_mtime_is_caught_by_the_rehash(src, dest):
    make_tree(src)
    copy([{"path": str(src), "dest": "s"}], dest)
    old = os.stat(str(src / "a"))
    write(src / "a", pattern(3 * READ + 17, 42))
    os.utime(str(src / "a"), ns=(old.st_atime_ns, old.st_mtime_ns))
    result = copy([{"path": str(src), "dest": "s"}], dest)
    assert result.copied == 1
    assert data(dest, "s/a").read_bytes() == pattern(3 * READ + 17, 42)


def test_a_copy_missing_from_the_medium_is_copied_again(src, dest):
    make_tree(src)
    copy([{"path": str(src), "dest": "s"}], dest)
    os.unlink(str(data(dest, "s/d/b")))
    result = copy([{"path": str(src), "dest": "s"}], dest)
    assert result.copied == 1
    assert data(dest, "s/d/b").read_bytes() == pattern(BLOCK, 2)


# -- manifest ---------------------------------------------------------------------------------------------------------


def test_two_calls_merge_into_one_manifest(src, dest):
    write(src / "data" / "x.db", b"data")
    write(src / "logs" / "log.1", b"log")
    copy([{"path": str(src / "data"), "dest": "data"}], dest, engine="bdb", facts={"checkpoint": "1/2"})
    copy([{"path": str(src / "logs"), "dest": "logs", "phase": 1}], dest, engine="bdb", facts={"last_log": 1})
    doc = manifest(dest)
    assert [e["path"] for e in doc["files"]] == ["data", "data/x.db", "logs", "logs/log.1"]
    assert doc["facts"] == {"checkpoint": "1/2", "last_log": 1}
    assert doc["engine"] == "bdb" and doc["backup_id"] == SET and doc["block_size"] == BLOCK
    assert doc["format"] == 1 and doc["host"]
    assert doc["created"].endswith("Z") and doc["updated"].endswith("Z")


def test_files_copied_before_a_failure_are_recorded_so_a_retry_skips_them(src, dest):
    write(src / "a", b"first")
    write(src / "b", b"second")

    def failing_on_b(fd, buffer):
        if bytes(buffer[:6]) == b"second":
            raise OSError(errno.EIO, "Input/output error")
        return os.write(fd, buffer)

    with pytest.raises(CopyError):
        copy([{"path": str(src), "dest": "s"}], dest, writer=failing_on_b)
    assert "s/a" in entries(dest) and "s/b" not in entries(dest)
    retry = copy([{"path": str(src), "dest": "s"}], dest)
    assert retry.skipped_identical == 1 and retry.copied == 1


# -- refusals ---------------------------------------------------------------------------------------------------------


def test_refuses_a_relative_dest(src):
    with pytest.raises(CopyError, match="dest must be an absolute path"):
        validate_request("backup", SET, normalize_sources([{"path": str(src)}]))


def test_refuses_a_relative_source_path():
    with pytest.raises(CopyError, match=r"sources\[0\]\.path must be an absolute path"):
        normalize_sources([{"path": "var/lib/pgsql"}])


def test_refuses_a_source_dest_that_climbs_out_of_data(src):
    with pytest.raises(CopyError, match=r"sources\[0\]\.dest must be a path relative"):
        normalize_sources([{"path": str(src), "dest": "../etc"}])


def test_refuses_a_dest_inside_a_source(src):
    inside = src / "backups"
    inside.mkdir()
    with pytest.raises(CopyError, match="is inside source %s" % src):
        validate_request(str(inside), SET, normalize_sources([{"path": str(src)}]))


def test_refuses_a_dest_inside_a_source_through_a_symlink(src, tmp_path):
    (src / "backups").mkdir()
    os.symlink(str(src / "backups"), str(tmp_path / "alias"))
    with pytest.raises(CopyError, match="is inside source"):
        validate_request(str(tmp_path / "alias"), SET, normalize_sources([{"path": str(src)}]))


def test_refuses_a_missing_destination_rather_than_writing_beside_the_medium(src, tmp_path):
    with pytest.raises(CopyError, match="does not exist.*mount the medium"):
        validate_request(str(tmp_path / "not-mounted"), SET, normalize_sources([{"path": str(src)}]))


def test_refuses_a_set_already_marked_complete(src, dest):
    (dest / SET).mkdir()
    (dest / SET / "COMPLETE").write_text("")
    message = "backup set %s is already marked COMPLETE by an earlier run; choose a new backup_id or remove the set" % (dest / SET)
    with pytest.raises(CopyError) as caught:
        validate_request(str(dest), SET, normalize_sources([{"path": str(src)}]))
    assert str(caught.value) == message
    with pytest.raises(CopyError):
        copy([{"path": str(src)}], dest)


@pytest.mark.parametrize("read_size", [BLOCK + 1, BLOCK // 2, 0, -BLOCK])
def test_refuses_a_read_size_that_is_not_a_positive_multiple_of_block_size(read_size):
    with pytest.raises(CopyError, match="not a positive multiple of block_size"):
        validate_block_sizes(BLOCK, read_size)


def test_run_copy_itself_refuses_a_misaligned_read_size(src, dest):
    write(src / "f", b"x")
    with pytest.raises(CopyError, match="not a positive multiple"):
        copy([{"path": str(src / "f"), "dest": "f"}], dest, read_size=READ + 1)
    assert not (dest / SET).exists()


@pytest.mark.parametrize("backup_id", ["a/b", "has space", "line1\nline2", ".hidden", "", "x" * 129])
def test_refuses_a_backup_id_that_breaks_the_one_rule_and_says_a_retry_cannot_help(src, dest, backup_id):
    with pytest.raises(CopyError) as caught:
        validate_request(str(dest), backup_id, normalize_sources([{"path": str(src)}]))
    assert str(caught.value).startswith("backup_id must be 1-128 characters from letters, digits and . _ : @ + -")
    assert "found %r" % backup_id in str(caught.value)
    assert caught.value.retryable is False


# -- check mode -------------------------------------------------------------------------------------------------------


def snapshot(root):
    return sorted((os.path.relpath(os.path.join(d, n), str(root)), os.lstat(os.path.join(d, n)).st_mtime_ns)
                  for d, dirs, files in os.walk(str(root)) for n in dirs + files)


def test_check_mode_plan_counts_what_would_be_copied_and_writes_nothing(src, dest):
    make_tree(src)
    os.symlink("a", str(src / "link"))
    before = snapshot(dest)
    plan = plan_copy(normalize_sources([{"path": str(src), "dest": "s"}]), ["s/new"])
    summary = summarize_plan(plan, str(dest / SET))
    assert snapshot(dest) == before
    assert summary["files"] == 3
    assert summary["bytes"] == 3 * READ + 17 + BLOCK
    assert summary["free_needed"] == summary["bytes"]
    assert summary["dirs"] == 3  # s, s/d and the created s/new
    assert summary["symlinks"] == 1
    assert summary["changed"] is True
    assert summary["phases"] == [{"phase": 0, "files": 3, "bytes": 3 * READ + 17 + BLOCK, "dirs": 2, "symlinks": 1,
                                  "to_copy": 3, "bytes_to_copy": 3 * READ + 17 + BLOCK}]


def test_check_mode_after_a_copy_needs_no_space_and_would_change_nothing(src, dest):
    make_tree(src)
    copy([{"path": str(src), "dest": "s"}], dest)
    plan = plan_copy(normalize_sources([{"path": str(src), "dest": "s"}]))
    summary = summarize_plan(plan, str(dest / SET))
    assert summary["free_needed"] == 0
    assert summary["identical_files"] == 3
    assert summary["changed"] is False


def test_check_mode_counts_only_changed_files_in_free_needed(src, dest):
    make_tree(src)
    copy([{"path": str(src), "dest": "s"}], dest)
    write(src / "d" / "b", pattern(2 * BLOCK, 5))
    summary = summarize_plan(plan_copy(normalize_sources([{"path": str(src), "dest": "s"}])), str(dest / SET))
    assert summary["free_needed"] == 2 * BLOCK
    assert summary["to_copy"] == 1


# -- write errors -----------------------------------------------------------------------------------------------------


def enospc_writer(fd, buffer):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("size", [100, 3 * READ + 17])  # one read (written inline) and several (written by the thread)
def test_a_write_error_removes_the_temp_file_and_names_file_target_and_errno(src, dest, size):
    write(src / "f", pattern(size))
    with pytest.raises(CopyError) as caught:
        copy([{"path": str(src), "dest": "s"}], dest, writer=enospc_writer)
    message = str(caught.value)
    assert message.startswith("no space left on %s" % dest)
    assert str(src / "f") in message and str(data(dest, "s/f")) in message
    assert "No space left on device" in message and "free more space or choose a larger medium" in message
    assert os.listdir(str(data(dest, "s"))) == []


def test_a_write_error_after_some_blocks_leaves_no_partial_file(src, dest):
    write(src / "f", pattern(10 * READ))
    calls = []

    def fails_on_the_third_write(fd, buffer):
        calls.append(len(buffer))
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return os.write(fd, buffer)

    with pytest.raises(CopyError, match="no space left"):
        copy([{"path": str(src / "f"), "dest": "f"}], dest, writer=fails_on_the_third_write)
    assert os.listdir(str(dest / SET / "data")) == []


def test_a_partial_write_is_continued_until_the_buffer_is_written(src, dest):
    content = pattern(2 * READ + 5)
    write(src / "f", content)

    def short_writes(fd, buffer):
        return os.write(fd, buffer[:1000])

    copy([{"path": str(src / "f"), "dest": "f"}], dest, writer=short_writes)
    assert data(dest, "f").read_bytes() == content


def test_a_read_error_names_the_source_file(src, dest):
    write(src / "f", b"x")

    def eio_reader(fd, buffer, offset):
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    with pytest.raises(CopyError, match="reading source file %s failed" % (src / "f")):
        copy([{"path": str(src / "f"), "dest": "f"}], dest, reader=eio_reader)
    assert os.listdir(str(dest / SET / "data")) == []


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A real 256 KiB tmpfs as the destination (needs root and mount(8))."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mountpoint = tmp_path / "tiny"
    mountpoint.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mountpoint)],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=False, env=dict(os.environ, LANG="C"))
    if proc.returncode != 0:
        pytest.skip("cannot mount a tmpfs here: %s" % proc.stdout.decode().strip())
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", str(mountpoint)], check=False)


def test_a_full_medium_fails_with_enospc_and_leaves_no_partial_file(src, tiny_tmpfs):
    write(src / "a-small", pattern(1000))
    write(src / "b-big", pattern(40 * READ))  # 1.25 MiB into 256 KiB
    with pytest.raises(CopyError) as caught:
        copy([{"path": str(src), "dest": "s"}], tiny_tmpfs)
    message = str(caught.value)
    assert message.startswith("no space left on %s: copying %s to %s failed: [Errno 28]" % (tiny_tmpfs, src / "b-big", data(tiny_tmpfs, "s/b-big")))
    assert sorted(os.listdir(str(data(tiny_tmpfs, "s")))) == ["a-small"]


@pytest.mark.parametrize("size", [100, 10 * READ])
def test_an_unexpected_error_in_the_writer_fails_the_copy_instead_of_hanging_it(src, dest, size):
    write(src / "f", pattern(size))

    def broken_writer(fd, buffer):
        raise ValueError("not an OSError")

    with pytest.raises(CopyError, match="the copy worker failed"):
        copy([{"path": str(src / "f"), "dest": "f"}], dest, writer=broken_writer)
    assert os.listdir(str(dest / SET / "data")) == []


def test_run_copy_refuses_a_missing_destination_root_instead_of_creating_it(src, tmp_path):
    write(src / "f", b"x")
    with pytest.raises(CopyError, match="does not exist.*mount the medium"):
        copy([{"path": str(src / "f"), "dest": "f"}], tmp_path / "not-mounted")
    assert not (tmp_path / "not-mounted").exists()
