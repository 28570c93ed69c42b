# -*- coding: utf-8 -*-
# Copyright: contributors to consistent.backup
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Specification of the pg_restore module's interface: options in, the restored set's facts and refusals out."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import pwd

from ansible_collections.consistent.backup.plugins.modules import pg_restore
from module_result import module_result  # noqa: E402  pylint: disable=wrong-import-position

LABEL = b"START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\nSTART TIMELINE: 1\nLABEL: b1\n"
OWNER = pwd.getpwuid(os.getuid()).pw_name
FILES = {"pgdata/PG_VERSION": b"18\n", "pgdata/base/5/16384": b"\0" * 8192, "pgdata/global/pg_control": b"control"}


run = functools.partial(module_result, pg_restore)  # run(capsys, [check_mode=True,] **options)


def build_set(dest, backup_id="b1", complete=True) -> str:
    """<dest>/<backup_id> with data/pgdata/..., a manifest.json listing exactly that, backup_label and COMPLETE."""
    set_path = os.path.join(str(dest), backup_id)
    entries = [{"path": "pgdata", "type": "dir", "size": 0}]
    for directory in ("pgdata/base", "pgdata/base/5", "pgdata/global"):
        os.makedirs(os.path.join(set_path, "data", directory))
        entries.append({"path": directory, "type": "dir", "size": 0})
    for path, content in FILES.items():
        with open(os.path.join(set_path, "data", path), "wb") as handle:
            handle.write(content)
        entries.append({"path": path, "type": "file", "size": len(content), "sha256": hashlib.sha256(content).hexdigest()})
    with open(os.path.join(set_path, "manifest.json"), "w", encoding="utf-8") as handle:
        json.dump({"format": 1, "engine": "postgresql", "files": entries,
                   "facts": {"server_version_num": 180001, "system_identifier": "7300000000000000001"}}, handle)
    with open(os.path.join(set_path, "backup_label"), "wb") as handle:
        handle.write(LABEL)
    if complete:
        with open(os.path.join(set_path, "COMPLETE"), "w", encoding="utf-8") as handle:
            handle.write("{}")
    return set_path


def restore_args(dest, target, **more) -> dict:
    args = dict(backup_dest=str(dest), backup_id="b1", target=str(target), owner=OWNER, port=5499, wal_archive="/backup/wal")
    args.update(more)
    return args


def test_check_mode_checks_the_whole_set_and_writes_nothing(tmp_path, capsys):
    set_path = build_set(tmp_path / "media")
    target = tmp_path / "restored"
    result = run(capsys, _ansible_check_mode=True, **restore_args(tmp_path / "media", target))
    assert result.get("failed") is not True, result.get("msg")
    assert result["changed"] is False
    assert (result["backup_id"], result["set_path"], result["label_source"]) == ("b1", set_path, set_path)
    assert result["label"] == {"START WAL LOCATION": "0/2000028 (file 000000010000000000000002)", "START TIMELINE": "1",
                               "LABEL": "b1"}
    assert (result["files"], result["bytes"], result["verified"]) == (3, sum(len(c) for c in FILES.values()), True)
    assert (result["server_version_num"], result["system_identifier"]) == (180001, "7300000000000000001")
    assert result["settings"]["port"] == 5499 and result["settings"]["recovery_target"] == "immediate"
    assert not target.exists()


def test_a_restore_writes_the_copy_the_label_byte_exact_and_the_recovery_settings(tmp_path, capsys):
    build_set(tmp_path / "media")
    target = tmp_path / "restored"
    result = run(capsys, **restore_args(tmp_path / "media", target, recovery_target="name", recovery_target_value="before"))
    assert result.get("failed") is not True, result.get("msg")
    assert result["changed"] is True
    for path, content in FILES.items():
        assert (target / path[len("pgdata/"):]).read_bytes() == content
    assert (target / "backup_label").read_bytes() == LABEL
    assert (target / "recovery.signal").read_bytes() == b""
    auto = (target / "postgresql.auto.conf").read_text()
    assert "port = 5499\n" in auto and "recovery_target_name = 'before'\n" in auto
    assert "restore_command = 'cp \"/backup/wal/%f\" \"%p\"'\n" in auto
    assert (target / "pg_wal" / "archive_status").is_dir()
    assert oct(os.stat(target).st_mode & 0o777) == "0o700"


