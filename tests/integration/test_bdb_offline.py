# -*- coding: utf-8 -*-
# Copyright: contributors to consistent.backup
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Offline Berkeley DB backups: the operator's commands pause and resume the writers; the on-host guard resumes
them when the controller is gone."""

from __future__ import annotations

import glob
import os
import signal
import time

from bdb_fixtures import bdb_env, bdb_job, inventory_state, restore_vars  # noqa: F401  pylint: disable=unused-import
from helpers import inventory, load_json, pid_alive, processes_below, run_playbook, start_playbook, wait_until

# Short, so the test sees the guard act soon; long enough for the tasks between arming and the copy.
GUARD_LEASE = 8
# Pre's bound in the slow-pre tests: longer than their slow pre (twice the lease), far shorter than the default.
PRE_TIMEOUT = 40


def offline_job(env, dest, backup_id, linger=0, before=0, **more):
    """Offline mode; the pre command waits ``before`` seconds, pauses the writer, then lingers ``linger`` seconds."""
    return bdb_job(env, dest, backup_id, backup_bdb_mode="offline", backup_guard_lease=GUARD_LEASE,
                   backup_bdb_pre_command=env.command("pause") + [str(linger), str(before)],
                   backup_bdb_post_command=env.command("resume"), **more)


def test_offline_backup_pauses_and_resumes_the_writer_and_copies_the_last_log(tmp_path, bdb_env, media):
    bdb_env.start_writer()
    run = run_playbook("backup.yml", inventory(tmp_path), offline_job(bdb_env, media.path, "off1"))
    assert run.rc == 0, run
    assert bdb_env.calls() == ["pause", "resume"]
    assert not bdb_env.writer_paused()
    resumed_from = bdb_env.committed()
    wait_until(lambda: bdb_env.committed() > resumed_from, 30, "the writer to commit again")
    bdb_env.stop_writer()
    report = load_json(os.path.join(media.path, "off1", "report.json"))
    assert report["complete"] is True and report["bdb"]["mode"] == "offline"
    assert report["bdb"]["logs"] == 1 and report["bdb"]["first_log"] == report["bdb"]["last_log"]
    assert report["bdb"]["changed_during_copy"] == 0  # the writer was paused: nothing moved under the copy
    assert report["bdb"]["verification"]["ok"] is True
    target = str(tmp_path / "restored")
    restored = run_playbook("restore.yml", inventory(tmp_path), restore_vars(media.path, target))
    assert restored.rc == 0, restored
    state = inventory_state(target)
    assert all(total == spread for total, spread in state["parts"].values()), state


def test_controller_killed_after_pre_the_guard_resumes_the_writer_within_its_bound(tmp_path, bdb_env, media):
    bdb_env.start_writer()
    controller = start_playbook("backup.yml", inventory(tmp_path), offline_job(bdb_env, media.path, "killed", linger=3),
                                str(tmp_path / "controller.log"))
    wait_until(lambda: "pause" in bdb_env.calls(), 60, "pre to pause the writer")
    assert bdb_env.writer_paused()
    killed_at = time.monotonic()
    os.kill(controller.pid, signal.SIGTERM)  # the controller only, as an AWX cancel would
    controller.wait(timeout=30)
    paused_at = bdb_env.committed()
    wait_until(lambda: "resume" in bdb_env.calls(), GUARD_LEASE + 30, "the guard to run post")
    resumed_after = time.monotonic() - killed_at
    wait_until(lambda: bdb_env.committed() > paused_at, 30, "the writer to commit again")
    bdb_env.stop_writer()
    assert resumed_after <= GUARD_LEASE + 30
    assert not os.path.exists(os.path.join(media.path, "killed", "COMPLETE"))
    # it was the guard that resumed the writer: its record says it fired and its post (the resume command) succeeded

    def guard_fired_and_post_succeeded():
        paths = (glob.glob(os.path.join(bdb_env.runtime_dir, "guards", "*", "state.json"))
                 + glob.glob(os.path.join(bdb_env.runtime_dir, "guards", "*", "history", "*.json")))
        return any(record.get("state") == "fired" and (record.get("post_result") or {}).get("ok") is True
                   for record in map(load_json, paths))
    wait_until(guard_fired_and_post_succeeded, 15, "the guard's record that it fired and its post succeeded")


def guard_records(env):
    paths = (glob.glob(os.path.join(env.runtime_dir, "guards", "*", "state.json"))
             + glob.glob(os.path.join(env.runtime_dir, "guards", "*", "history", "*.json")))
    return [load_json(path) for path in paths]


def test_controller_killed_during_a_slow_pre_the_writer_runs_again_within_pre_s_bound(tmp_path, bdb_env, media):
    # The pre command takes twice the lease before it pauses the writer; the controller dies while it runs. The guard
    # must not run post while pre still runs and then leave the writer paused by pre's late pause.
    bdb_env.start_writer()
    slow = 2 * GUARD_LEASE
    variables = offline_job(bdb_env, media.path, "slow-pre", before=slow, backup_pre_timeout=PRE_TIMEOUT)
    controller = start_playbook("backup.yml", inventory(tmp_path), variables, str(tmp_path / "controller.log"))
    wait_until(lambda: processes_below(b"bdb_inventory.py\x00pause", controller.pid), 60, "pre's command to run")
    killed_at = time.monotonic()
    os.kill(controller.pid, signal.SIGKILL)
    controller.wait(timeout=30)
    wait_until(lambda: "pause" in bdb_env.calls(), slow + 30, "pre's command to pause the writer")
    # Released within the bound: pre's bound (it ended well within it), then the lease, then the guard's post.
    wait_until(lambda: bdb_env.calls()[-1:] == ["resume"] and not bdb_env.writer_paused(), PRE_TIMEOUT + GUARD_LEASE + 20,
               "the writer to be resumed after pre's pause")
    assert time.monotonic() - killed_at < PRE_TIMEOUT + GUARD_LEASE + 20
    assert bdb_env.calls() == ["pause", "resume"]  # the guard's post came after pre's pause, not before it
    paused_at = bdb_env.committed()
    wait_until(lambda: bdb_env.committed() > paused_at, 30, "the writer to commit again")
    bdb_env.stop_writer()
    assert not os.path.exists(os.path.join(media.path, "slow-pre", "COMPLETE"))
    wait_until(lambda: any(record.get("state") == "fired" for record in guard_records(bdb_env)), 15, "the guard's record")
    [record] = [record for record in guard_records(bdb_env) if record.get("state") == "fired"]
    assert record["post_result"]["ok"] is True and "no progress for" in record["reason"]
    assert "pre_running" not in record  # pre had ended (and renewed the lease until then) when the lease ran out
    wait_until(lambda: not any(pid_alive(record.get("pid", -1)) for record in guard_records(bdb_env)), 15, "the guard to exit")
