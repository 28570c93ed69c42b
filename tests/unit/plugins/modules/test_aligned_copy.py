# -*- coding: utf-8 -*-
# Copyright: contributors to consistent.backup
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Specification of the aligned_copy module's interface: options in, return values and failures out,
check -> real -> idempotent -> idempotent in check mode."""

from __future__ import annotations

import json
import os

import pytest

from ansible.module_utils.testing import patch_module_args

from ansible_collections.consistent.backup.plugins.modules import aligned_copy

RETURN_KEYS = {"set_path", "manifest_path", "files", "copied", "skipped_identical", "bytes_copied", "bytes_total",
               "dirs_created", "symlinks", "vanished", "seconds", "read_size", "block_size", "direct", "plan", "phases"}


def run(capsys, **args) -> dict:
    with patch_module_args(args):
        with pytest.raises(SystemExit):
            aligned_copy.main()
    return json.loads(capsys.readouterr().out)


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