def test_latest_picks_the_newest_complete_set_and_skips_an_incomplete_one(tmp_path, capsys):
    build_set(tmp_path / "media", "older")
    build_set(tmp_path / "media", "newer")
    os.utime(os.path.join(str(tmp_path / "media"), "older", "COMPLETE"), (1, 1))
    build_set(tmp_path / "media", "unfinished", complete=False)
    result = run(capsys, _ansible_check_mode=True, **restore_args(tmp_path / "media", tmp_path / "t", backup_id="latest"))
    assert result.get("failed") is not True, result.get("msg")
    assert result["backup_id"] == "newer"


def test_a_set_without_complete_is_refused_and_the_target_is_not_made(tmp_path, capsys):
    set_path = build_set(tmp_path / "media", complete=False)
    target = tmp_path / "restored"
    result = run(capsys, **restore_args(tmp_path / "media", target))
    assert result["failed"] is True
    assert result["msg"].startswith("backup set %s is not marked COMPLETE" % set_path)
    assert not target.exists()


def test_a_relative_target_is_refused_naming_the_option(tmp_path, capsys):
    build_set(tmp_path / "media")
    result = run(capsys, **restore_args(tmp_path / "media", "restored"))
    assert result["failed"] is True
    assert result["msg"].startswith("target must be an absolute path; found 'restored'. Give the full path")


def test_a_non_empty_target_is_never_overwritten(tmp_path, capsys):
    build_set(tmp_path / "media")
    target = tmp_path / "restored"
    target.mkdir()
    (target / "keep").write_bytes(b"mine")
    result = run(capsys, **restore_args(tmp_path / "media", target))
    assert result["failed"] is True
    assert "target %s is not empty; a restore never overwrites a directory" % target in result["msg"]
    assert sorted(os.listdir(str(target))) == ["keep"] and (target / "keep").read_bytes() == b"mine"


def test_an_id_that_breaks_the_rule_is_refused_before_any_path_is_built(tmp_path, capsys):
    result = run(capsys, **restore_args(tmp_path / "media", tmp_path / "t", backup_id="../b1"))
    assert result["failed"] is True
    assert "found '../b1'" in result["msg"] and result["msg"].endswith(", or latest for the newest COMPLETE set")


def test_a_recovery_target_without_its_value_is_refused(tmp_path, capsys):
    build_set(tmp_path / "media")
    result = run(capsys, **restore_args(tmp_path / "media", tmp_path / "t", recovery_target="xid"))
    assert result["failed"] is True
    assert result["msg"] == "recovery_target xid needs recovery_target_value (the xid to stop at)"


def test_data_present_needs_a_label_store(tmp_path, capsys):
    result = run(capsys, **restore_args(tmp_path / "media", tmp_path / "t", data_present=True))
    assert result["failed"] is True
    assert result["msg"] == "data_present is True but all of the following are missing: label_dest"


def test_latest_is_the_newest_postgresql_set_when_another_engines_set_is_newer(tmp_path, capsys):
    build_set(tmp_path / "media", "pg1")
    newer = tmp_path / "media" / "files1"
    os.makedirs(str(newer / "data"))
    with open(str(newer / "manifest.json"), "w", encoding="utf-8") as handle:
        json.dump({"format": 1, "engine": "files", "files": []}, handle)
    with open(str(newer / "COMPLETE"), "w", encoding="utf-8") as handle:
        handle.write("{}")
    os.utime(str(newer / "COMPLETE"), (4e9, 4e9))
    result = run(capsys, _ansible_check_mode=True, **restore_args(tmp_path / "media", tmp_path / "restored", backup_id="latest"))
    assert result.get("failed") is not True, result.get("msg")
    assert result["backup_id"] == "pg1"
