# -*- coding: utf-8 -*-
# Copyright: contributors to consistent.backup
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Specification of the pg_backup_session module's interface without a server: option names and checks, and what
stopped, aborted and status do when there is no session of this run to act on."""

from __future__ import annotations

import functools
import json
import os

import pytest

from ansible_collections.consistent.backup.plugins.modules import pg_backup_session
from module_result import module_result  # noqa: E402  pylint: disable=wrong-import-position


run = functools.partial(module_result, pg_backup_session)  # run(capsys, [check_mode=True,] **options)


class RecordingSession:
    """Stands in for the engine: keeps the options the module passed and answers status."""

    params: dict = {}

    def __init__(self, params, check_mode, warn):
        RecordingSession.params = dict(params)

    def status(self):
        return {"changed": False, "running": False, "state": {}, "msg": "recorded"}

    started = stopped = aborted = status


@pytest.fixture
def runtime_dir(tmp_path):
    path = tmp_path / "runtime"
    path.mkdir(mode=0o700)
    return path


def write_session(runtime_dir, backup_id, state) -> str:
    directory = runtime_dir / backup_id
    directory.mkdir(mode=0o700)
    path = directory / "state.json"
    path.write_text(json.dumps(state))
    return str(path)


@pytest.mark.parametrize("given, canonical, value", [
    ("port", "login_port", 5433), ("login_port", "login_port", 5433), ("host", "login_host", "/run/pg"),
    ("db", "login_db", "postgres"),
])
def test_connection_options_have_community_postgresql_names_and_the_old_ones_as_aliases(
        capsys, monkeypatch, given, canonical, value):
    monkeypatch.setattr(pg_backup_session, "PgBackupSession", RecordingSession)
    result = run(capsys, state="status", **{given: value})
    assert result["msg"] == "recorded"
    assert RecordingSession.params[canonical] == value


def test_status_of_an_empty_runtime_dir_lists_no_session(capsys, runtime_dir):
    result = run(capsys, state="status", runtime_dir=str(runtime_dir))
    assert result["changed"] is False and result["running"] is False
    assert result["sessions"] == []
    assert result["msg"] == "0 PostgreSQL backup session(s) in %s, running: none" % runtime_dir


def test_stopped_without_a_session_is_ok_not_changed_and_writes_no_label(capsys, runtime_dir, tmp_path):
    result = run(capsys, state="stopped", backup_id="b1", runtime_dir=str(runtime_dir), set_path=str(tmp_path))
    assert result.get("failed") is not True, result["msg"]
    assert result["changed"] is False
    assert (result["label_paths"], result["backup_manifest"], result["queries"]) == ([], None, [])
    assert os.listdir(str(tmp_path)) == ["runtime"] and os.listdir(str(runtime_dir)) == []


def test_aborted_leaves_another_runs_session_alone(capsys, runtime_dir):
    state = {"backup_id": "b1", "state": "running", "run_id": "run-a", "holder_pid": 1}
    path = write_session(runtime_dir, "b1", state)
    result = run(capsys, state="aborted", backup_id="b1", run_id="run-b", runtime_dir=str(runtime_dir))
    assert result.get("failed") is not True, result["msg"]
    assert result["changed"] is False
    assert result["session_run_id"] == "run-a"
    assert "belongs to another run (run_id run-a, state running)" in result["msg"]
    assert json.loads(open(path, encoding="utf-8").read()) == state


def test_stopped_of_a_session_that_never_started_has_nothing_to_stop(capsys, runtime_dir):
    write_session(runtime_dir, "b1", {"backup_id": "b1", "state": "failed", "start_failed": True,
                                      "reason": "permission denied for function pg_backup_start"})
    result = run(capsys, state="stopped", backup_id="b1", runtime_dir=str(runtime_dir))
    assert result.get("failed") is not True, result["msg"]
    assert result["changed"] is False
    assert result["msg"] == ("PostgreSQL backup b1 never started (permission denied for function pg_backup_start); the "
                             "server was never in backup mode for it, nothing to stop")


@pytest.mark.parametrize("check_mode", [False, True])
def test_an_id_that_breaks_the_rule_is_refused_at_once_and_not_retryable(capsys, runtime_dir, check_mode):
    result = run(capsys, state="started", backup_id="b 1", runtime_dir=str(runtime_dir), _ansible_check_mode=check_mode)
    assert result["failed"] is True and result["retryable"] is False
    assert result["msg"].startswith("backup_id must be 1-128 characters") and "found 'b 1'" in result["msg"]
    assert os.listdir(str(runtime_dir)) == []


@pytest.mark.parametrize("args, msg", [
    ({"max_duration": 0}, "max_duration must be 1 or more seconds; found 0. Give a whole number of 1 or more seconds"),
    ({"keepalive_interval": -1}, "keepalive_interval must be 1 or more seconds; found -1. Give a whole number of 1 or more seconds"),
    ({"archive_timeout": -5}, "archive_timeout must be 0 or more seconds; found -5. Give a whole number of 0 or more seconds"),
    ({"data_prefix": "pg/data"}, "data_prefix must be one directory name under <set_path>/data/, such as pgdata; found 'pg/data'"),
    ({"data_prefix": ".."}, "data_prefix must be one directory name under <set_path>/data/, such as pgdata; found '..'"),
])
def test_invalid_numbers_and_names_are_refused_naming_the_option(capsys, runtime_dir, args, msg):
    result = run(capsys, state="status", backup_id="b1", runtime_dir=str(runtime_dir), **args)
    assert result["failed"] is True and result["retryable"] is False
    assert result["msg"] == msg


def test_an_empty_run_id_is_refused(capsys, runtime_dir):
    result = run(capsys, state="stopped", backup_id="b1", run_id=" ", runtime_dir=str(runtime_dir))
    assert result["failed"] is True and result["retryable"] is False
    assert result["msg"] == "run_id must not be empty; found ' '. Give a value, or leave run_id out"


def test_started_stopped_and_aborted_need_a_backup_id(capsys, runtime_dir):
    for state in ("started", "stopped", "aborted"):
        result = run(capsys, state=state, runtime_dir=str(runtime_dir))
        assert result["failed"] is True
        assert result["msg"] == "state is %s but all of the following are missing: backup_id" % state
