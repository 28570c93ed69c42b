# -*- coding: utf-8 -*-
# Copyright: contributors to consistent.backup
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Specification of the aligned_copy module's interface: options in, return values and failures out,
check -> real -> idempotent -> idempotent in check mode."""

from __future__ import annotations

import functools
import json
import os

import pytest

from ansible_collections.consistent.backup.plugins.module_utils import _copy_stream
from ansible_collections.consistent.backup.plugins.modules import aligned_copy
from module_result import module_result  # noqa: E402  pylint: disable=wrong-import-position

RETURN_KEYS = {"set_path", "manifest_path", "files", "copied", "skipped_identical", "bytes_copied", "bytes_total",
               "dirs_created", "symlinks", "vanished", "seconds", "read_size", "block_size", "direct", "plan", "phases",
               "changed_during_copy", "lease_renewals", "engine_seconds"}


run = functools.partial(module_result, aligned_copy)  # run(capsys, [check_mode=True,] **options)


@pytest.fixture
def tree(tmp_path):
    src = tmp_path / "pgdata"
    (src / "global").mkdir(parents=True)
    (src / "base" / "1").mkdir(parents=True)
    (src / "pg_wal").mkdir()
    (src / "global" / "pg_control").write_bytes(b"c" * 8192)
    (src / "base" / "1" / "1259").write_bytes(b"r" * 3 * 8192)
    (src / "pg_wal" / "000000010000000000000001").write_bytes(b"w" * 100)
    (src / "postmaster.pid").write_text("42\n")
    dest = tmp_path / "backup"
    dest.mkdir()
    return src, dest


def args_for(src, dest, **extra):
    args = dict(dest=str(dest), backup_id="b1", engine="postgresql", facts={"start_lsn": "0/2000028"},
                sources=[{"path": str(src), "dest": "pgdata", "exclude": ["pg_wal/*", "postmaster.pid", "global/pg_control"]},
                         {"path": str(src / "global" / "pg_control"), "dest": "pgdata/global/pg_control", "phase": 1}],
                create_dirs=["pgdata/pg_wal/archive_status"])
    args.update(extra)
    return args


def test_check_then_copy_then_idempotent_then_idempotent_in_check_mode(tree, capsys):
    src, dest = tree
    check = run(capsys, _ansible_check_mode=True, **args_for(src, dest))
    assert check["changed"] is True
    assert check["plan"]["files"] == 2 and check["plan"]["free_needed"] == 4 * 8192
    assert os.listdir(str(dest)) == []

    real = run(capsys, **args_for(src, dest))
    assert real.get("failed") is not True, real.get("msg")
    assert real["changed"] is True
    assert set(RETURN_KEYS) <= set(real)
    assert real["copied"] == 2 and real["bytes_copied"] == 4 * 8192
    assert [(p["phase"], p["files"]) for p in real["phases"]] == [(0, 1), (1, 1)]
    assert real["set_path"] == str(dest / "b1")
    assert real["manifest_path"] == str(dest / "b1" / "manifest.json")
    manifest = json.loads((dest / "b1" / "manifest.json").read_text())
    assert manifest["engine"] == "postgresql" and manifest["facts"] == {"start_lsn": "0/2000028"}
    assert (dest / "b1" / "data" / "pgdata" / "pg_wal" / "archive_status").is_dir()

    again = run(capsys, **args_for(src, dest))
    assert again["changed"] is False
    assert again["copied"] == 0 and again["skipped_identical"] == 2

    check_again = run(capsys, _ansible_check_mode=True, **args_for(src, dest))
    assert check_again["changed"] is False
    assert check_again["plan"]["free_needed"] == 0


def test_read_size_accepts_a_size_string(tree, capsys):
    src, dest = tree
    result = run(capsys, **args_for(src, dest, read_size="64KiB"))
    assert result.get("failed") is not True, result.get("msg")
    assert result["read_size"] == 65536


def test_a_read_size_that_is_not_a_multiple_of_block_size_fails_clearly(tree, capsys):
    src, dest = tree
    result = run(capsys, **args_for(src, dest, read_size=10000))
    assert result["failed"] is True
    assert "read_size 10000 is not a positive multiple of block_size 8192" in result["msg"]
    assert os.listdir(str(dest)) == []


def test_a_complete_set_is_refused(tree, capsys):
    src, dest = tree
    (dest / "b1").mkdir()
    (dest / "b1" / "COMPLETE").write_text("")
    result = run(capsys, **args_for(src, dest))
    assert result["failed"] is True
    assert result["msg"] == ("backup set %s is already marked COMPLETE by an earlier run; choose a new backup_id or remove the set"
                             % (dest / "b1"))


def test_a_relative_dest_is_refused(tree, capsys):
    src, _dest = tree
    result = run(capsys, **args_for(src, "backup"))
    assert result["failed"] is True
    assert result["msg"].startswith("dest must be an absolute path")


def test_a_missing_source_fails_and_names_it(tree, capsys):
    src, dest = tree
    result = run(capsys, **args_for(src, dest, sources=[{"path": str(src / "nope")}]))
    assert result["failed"] is True
    assert "source %s does not exist" % (src / "nope") in result["msg"]


# -- check mode is the preflight before pre: it refuses what a retry cannot fix, naming the option ----------------------


def refused_in_check_mode(capsys, medium, **args) -> dict:
    result = run(capsys, _ansible_check_mode=True, **args)
    assert result["failed"] is True
    assert result["retryable"] is False
    assert os.listdir(str(medium)) == [], "check mode wrote something"
    return result


def test_check_mode_refuses_a_block_size_that_is_not_a_multiple_of_512(tree, capsys):
    src, dest = tree
    result = refused_in_check_mode(capsys, dest, **args_for(src, dest, block_size=1000, read_size=1000 * 1000))
    assert result["msg"].startswith("block_size must be the database page size, a multiple of 512 from 512 to 1048576 bytes; found 1000")


def test_check_mode_refuses_a_read_size_that_is_not_a_multiple_of_block_size(tree, capsys):
    src, dest = tree
    result = refused_in_check_mode(capsys, dest, **args_for(src, dest, read_size=10000))
    assert result["msg"].startswith("read_size 10000 is not a positive multiple of block_size 8192")


def test_check_mode_refuses_a_read_size_that_is_not_a_size(tree, capsys):
    src, dest = tree
    result = refused_in_check_mode(capsys, dest, **args_for(src, dest, read_size="lots"))
    assert result["msg"].startswith("read_size must be a byte count or a size like 512M")


def test_check_mode_refuses_a_relative_source(tree, capsys):
    src, dest = tree
    result = refused_in_check_mode(capsys, dest, **args_for(src, dest, sources=[{"path": "var/lib/db"}]))
    assert result["msg"].startswith("sources[0].path must be an absolute path; found 'var/lib/db'")


def test_check_mode_refuses_a_missing_source(tree, capsys):
    src, dest = tree
    result = refused_in_check_mode(capsys, dest, **args_for(src, dest, sources=[{"path": str(src)}, {"path": str(src / "nope")}]))
    assert result["msg"].startswith("sources[1].path: source %s does not exist" % (src / "nope"))


def test_check_mode_refuses_a_destination_inside_a_source(tree, capsys):
    src, _dest = tree
    inside = src / "backups"
    inside.mkdir()
    result = refused_in_check_mode(capsys, inside, **args_for(src, inside))
    assert result["msg"].startswith("backup destination %s (real path %s) is inside source %s" % (inside, inside, src))


def test_check_mode_refuses_a_source_inside_the_backup_set(tree, capsys):
    src, dest = tree
    (dest / "b1" / "data").mkdir(parents=True)
    result = run(capsys, _ansible_check_mode=True, **args_for(src, dest, sources=[{"path": str(dest / "b1" / "data")}]))
    assert result["failed"] is True and result["retryable"] is False
    assert result["msg"].startswith("sources[0].path %s is inside the backup set %s" % (dest / "b1" / "data", dest / "b1"))


def test_check_mode_refuses_a_missing_destination_root(tree, capsys, tmp_path):
    src, _dest = tree
    result = run(capsys, _ansible_check_mode=True, **args_for(src, tmp_path / "not-mounted"))
    assert result["failed"] is True and result["retryable"] is False
    assert result["msg"].startswith("backup destination %s does not exist" % (tmp_path / "not-mounted"))
    assert not (tmp_path / "not-mounted").exists()


@pytest.mark.parametrize("backup_id", ["has space", "line1\nline2", ".hidden", "a/b"])
def test_check_mode_refuses_a_backup_id_that_breaks_the_one_rule(tree, capsys, backup_id):
    src, dest = tree
    result = refused_in_check_mode(capsys, dest, **args_for(src, dest, backup_id=backup_id))
    # A line break is refused by the check of every option (_options), before the backup id rule is asked.
    rule = "backup_id must be one line" if "\n" in backup_id else "backup_id must be 1-128 characters from letters, digits and . _ : @ + -"
    assert result["msg"].startswith(rule)


def test_check_mode_refuses_a_negative_free_space_margin(tree, capsys):
    src, dest = tree
    result = refused_in_check_mode(capsys, dest, **args_for(src, dest, free_space_margin=-1))
    assert result["msg"] == "free_space_margin must be 0 or more percent; found -1. Give a whole number of 0 or more percent"


def test_check_mode_reports_bytes_to_write_with_the_margin_and_the_free_space(tree, capsys):
    src, dest = tree
    result = run(capsys, _ansible_check_mode=True, **args_for(src, dest, free_space_margin=50))
    assert result.get("failed") is not True, result.get("msg")
    st = os.statvfs(str(dest))
    assert result["plan"]["free_needed"] == 4 * 8192
    assert result["plan"]["free_required"] == 6 * 8192
    assert result["plan"]["free_space_margin"] == 50
    assert abs(result["plan"]["free_available"] - st.f_bavail * st.f_frsize) < 64 * 1024 * 1024
    assert result["plan"]["resumed"] is False


def test_an_invalid_input_fails_the_real_run_as_not_retryable_too(tree, capsys):
    src, dest = tree
    result = run(capsys, **args_for(src, dest, block_size=1000, read_size=1000 * 1000))
    assert result["failed"] is True and result["retryable"] is False
    assert os.listdir(str(dest)) == []


# -- the copy tells the truth ----------------------------------------------------------------------------------------


def warning_texts(result: dict) -> list:
    """The warnings' texts: ansible-core 2.19 returns each as a WarningSummary with the text in event.msg."""
    return [w["event"]["msg"] if isinstance(w, dict) else w for w in result.get("warnings", [])]


