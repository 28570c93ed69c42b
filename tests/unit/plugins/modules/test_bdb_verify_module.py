# -*- coding: utf-8 -*-
# Copyright: contributors to consistent.backup
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Specification of the bdb_verify module's interface: the chain it resolves, the checks it reports in check mode,
and its refusals (a set that is not COMPLETE, a target that is not empty). Recovery itself is in the integration tests."""

from __future__ import annotations

import errno
import fcntl
import functools
import hashlib
import json
import os

import pytest

from ansible_collections.consistent.backup.plugins.modules import bdb_verify
from module_result import module_result  # noqa: E402  pylint: disable=wrong-import-position


run = functools.partial(module_result, bdb_verify)  # run(capsys, [check_mode=True,] **options)


def make_set(dest, backup_id, facts, files, complete=True):
    path = os.path.join(str(dest), backup_id)
    if facts.get("mode") != "incremental":
        files = dict(files, DB_CONFIG=b"set_data_dir data\nset_lg_dir logs\n")  # a full set holds its DB_CONFIG
    entries = []
    for rel, content in files.items():
        os.makedirs(os.path.dirname(os.path.join(path, "data", "env", rel)), exist_ok=True)
        with open(os.path.join(path, "data", "env", rel), "wb") as handle:
            handle.write(content)
        entries.append({"path": "env/" + rel, "type": "file", "size": len(content), "sha256": hashlib.sha256(content).hexdigest()})
    # the engine's own record of what the set holds, as the role's copy writes it (the restore gate checks it)
    logs = sorted(os.path.basename(rel) for rel in files if os.path.basename(rel).startswith("log."))
    record = {"data_dirs": ["data"], "log_dir": "logs", "first_log": logs[0] if logs else None, "last_log": logs[-1] if logs else None,
              "data_files": sorted(rel for rel in files if not os.path.basename(rel).startswith("log.") and rel != "DB_CONFIG")}
    with open(os.path.join(path, "manifest.json"), "w", encoding="utf-8") as handle:
        json.dump({"files": entries, "facts": {"bdb": dict(record, **facts)}}, handle)
    # whose set it is, as backup_set writes it when the set is opened (the set reader's keys)
    with open(os.path.join(path, "set.json"), "w", encoding="utf-8") as handle:
        json.dump({"format": 1, "backup_id": backup_id, "engine": "bdb", "host": facts.get("host", "db1"),
                   "database": facts.get("home", "/env")}, handle)
    if complete:
        open(os.path.join(path, "COMPLETE"), "w", encoding="utf-8").close()
    return path


LOGS = {"logs/log.0000000003": b"3", "logs/log.0000000004": b"4", "logs/log.0000000005": b"5"}


def test_check_mode_resolves_the_chain_and_checks_its_logs(capsys, tmp_path):
    make_set(tmp_path, "f1", {"home": "/env", "mode": "hot", "checkpoint_lsn": "3/28"}, dict(LOGS, **{"data/a.db": b"a"}))
    make_set(tmp_path, "i1", {"home": "/env", "mode": "incremental", "previous_set": "f1", "checkpoint_lsn": "6/28"},
             {"logs/log.0000000005": b"55", "logs/log.0000000006": b"6"})
    result = run(capsys, check_mode=True, backup_dest=str(tmp_path), backup_id="latest")
    assert result["chain"] == ["f1", "i1"] and result["ok"] is True
    assert (result["first_log"], result["last_log"]) == ("log.0000000003", "log.0000000006")
    assert not [name for name in os.listdir(str(tmp_path)) if name.startswith(".bdb-verify")]


def test_check_mode_reports_a_gap_across_the_chain(capsys, tmp_path):
    make_set(tmp_path, "f1", {"home": "/env", "mode": "hot", "checkpoint_lsn": "3/28"}, dict(LOGS, **{"data/a.db": b"a"}))
    make_set(tmp_path, "i1", {"home": "/env", "mode": "incremental", "previous_set": "f1", "checkpoint_lsn": "7/28"},
             {"logs/log.0000000007": b"7"})
    result = run(capsys, check_mode=True, backup_dest=str(tmp_path), backup_id="i1")
    assert result["ok"] is False
    assert [c["detail"] for c in result["checks"] if c["check"] == "logs contiguous"] == ["missing log.0000000006"]


def test_a_set_that_is_not_complete_is_refused(capsys, tmp_path):
    make_set(tmp_path, "f1", {"home": "/env", "mode": "hot"}, LOGS, complete=False)
    result = run(capsys, backup_dest=str(tmp_path), backup_id="f1")
    assert result["failed"] is True and "not marked COMPLETE" in result["msg"] and result["retryable"] is False


def test_a_restore_target_that_is_not_empty_is_refused(capsys, tmp_path):
    make_set(tmp_path, "f1", {"home": "/env", "mode": "hot"}, LOGS)
    target = tmp_path / "target"
    target.mkdir()
    (target / "keep.db").write_bytes(b"x")
    result = run(capsys, backup_dest=str(tmp_path), backup_id="f1", target=str(target))
    assert result["failed"] is True and "not an empty directory" in result["msg"]
    assert os.listdir(str(target)) == ["keep.db"]


def test_check_mode_runs_the_restore_gate_and_refuses_a_set_missing_a_recorded_database(capsys, tmp_path):
    make_set(tmp_path, "f1", {"home": "/env", "mode": "hot", "checkpoint_lsn": "3/28", "data_files": ["data/a.db", "data/b.db"]},
             dict(LOGS, **{"data/a.db": b"a"}))
    result = run(capsys, check_mode=True, backup_dest=str(tmp_path), backup_id="f1")
    assert result["failed"] is True
    assert "holds env/data/b.db, but manifest.json does not list it: the set is not whole" in result["msg"]


def test_check_mode_fails_a_set_that_records_no_database(capsys, tmp_path):
    make_set(tmp_path, "f1", {"home": "/env", "mode": "hot", "checkpoint_lsn": "3/28"}, LOGS)
    result = run(capsys, check_mode=True, backup_dest=str(tmp_path), backup_id="f1")
    assert result["ok"] is False
    assert [c["detail"] for c in result["checks"] if not c["ok"]] == ["the set records no database, so there is nothing to prove"]


def test_a_refused_restore_leaves_an_absent_target_absent(capsys, tmp_path):
    make_set(tmp_path, "f1", {"home": "/env", "mode": "hot", "checkpoint_lsn": "3/28", "data_files": ["data/a.db", "data/b.db"]},
             dict(LOGS, **{"data/a.db": b"a"}))
    target = tmp_path / "restore" / "here"
    result = run(capsys, backup_dest=str(tmp_path), backup_id="f1", target=str(target))
    assert result["failed"] is True and "Nothing was written to %s" % target in result["msg"]
    assert not (tmp_path / "restore").exists()


def test_a_db_config_that_names_other_directories_than_the_set_recorded_is_refused(capsys, tmp_path):
    path = make_set(tmp_path, "f1", {"home": "/srv/env", "mode": "hot", "checkpoint_lsn": "3/28"}, dict(LOGS, **{"data/a.db": b"a"}))
    config = b"set_data_dir ../victim\nset_lg_dir logs\n"
    with open(os.path.join(path, "data", "env", "DB_CONFIG"), "wb") as handle:
        handle.write(config)
    with open(os.path.join(path, "manifest.json"), encoding="utf-8") as handle:
        manifest = json.load(handle)
    for entry in manifest["files"]:
        if entry["path"] == "env/DB_CONFIG":
            entry.update(size=len(config), sha256=hashlib.sha256(config).hexdigest())  # the manifest agrees
    with open(os.path.join(path, "manifest.json"), "w", encoding="utf-8") as handle:
        json.dump(manifest, handle)
    result = run(capsys, check_mode=True, backup_dest=str(tmp_path), backup_id="f1")
    assert result["failed"] is True
    assert "names the data directories ['/srv/victim'] and the log directory logs, but the set recorded ['data']" in result["msg"]


def test_a_full_set_without_the_db_config_its_directories_need_is_refused(capsys, tmp_path):
    path = make_set(tmp_path, "f1", {"home": "/srv/env", "mode": "hot", "checkpoint_lsn": "3/28"}, dict(LOGS, **{"data/a.db": b"a"}))
    os.unlink(os.path.join(path, "data", "env", "DB_CONFIG"))
    with open(os.path.join(path, "manifest.json"), encoding="utf-8") as handle:
        manifest = json.load(handle)
    manifest["files"] = [entry for entry in manifest["files"] if entry["path"] != "env/DB_CONFIG"]
    with open(os.path.join(path, "manifest.json"), "w", encoding="utf-8") as handle:
        json.dump(manifest, handle)
    result = run(capsys, check_mode=True, backup_dest=str(tmp_path), backup_id="f1")
    assert result["failed"] is True and "which only a DB_CONFIG names, but it holds no DB_CONFIG" in result["msg"]


def refuse(code):
    """A stand-in for the ioctl or copy_file_range that refuses with ``code`` as the kernel does."""
    def double(*_args):
        raise OSError(code, os.strerror(code))
    return double


def layout_one(tmp_path, content=b"page" * 5000):
    """copy_checked of one file into a sink, as the proof's layout calls it; (destination, layout)."""
    source = tmp_path / "set.db"
    source.write_bytes(content)
    (tmp_path / "copy").mkdir()
    destination = str(tmp_path / "copy" / "set.db")
    entry = {"size": len(content), "sha256": hashlib.sha256(content).hexdigest()}
    sink = bdb_verify.DirectorySink(str(tmp_path / "copy"), "the copy", chown=False, writeback=False)
    layout = bdb_verify.Layout()
    bdb_verify.copy_checked(str(source), destination, entry, sink, layout)
    return destination, layout


