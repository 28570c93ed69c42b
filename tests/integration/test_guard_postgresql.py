# -*- coding: utf-8 -*-
# Copyright: contributors to consistent.backup
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The on-host guard with PostgreSQL: the controller killed during the copy leaves no backup session behind, and
the next run says what the guard did. A real PostgreSQL 18 server with WAL archiving."""

from __future__ import annotations

import os
import signal
import time

import pytest

from helpers import inventory, load_json, module_processes, pg_job, pid_alive, run_playbook, start_playbook, wait_until

GUARD_LEASE = 8


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_controller_killed_during_copy_leaves_no_backup_session_and_the_next_run_reports_it(tmp_path, cluster, media, sig):
    holders = os.path.join(cluster.base_dir, "holders")
    variables = pg_job(cluster, media.path, "killed", backup_guard_lease=GUARD_LEASE,
                       backup_runtime_dir=os.path.join(cluster.base_dir, "guards"),
                       backup_postgresql_read_size="8192")  # one page per read: a copy slow enough to be caught
    controller = start_playbook("backup.yml", inventory(tmp_path), variables, str(tmp_path / "controller.log"))
    state_file = os.path.join(holders, "killed", "state.json")
    wait_until(lambda: os.path.isdir(os.path.join(media.path, "killed", "data")) and os.path.exists(state_file), 120,
               "the copy to start")
    holder = load_json(state_file)
    assert holder["state"] == "running"
    assert cluster.psql("SELECT count(*) FROM pg_stat_activity WHERE pid = %d" % holder["backend_pid"]) == "1"
    killed_at = time.monotonic()
    os.kill(controller.pid, sig)
    controller.wait(timeout=30)

    wait_until(lambda: not pid_alive(holder["holder_pid"]), 120, "the guard to end the holder's session")
    released_after = time.monotonic() - killed_at
    cluster.wait_for("SELECT count(*) = 0 FROM pg_stat_activity WHERE pid = %d" % holder["backend_pid"], "t", 10)
    assert load_json(state_file)["state"] == "aborted"
    assert "released by the guard" in load_json(state_file)["reason"]
    assert not os.path.exists(os.path.join(media.path, "killed", "COMPLETE"))
    # The copy may run on to its end after the controller is gone; the guard acts a lease after its last progress.
    assert released_after < 90, released_after

    rerun_vars = dict(variables, backup_id="after-kill")
    del rerun_vars["backup_postgresql_read_size"]
    rerun = run_playbook("backup.yml", inventory(tmp_path), rerun_vars)
    assert rerun.rc == 0, rerun
    assert "ran post itself" in rerun.out, rerun
    report = load_json(os.path.join(media.path, "after-kill", "report.json"))
    previous = report["guard"]["previous"]
    assert previous["backup_id"] == "killed" and previous["state"] == "fired" and previous["post_ok"] is True
    assert "answered: aborted; its listener, pid %d, is gone" % holder["holder_pid"] in previous["post_attempts"][-1]["stdout"]
    assert report["verdict"] == "success"
    # A normal run leaves neither a guard nor a holder behind.
    after = load_json(os.path.join(holders, "after-kill", "state.json"))
    assert after["state"] == "stopped" and not pid_alive(after["holder_pid"])
    assert not pid_alive(report["guard"]["pid"])


def test_second_backup_of_the_same_cluster_is_refused_before_pre(tmp_path, cluster, media):
    variables = pg_job(cluster, media.path, "first", backup_guard_lease=120,
                       backup_runtime_dir=os.path.join(cluster.base_dir, "guards"), backup_postgresql_read_size="8192")
    first = start_playbook("backup.yml", inventory(tmp_path), variables, str(tmp_path / "first.log"))
    wait_until(lambda: os.path.isdir(os.path.join(media.path, "first", "data")) and module_processes("aligned_copy", first.pid), 120, "the first run's copy")
    paused = module_processes("aligned_copy", first.pid)
    for pid in paused:  # hold the first run in its copy while the second one tries
        os.kill(pid, signal.SIGSTOP)
    try:
        second = run_playbook("backup.yml", inventory(tmp_path), dict(variables, backup_id="second"))
    finally:
        for pid in paused:
            os.kill(pid, signal.SIGCONT)
    first.wait(timeout=600)
    assert second.rc != 0, second
    assert "is being backed up by run" in second.out and "backup_id first" in second.out, second
    assert not os.path.exists(os.path.join(cluster.base_dir, "holders", "second")), "the second run started a backup"
    assert first.returncode == 0, (tmp_path / "first.log").read_text()[-3000:]
    assert os.path.exists(os.path.join(media.path, "first", "COMPLETE"))