def eio_on(content: bytes):
    def writer(fd, buffer):
        if bytes(buffer[:len(content)]) == content:
            raise OSError(5, "Input/output error")
        return os.write(fd, buffer)
    return writer


def test_a_file_deleted_between_attempts_fails_the_retry_naming_it_and_not_retryable(tmp_path, capsys, monkeypatch):
    src = tmp_path / "db"
    src.mkdir()
    (src / "a").write_bytes(b"alpha")
    (src / "b").write_bytes(b"bravo")
    dest = tmp_path / "backup"
    dest.mkdir()
    args = dict(dest=str(dest), backup_id="b1", run_id="run-1", sources=[{"path": str(src), "dest": "db"}])
    with monkeypatch.context() as patched:
        patched.setattr(_copy_stream, "default_writer", eio_on(b"bravo"))
        first = run(capsys, **args)
    assert first["failed"] is True and first["retryable"] is True
    os.unlink(str(src / "b"))
    for _retry in (2, 3):
        again = run(capsys, **args)
        assert again["failed"] is True and again["retryable"] is False
        assert again["msg"].startswith("file %s listed by the first attempt of this copy" % (src / "b"))


def test_a_truncated_file_is_a_warning_in_the_result_and_the_manifest_with_changes_warn(tree, capsys, monkeypatch):
    src, dest = tree
    relation = src / "base" / "1" / "1259"

    def truncating_reader(fd, buffer, offset):
        got = os.preadv(fd, [buffer], offset)
        if os.fstat(fd).st_ino == os.stat(str(relation)).st_ino:
            os.truncate(str(relation), 8192)
        return got

    monkeypatch.setattr(_copy_stream, "default_reader", truncating_reader)
    result = run(capsys, **args_for(src, dest, changes="warn", read_size=8192))
    assert result.get("failed") is not True, result.get("msg")
    assert [(c["path"], c["size_before"], c["size_after"], c["bytes_read"]) for c in result["changed_during_copy"]] == [
        ("pgdata/base/1/1259", 3 * 8192, 8192, 8192)]
    assert any("changed while it was copied" in w and str(relation) in w for w in warning_texts(result)), result.get("warnings")
    manifest = json.loads((dest / "b1" / "manifest.json").read_text())
    assert manifest["changed_during_copy"] == result["changed_during_copy"]


