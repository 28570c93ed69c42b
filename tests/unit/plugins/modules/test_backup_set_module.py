# -*- coding: utf-8 -*-
# Copyright: contributors to consistent.backup
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Specification of the backup_set module's interface for opening and releasing a set: the lock it takes, what
it refuses and what check mode reports (closing and the phase ledger: tests/unit/plugins/module_utils/)."""

from __future__ import annotations

import functools
import json
import os

import pytest

from ansible_collections.consistent.backup.plugins.modules import backup_set
from module_result import module_result  # noqa: E402  pylint: disable=wrong-import-position


run = functools.partial(module_result, backup_set)  # run(capsys, [check_mode=True,] **options)


def read_lock(set_path) -> dict:
    with open(os.path.join(str(set_path), "LOCK"), encoding="utf-8") as handle:
        return json.load(handle)


def test_open_creates_the_set_and_a_lock_naming_the_run(tmp_path, capsys):
    result = run(capsys, dest=str(tmp_path), backup_id="b1", run_id="run-a")
    assert result.get("failed") is not True, result.get("msg")
    assert result["changed"] is True
    assert result["set_path"] == str(tmp_path / "b1")
    lock = read_lock(tmp_path / "b1")
    assert (lock["run_id"], lock["backup_id"]) == ("run-a", "b1")
    assert lock["since"].endswith("Z")
    assert oct(os.stat(str(tmp_path / "b1")).st_mode & 0o777) == "0o750"


def test_opening_again_with_the_same_run_is_not_a_change(tmp_path, capsys):
    run(capsys, dest=str(tmp_path), backup_id="b1", run_id="run-a")
    before = read_lock(tmp_path / "b1")
    result = run(capsys, dest=str(tmp_path), backup_id="b1", run_id="run-a")
    assert result["changed"] is False
    assert read_lock(tmp_path / "b1") == before


def test_a_set_locked_by_another_live_run_is_refused_and_its_lock_kept(tmp_path, capsys):
    run(capsys, dest=str(tmp_path), backup_id="b1", run_id="run-a", owner_pid=os.getpid())
    before = read_lock(tmp_path / "b1")
    result = run(capsys, dest=str(tmp_path), backup_id="b1", run_id="run-b")
    assert result["failed"] is True
    assert result["msg"].startswith("backup set %s is locked by run run-a" % (tmp_path / "b1"))
    assert read_lock(tmp_path / "b1") == before


def test_a_complete_set_is_refused(tmp_path, capsys):
    (tmp_path / "b1").mkdir()
    (tmp_path / "b1" / "COMPLETE").write_text("{}")
    result = run(capsys, dest=str(tmp_path), backup_id="b1", run_id="run-a")
    assert result["failed"] is True
    assert result["msg"] == ("backup set %s is already marked COMPLETE by an earlier run; choose a new backup_id or "
                             "remove the set" % (tmp_path / "b1"))
    assert not (tmp_path / "b1" / "LOCK").exists()


def test_check_mode_open_says_it_would_change_and_writes_nothing(tmp_path, capsys):
    result = run(capsys, dest=str(tmp_path), backup_id="b1", run_id="run-a", _ansible_check_mode=True)
    assert result.get("failed") is not True, result.get("msg")
    assert (result["changed"], result["set_path"], result["lock"]) == (True, str(tmp_path / "b1"), None)
    assert os.listdir(str(tmp_path)) == []


def test_check_mode_open_still_refuses_another_runs_lock(tmp_path, capsys):
    run(capsys, dest=str(tmp_path), backup_id="b1", run_id="run-a", owner_pid=os.getpid())
    result = run(capsys, dest=str(tmp_path), backup_id="b1", run_id="run-b", _ansible_check_mode=True)
    assert result["failed"] is True
    assert result["lock"]["run_id"] == "run-a"


def test_released_drops_only_our_own_lock(tmp_path, capsys):
    run(capsys, dest=str(tmp_path), backup_id="b1", run_id="run-a", owner_pid=os.getpid())
    other = run(capsys, dest=str(tmp_path), backup_id="b1", run_id="run-b", state="released")
    assert (other["changed"], other["released"]) == (False, False)
    assert read_lock(tmp_path / "b1")["run_id"] == "run-a"
    ours = run(capsys, dest=str(tmp_path), backup_id="b1", run_id="run-a", state="released")
    assert (ours["changed"], ours["released"]) == (True, True)
    assert not (tmp_path / "b1" / "LOCK").exists()


@pytest.mark.parametrize("dest, backup_id, found", [
    ("/backup", "../b1", "found '../b1'"), ("/backup", ".b1", "found '.b1'"), ("backup", "b1", "found 'backup'"),
])
def test_a_relative_dest_or_an_id_that_breaks_the_rule_is_refused(tmp_path, capsys, dest, backup_id, found):
    result = run(capsys, dest=dest, backup_id=backup_id, run_id="run-a")
    assert result["failed"] is True
    assert found in result["msg"]


def test_a_missing_destination_is_refused_and_not_created(tmp_path, capsys):
    missing = tmp_path / "media"
    result = run(capsys, dest=str(missing), backup_id="b1", run_id="run-a")
    assert result["failed"] is True
    assert result["msg"] == ("backup destination %s does not exist or is not a directory; mount the backup medium there "
                             "first" % missing)
    assert not missing.exists()
