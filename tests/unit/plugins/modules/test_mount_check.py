# -*- coding: utf-8 -*-
# Copyright: contributors to consistent.backup
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Specification of the mount_check module's interface: options in, facts and failures out."""

from __future__ import annotations

import functools

from ansible_collections.consistent.backup.plugins.modules import mount_check
from module_result import module_result  # noqa: E402  pylint: disable=wrong-import-position


run = functools.partial(module_result, mount_check)  # run(capsys, [check_mode=True,] **options)


def test_ready_directory_reports_facts_and_is_not_changed(tmp_path, capsys):
    result = run(capsys, path=str(tmp_path), require_mountpoint=False)
    assert result.get("failed") is not True, result["msg"]
    assert result["changed"] is False
    assert result["failed_checks"] == []
    assert result["probe"] == {"performed": True, "ok": True, "error": None, "reason": None}
    assert set(result["mount"]) == {"mountpoint", "source", "fstype", "options", "super_options", "root", "bind",
                                    "read_only", "mount_id", "major_minor"}
    assert set(result["space"]) == {"total_bytes", "free_bytes", "available_bytes", "total_inodes", "free_inodes"}


def test_check_mode_skips_the_probe_and_says_so(tmp_path, capsys):
    result = run(capsys, path=str(tmp_path), require_mountpoint=False, _ansible_check_mode=True)
    assert result["changed"] is False
    assert result["probe"]["performed"] is False
    assert result["probe"]["reason"].startswith("check mode")


def test_unmet_needs_fail_with_all_messages_and_ids(tmp_path, capsys):
    result = run(capsys, path=str(tmp_path), require_mountpoint=False, fstype=["no-such-fs"], min_free="100%")
    assert result["failed"] is True and result["changed"] is False
    assert result["failed_checks"] == ["fstype", "min_free"]
    assert "expected no-such-fs" in result["msg"] and "; " in result["msg"] and "lower min_free" in result["msg"]


def test_missing_destination_fails_and_is_not_created(tmp_path, capsys):
    missing = tmp_path / "db"
    result = run(capsys, path=str(missing), require_mountpoint=False)
    assert result["failed"] is True
    assert result["msg"] == "backup destination %s does not exist; create it on the mounted backup disk first" % missing
    assert result["exists"] is False
    assert not missing.exists()


def test_relative_path_is_rejected(capsys):
    result = run(capsys, path="backup")
    assert result["failed"] is True
    assert result["msg"].startswith("path must be an absolute path; found 'backup'")


def test_invalid_min_free_is_rejected_with_the_accepted_forms(tmp_path, capsys):
    result = run(capsys, path=str(tmp_path), min_free="plenty")
    assert result["failed"] is True
    assert "min_free must be a byte count" in result["msg"] and "10%" in result["msg"]