def test_a_layout_without_clone_or_copy_file_range_copies_and_says_so(monkeypatch, tmp_path):
    monkeypatch.setattr(fcntl, "ioctl", refuse(errno.EOPNOTSUPP))
    monkeypatch.setattr(os, "copy_file_range", refuse(errno.EXDEV))
    destination, layout = layout_one(tmp_path)
    assert open(destination, "rb").read() == b"page" * 5000
    assert layout.facts() == {"layout_method": "copy", "bytes_cloned": 0, "layout_bytes": {"copy": 20000}}
    assert os.listdir(os.path.dirname(destination)) == ["set.db"]  # the clone's temporary file was removed


def test_a_refused_reflink_lays_out_with_copy_file_range(monkeypatch, tmp_path):
    monkeypatch.setattr(fcntl, "ioctl", refuse(errno.EINVAL))
    destination, layout = layout_one(tmp_path)
    assert open(destination, "rb").read() == b"page" * 5000
    assert layout.facts()["layout_method"] == "copy_file_range"


def test_a_clone_that_differs_from_the_manifest_is_refused_and_removed(monkeypatch, tmp_path):
    # the clone is read back and checked: a clone that does not hold the manifest's bytes is never named
    def bad_clone(_src_fd, dst_fd, _size, _refused):
        os.write(dst_fd, b"torn" * 5000)
        return "reflink"
    monkeypatch.setattr(bdb_verify, "clone_file", bad_clone)
    with pytest.raises(bdb_verify.BdbError, match="does not match its manifest.json"):
        layout_one(tmp_path)
    assert os.listdir(str(tmp_path / "copy")) == []


def test_a_layout_reports_the_method_that_shared_least():
    layout = bdb_verify.Layout()
    layout.add("reflink", 100)
    layout.add("copy", 5)
    assert layout.facts() == {"layout_method": "copy", "bytes_cloned": 100, "layout_bytes": {"reflink": 100, "copy": 5}}
