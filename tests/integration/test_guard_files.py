# -*- coding: utf-8 -*-
# Copyright: contributors to consistent.backup
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The on-host guard and the database lock with the files engine: the controller killed during the copy, two runs
against one database, checks before pre, and a failing command's reason in the verdict. Real tmpfs, real processes."""

from __future__ import annotations

import glob
import os
import signal
import subprocess
import time

import pytest

from ansible_collections.consistent.backup.plugins.module_utils import _backup_set
from helpers import (FAKEDB, PYTHON, big_source, inventory, load_json, pid_alive, run_playbook, start_playbook, wait_until,
                     write_inventory)

# Short, so the tests see the guard act soon; long enough for the tasks between arming and the copy on a busy machine.
GUARD_LEASE = 8


def guard_alive(fakedb):
    """Whether a guard process recorded under the test's runtime directory still runs."""
    guards = os.path.join(fakedb.runtime_dir, "guards", "*")
    for state in glob.glob(os.path.join(guards, "state.json")) + glob.glob(os.path.join(guards, "history", "*.json")):
        if pid_alive(load_json(state).get("pid", -1)):
            return True
    return False


def job_vars(fakedb, dest, **more):
    values = {
        "backup_engine": "files",
        "backup_dest": dest,
        "backup_retry_delay": 0,
        "backup_guard_lease": GUARD_LEASE,
        "backup_files_pre_command": [PYTHON, FAKEDB, fakedb.state_dir, "pre"],
        "backup_files_post_command": [PYTHON, FAKEDB, fakedb.state_dir, "post"],
        "backup_files_paths": [fakedb.data_dir],
        "backup_runtime_dir": fakedb.runtime_dir,
    }
    values.update(more)
    return values


# --- the controller dies during the copy --------------------------------------------------------------------

@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_controller_killed_during_copy_the_guard_runs_post_and_the_next_run_reports_it(tmp_path, fakedb, tmpfs_factory, sig):
    source = big_source(tmpfs_factory)
    media = tmpfs_factory("backup", size="2600m")  # room for the killed set and the next one
    variables = job_vars(fakedb, media.path, backup_id="killed", backup_files_paths=[source.path])
    controller = start_playbook("backup.yml", inventory(tmp_path), variables, str(tmp_path / "controller.log"))
    data_dir = os.path.join(media.path, "killed", "data")
    wait_until(lambda: os.path.isdir(data_dir) and os.listdir(data_dir), 60, "the copy to start")
    assert fakedb.db_state() == "quiesced"
    killed_at = time.monotonic()
    os.kill(controller.pid, sig)  # the controller only, as an AWX cancel or a dead controller machine would
    controller.wait(timeout=30)
    wait_until(lambda: fakedb.db_state() == "open", GUARD_LEASE + 30, "the guard to run post")
    released_after = time.monotonic() - killed_at
    assert fakedb.calls()[-1] in ("post ok", "post ok already-open")
    assert not os.path.exists(os.path.join(media.path, "killed", "COMPLETE"))
    # The bound: the copy's last progress plus the lease (plus the guard's poll); the orphaned copy may run to its end.
    assert released_after < GUARD_LEASE + 25, released_after
    wait_until(lambda: not guard_alive(fakedb), 10, "the guard to exit")

    audit = run_playbook("backup.yml", inventory(tmp_path), dict(variables, backup_id="after-kill"), check=True)
    assert audit.rc == 0, audit
    assert "an earlier guard: " in audit.out and '"backup_id": "killed"' in audit.out, audit
    rerun = run_playbook("backup.yml", inventory(tmp_path), dict(variables, backup_id="after-kill"))
    assert rerun.rc == 0, rerun
    assert "the guard of run" in rerun.out and "ran post itself" in rerun.out, rerun
    report = load_json(os.path.join(media.path, "after-kill", "report.json"))
    assert report["guard"]["previous"]["backup_id"] == "killed"
    assert report["guard"]["previous"]["state"] == "fired"
    assert report["guard"]["previous"]["post_ok"] is True
    assert "no progress for" in report["guard"]["previous"]["reason"]
    assert report["verdict"] == "success"


