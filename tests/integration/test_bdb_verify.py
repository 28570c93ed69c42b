# -*- coding: utf-8 -*-
# Copyright: contributors to consistent.backup
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""bdb_verify catches the false passes of db_recover -c: a copy without logs, logs that stop before the checkpoint,
even when the set's own record agrees; a log the record holds but the set lacks is refused by the restore gate."""

from __future__ import annotations

import os
import shutil

import pytest

from bdb_fixtures import BdbEnv, bdb_job, run_module, strip_logs
from helpers import Tmpfs, inventory, load_json, run_playbook


@pytest.fixture(scope="module")
def hot_set(tmp_path_factory):
    """A COMPLETE hot set of an environment with several log files, taken once for this file's tests."""
    base = tmp_path_factory.mktemp("bdb-verify")
    env = BdbEnv(str(base / "bdb"))
    media = Tmpfs(str(base / "backup")).mount("256m")
    env.start_writer()
    run = run_playbook("backup.yml", inventory(base), bdb_job(env, media.path, "base"))
    env.stop_writer()
    assert run.rc == 0, run
    yield os.path.join(media.path, "base")
    media.umount()


def copy_set(set_path, name):
    target = os.path.join(os.path.dirname(set_path), name)
    shutil.copytree(set_path, target)
    return target


def failed_checks(result):
    return {check["check"] for check in result["checks"] if not check["ok"]}


def test_an_intact_set_verifies(tmp_path, hot_set):
    result = run_module(tmp_path, "bdb_verify", {"backup_dest": os.path.dirname(hot_set), "backup_id": "base"})
    assert result.get("failed") is not True, result
    assert result["ok"] is True and failed_checks(result) == set()
    assert not [name for name in os.listdir(os.path.dirname(hot_set)) if name.startswith(".bdb-verify-")]  # scratch removed


def test_a_copy_without_logs_fails_although_db_recover_alone_passes(tmp_path, hot_set):
    bare = copy_set(hot_set, "nologs")
    assert strip_logs(bare, lambda name: False, record=True)  # the record agrees: no logs
    result = run_module(tmp_path, "bdb_verify", {"backup_dest": os.path.dirname(hot_set), "backup_id": "nologs"})
    assert result["ok"] is False and "does not verify" in result["msg"]
    assert "logs present" in failed_checks(result)
    assert result["retryable"] is False


def test_a_copy_with_a_missing_middle_log_is_refused_by_the_gate_before_anything_is_laid_out(tmp_path, hot_set):
    holed = copy_set(hot_set, "holed")
    logs = sorted(name for name in os.listdir(os.path.join(holed, "data", "env", "logs")))
    assert len(logs) >= 3, logs
    middle = logs[len(logs) // 2]
    assert strip_logs(holed, lambda name: name != middle) == [middle]
    result = run_module(tmp_path, "bdb_verify", {"backup_dest": os.path.dirname(hot_set), "backup_id": "holed"})
    assert result["ok"] is False and result["checks"] == []
    assert "holds env/logs/%s, but manifest.json does not list it: the set is not whole" % middle in result["msg"]
    assert not [name for name in os.listdir(os.path.dirname(hot_set)) if name.startswith(".bdb-verify-")]


def test_a_copy_whose_logs_stop_before_the_checkpoint_fails(tmp_path, hot_set):
    cut = copy_set(hot_set, "cut")
    checkpoint_log = int(load_json(os.path.join(cut, "manifest.json"))["facts"]["bdb"]["checkpoint_lsn"].split("/")[0])
    # the logs end before the recorded checkpoint, and the record agrees
    assert strip_logs(cut, lambda name: int(name[4:]) < checkpoint_log, record=True)
    result = run_module(tmp_path, "bdb_verify", {"backup_dest": os.path.dirname(hot_set), "backup_id": "cut"})
    assert result["ok"] is False and "does not verify" in result["msg"]
    assert "checkpoint log present" in failed_checks(result)


def test_a_file_that_differs_from_the_manifest_is_refused(tmp_path, hot_set):
    damaged = copy_set(hot_set, "damaged")
    with open(os.path.join(damaged, "data", "env", "data", "parts.db"), "r+b") as handle:
        handle.seek(5000)
        handle.write(b"\xff" * 16)
    result = run_module(tmp_path, "bdb_verify", {"backup_dest": os.path.dirname(hot_set), "backup_id": "damaged"})
    assert result.get("ok") is not True
    assert "does not match manifest.json" in result["msg"] and result["checks"] == []