def test_a_truncated_file_fails_the_copy_with_changes_fail_and_returns_what_changed(tree, capsys, monkeypatch):
    src, dest = tree
    relation = src / "base" / "1" / "1259"

    def truncating_reader(fd, buffer, offset):
        got = os.preadv(fd, [buffer], offset)
        if os.fstat(fd).st_ino == os.stat(str(relation)).st_ino:
            os.truncate(str(relation), 8192)
        return got

    monkeypatch.setattr(_copy_stream, "default_reader", truncating_reader)
    result = run(capsys, **args_for(src, dest, read_size=8192))
    assert result["failed"] is True and result["retryable"] is True
    assert result["msg"].startswith("source file %s (size 24576 -> 8192 bytes, 8192 bytes read of 24576 at open" % relation)
    assert [c["path"] for c in result["changed_during_copy"]] == ["pgdata/base/1/1259"]


def test_the_lease_file_is_renewed_by_the_copy(tree, capsys, tmp_path):
    src, dest = tree
    lease = tmp_path / "guard" / "lease"
    lease.parent.mkdir()
    lease.write_bytes(b"")
    os.utime(str(lease), (1_000_000_000, 1_000_000_000))
    result = run(capsys, **args_for(src, dest, lease_file=str(lease)))
    assert result.get("failed") is not True, result.get("msg")
    assert os.stat(str(lease)).st_mtime > 1_000_000_000
    assert result["lease_renewals"] >= 1


def test_a_fired_guard_fails_the_copy_before_it_starts_and_not_retryable(tree, capsys, tmp_path):
    src, dest = tree
    guard = tmp_path / "guard"
    guard.mkdir()
    (guard / "lease").write_bytes(b"")
    (guard / "fired").write_text("{}")
    result = run(capsys, **args_for(src, dest, lease_file=str(guard / "lease")))
    assert result["failed"] is True and result["retryable"] is False
    assert result["msg"] == ("the guard released the database (see %s): this copy is not consistent; run the backup again"
                             % (guard / "state.json"))
    assert not (dest / "b1" / "data" / "pgdata" / "base").exists()


def test_check_mode_does_not_touch_the_lease_file(tree, capsys, tmp_path):
    src, dest = tree
    lease = tmp_path / "lease"
    lease.write_bytes(b"")
    os.utime(str(lease), (1_000_000_000, 1_000_000_000))
    result = run(capsys, _ansible_check_mode=True, **args_for(src, dest, lease_file=str(lease)))
    assert result.get("failed") is not True, result.get("msg")
    assert os.stat(str(lease)).st_mtime == 1_000_000_000