def test_normal_run_leaves_no_guard_process_and_records_the_disarm(tmp_path, fakedb, tmpfs_factory):
    media = tmpfs_factory()
    run = run_playbook("backup.yml", inventory(tmp_path), job_vars(fakedb, media.path, backup_id="b1"))
    assert run.rc == 0, run
    assert not guard_alive(fakedb)
    assert fakedb.calls() == ["pre ok", "post ok"]
    report = load_json(os.path.join(media.path, "b1", "report.json"))
    assert report["guard"]["fired"] is None and report["guard"]["previous"] is None
    assert isinstance(report["guard"]["pid"], int)


def test_a_set_that_cannot_be_opened_disarms_the_guard_armed_for_it_and_pre_never_runs(tmp_path, fakedb, tmpfs_factory):
    # backup_guard's open_set arms the guard and opens the set in one call: a set another live run holds is refused,
    # and the guard armed for it must not stay armed for a run that never reaches pre.
    media = tmpfs_factory()
    holder = subprocess.Popen(["sleep", "300"])
    try:
        _backup_set.open_set(media.path, "b1", "other-run", None, owner_pid=holder.pid)
        run = run_playbook("backup.yml", inventory(tmp_path), job_vars(fakedb, media.path, backup_id="b1"))
    finally:
        holder.kill()
        holder.wait()
    assert run.rc != 0
    [msg] = [msg for msg in run.failure_messages() if "is locked by run other-run" in msg]
    assert msg.endswith("The guard armed for it was disarmed (it had not fired)"), msg
    assert fakedb.calls() == []
    assert not guard_alive(fakedb)
    assert glob.glob(os.path.join(fakedb.runtime_dir, "guards", "*", "state.json")) == []
    assert load_json(os.path.join(media.path, "b1", "LOCK"))["run_id"] == "other-run"  # the other run's lock is kept


# --- one backup per database ----------------------------------------------------------------------------------

def test_second_run_against_the_same_database_fails_before_pre_and_the_first_succeeds(tmp_path, fakedb, tmpfs_factory):
    media = tmpfs_factory()
    fakedb.sleep("pre", 15)  # the first run holds the database long enough for the second to try
    # Two controllers share two cores here: a long lease, so only the lock is under test.
    first_vars = job_vars(fakedb, media.path, backup_id="first", backup_guard_lease=60)
    first = start_playbook("backup.yml", inventory(tmp_path), first_vars, str(tmp_path / "first.log"))
    wait_until(lambda: os.path.isdir(os.path.join(media.path, "first")), 60, "the first run to arm its guard and open its set")
    second_inventory = write_inventory(str(tmp_path / "second.yml"), {"db1": {}})
    second = run_playbook("backup.yml", second_inventory, dict(first_vars, backup_id="second"))
    first.wait(timeout=300)
    assert second.rc != 0, second
    assert "is being backed up by run" in second.out and "backup_id first" in second.out, second
    assert first.returncode == 0, (tmp_path / "first.log").read_text()[-3000:]
    # The second run never ran pre or post: the first run's calls are the only ones.
    assert fakedb.calls() == ["pre ok", "post ok"]
    assert os.path.exists(os.path.join(media.path, "first", "COMPLETE"))
    assert not os.path.exists(os.path.join(media.path, "second"))


# --- checks before pre ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("overrides, named", [
    ({"backup_id": "has space"}, "backup_id must be 1-128 characters"),
    ({"backup_id": "line1\nline2"}, "backup_id must be 1-128 characters"),
    ({"backup_files_block_size": 1000}, "block_size"),
    ({"backup_files_block_size": 8192, "backup_files_read_size": 12288}, "read_size"),
    ({"backup_files_paths": ["/nonexistent/consistent-backup-source"]}, "/nonexistent/consistent-backup-source"),
    ({"backup_files_paths": ["relative/path"]}, "relative/path"),
])
def test_input_that_can_be_known_before_pre_is_refused_before_pre(tmp_path, fakedb, tmpfs_factory, overrides, named):
    media = tmpfs_factory()
    run = run_playbook("backup.yml", inventory(tmp_path), job_vars(fakedb, media.path, **dict({"backup_id": "b1"}, **overrides)))
    assert run.rc != 0, run
    assert named in run.out, run
    assert fakedb.calls() == [], "pre or post ran: %s" % fakedb.calls()
    assert not os.path.exists(os.path.join(fakedb.runtime_dir, "guards")), "a guard was armed"


def test_destination_inside_the_source_is_refused_before_pre(tmp_path, fakedb, tmpfs_factory):
    media = tmpfs_factory()
    inside = os.path.join(media.path, "sets")
    os.mkdir(inside)
    run = run_playbook("backup.yml", inventory(tmp_path),
                       job_vars(fakedb, inside, backup_id="b1", backup_files_paths=[media.path], backup_media_mountpoint=media.path))
    assert run.rc != 0, run
    assert "inside" in run.out, run
    assert fakedb.calls() == []


def test_medium_too_small_for_the_plan_is_refused_before_pre(tmp_path, fakedb, tmpfs_factory):
    source = tmp_path / "bigdb"
    source.mkdir()
    (source / "table.dat").write_bytes(os.urandom(3 * 1024 * 1024))
    media = tmpfs_factory("backup", size="2m")
    run = run_playbook("backup.yml", inventory(tmp_path), job_vars(fakedb, media.path, backup_id="b1", backup_files_paths=[str(source)]))
    assert run.rc != 0, run
    assert any(m.startswith("not enough free space on %s (dest)" % media.path) and "free_space_margin" in m
               for m in run.failure_messages()), run.failure_messages()
    assert fakedb.calls() == []


# --- the reason of a failing command -------------------------------------------------------------------------

def test_failing_pre_command_reason_is_in_the_failure_and_in_report_json(tmp_path, fakedb, tmpfs_factory):
    media = tmpfs_factory()
    fakedb.fail_next("pre", 3)
    run = run_playbook("backup.yml", inventory(tmp_path), job_vars(fakedb, media.path, backup_id="b1"))
    assert run.rc != 0, run
    assert "fakedb: pre failed on demand (0 more failures queued)" in run.out, run
    report = load_json(os.path.join(media.path, "b1", "report.json"))
    assert report["phases"]["pre"]["rc"] == 1
    assert report["phases"]["pre"]["stderr_tail"] == "fakedb: pre failed on demand (0 more failures queued)"
    assert "fakedb: pre failed on demand" in report["failure"]
    assert fakedb.calls() == ["pre fail", "pre fail", "pre fail", "post ok already-open"]


# --- pre's bound ----------------------------------------------------------------------------------------------

def test_a_pre_command_past_its_bound_is_killed_and_the_attempt_fails_saying_so(tmp_path, fakedb, tmpfs_factory):
    media = tmpfs_factory()
    fakedb.sleep("pre", 120)  # a pre command that hangs
    began = time.monotonic()
    run = run_playbook("backup.yml", inventory(tmp_path), job_vars(fakedb, media.path, backup_id="b1", backup_pre_timeout=3,
                                                                   backup_retries=1))
    assert run.rc != 0, run
    assert time.monotonic() - began < 100, "pre was not stopped at its bound"
    message = run.failed()[0]["msg"]  # the pre task's; the verdict repeats it
    assert "backup_pre_timeout (3 s)" in run.failure_messages()[-1]
    assert message.startswith("pre (pre command ") and "did not finish within its bound, backup_pre_timeout (3 s)" in message
    assert "raise backup_pre_timeout" in message
    assert fakedb.calls() == ["post ok already-open"]  # the hung pre never quiesced; post ran all the same
    report = load_json(os.path.join(media.path, "b1", "report.json"))
    assert report["phases"]["pre"]["rc"] == -9
    assert not guard_alive(fakedb)
