# -*- coding: utf-8 -*-
# Copyright: contributors to consistent.backup
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The copy tells the truth through the whole job: a file deleted or truncated while backup.yml copies never ends in a
COMPLETE set for the files engine; PostgreSQL records the change as a warning (WAL replay repairs it). And a set
LOCK left by a dead run is taken over and reported. Real tmpfs, real PostgreSQL 18."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time

from helpers import FAKEDB, PYTHON, big_source, inventory, load_json, pg_job, run_playbook

MIB = 1024 * 1024


def files_job(fakedb, dest, source, backup_id):
    return {
        "backup_engine": "files", "backup_dest": dest, "backup_id": backup_id, "backup_retry_delay": 0,
        "backup_files_pre_command": [PYTHON, FAKEDB, fakedb.state_dir, "pre"],
        "backup_files_post_command": [PYTHON, FAKEDB, fakedb.state_dir, "post"],
        "backup_files_paths": [source], "backup_runtime_dir": fakedb.runtime_dir,
    }


def when_copy_starts(set_dir, action):
    """Run ``action`` in a thread as soon as the copy has listed its sources (it records the list, then copies)."""
    done = {}

    def watch():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if os.path.exists(os.path.join(set_dir, ".copy-plan.json")):
                action()
                done["at"] = time.time()
                return
            time.sleep(0.002)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread, done


def test_file_deleted_during_the_copy_fails_it_and_the_set_is_not_complete(tmp_path, fakedb, tmpfs_factory):
    source = big_source(tmpfs_factory, files=8, mib=96)
    media_mount = tmpfs_factory("backup", size="1200m")
    last = os.path.join(source.path, "table07.dat")  # copied last
    watcher, done = when_copy_starts(os.path.join(media_mount.path, "b1"), lambda: os.unlink(last))
    run = run_playbook("backup.yml", inventory(tmp_path), files_job(fakedb, media_mount.path, source.path, "b1"))
    watcher.join(5)
    assert done, "the copy was never seen"
    assert run.rc != 0, run
    report = load_json(os.path.join(media_mount.path, "b1", "report.json"))
    copy = report["phases"]["copy"]
    assert copy["result"] == "failed" and "table07.dat" in copy["msg"] and "vanished" in copy["msg"]
    assert copy["attempts"] == 1  # a vanished file is not something a retry fixes
    assert report["verdict"] == "failed"
    assert not os.path.exists(os.path.join(media_mount.path, "b1", "COMPLETE"))
    assert fakedb.calls() == ["pre ok", "post ok"]


def test_file_truncated_during_the_copy_fails_every_attempt_for_the_files_engine(tmp_path, fakedb, tmpfs_factory):
    source = big_source(tmpfs_factory, files=8, mib=96)
    media_mount = tmpfs_factory("backup", size="1200m")
    last = os.path.join(source.path, "table07.dat")
    watcher, done = when_copy_starts(os.path.join(media_mount.path, "b1"), lambda: os.truncate(last, 10 * MIB))
    run = run_playbook("backup.yml", inventory(tmp_path), files_job(fakedb, media_mount.path, source.path, "b1"))
    watcher.join(5)
    assert done, "the copy was never seen"
    assert run.rc != 0, run
    report = load_json(os.path.join(media_mount.path, "b1", "report.json"))
    copy = report["phases"]["copy"]
    assert copy["result"] == "failed" and copy["attempts"] == 3
    assert "%s (between the listing and its copy, size %d -> %d bytes" % (last, 96 * MIB, 10 * MIB) in copy["msg"]
    assert not os.path.exists(os.path.join(media_mount.path, "b1", "COMPLETE"))


def test_file_truncated_during_the_copy_is_a_warning_for_postgresql(tmp_path, cluster, media):
    ballast = os.path.join(cluster.data_dir, "zz_ballast.dat")  # sorts after base/: copied late
    with open(ballast, "wb") as handle:
        handle.write(os.urandom(64 * MIB))
    watcher, done = when_copy_starts(os.path.join(media.path, "w1"), lambda: os.truncate(ballast, 1 * MIB))
    run = run_playbook("backup.yml", inventory(tmp_path), pg_job(cluster, media.path, "w1", backup_postgresql_read_size="8192"))
    watcher.join(5)
    assert done, "the copy was never seen"
    assert run.rc == 0, run
    report = load_json(os.path.join(media.path, "w1", "report.json"))
    [change] = report["phases"]["copy"]["changed_during_copy"]
    assert change["path"] == "pgdata/zz_ballast.dat"
    assert (change["size_before"], change["size_after"]) == (64 * MIB, 1 * MIB)
    assert load_json(os.path.join(media.path, "w1", "manifest.json"))["changed_during_copy"] == [change]
    assert report["verdict"] == "success"


def test_a_set_lock_left_by_a_dead_run_is_taken_over_and_reported(tmp_path, fakedb, tmpfs_factory):
    media_mount = tmpfs_factory()
    dead = subprocess.Popen(["true"])
    dead.wait()
    os.makedirs(os.path.join(media_mount.path, "b1"))
    boot_id = open("/proc/sys/kernel/random/boot_id", encoding="ascii").read().strip()
    lock = {"run_id": "dead-run", "backup_id": "b1", "host": os.uname().nodename, "since": "2026-11-22T00:00:00Z",
            "epoch": time.time(), "owner": {"host": os.uname().nodename, "boot_id": boot_id, "pid": dead.pid, "start_ticks": 1}}
    with open(os.path.join(media_mount.path, "b1", "LOCK"), "w", encoding="utf-8") as handle:
        json.dump(lock, handle)
    run = run_playbook("backup.yml", inventory(tmp_path), files_job(fakedb, media_mount.path, fakedb.data_dir, "b1"))
    assert run.rc == 0, run
    assert "took over the lock of run dead-run" in run.out, run
    report = load_json(os.path.join(media_mount.path, "b1", "report.json"))
    assert report["lock_taken_over"]["run_id"] == "dead-run"
    assert "process %d no longer exists" % dead.pid in report["lock_taken_over"]["taken_over_because"]
    assert os.path.exists(os.path.join(media_mount.path, "b1", "COMPLETE"))


def test_a_set_lock_of_a_live_run_is_not_broken(tmp_path, fakedb, tmpfs_factory):
    media_mount = tmpfs_factory()
    live = subprocess.Popen(["sleep", "60"])
    try:
        os.makedirs(os.path.join(media_mount.path, "b1"))
        boot_id = open("/proc/sys/kernel/random/boot_id", encoding="ascii").read().strip()
        ticks = int(open("/proc/%d/stat" % live.pid, "rb").read().rsplit(b")", 1)[1].split()[19])
        lock = {"run_id": "live-run", "backup_id": "b1", "host": os.uname().nodename, "since": "2026-11-22T00:00:00Z",
                "epoch": 0, "owner": {"host": os.uname().nodename, "boot_id": boot_id, "pid": live.pid, "start_ticks": ticks}}
        with open(os.path.join(media_mount.path, "b1", "LOCK"), "w", encoding="utf-8") as handle:
            json.dump(lock, handle)
        run = run_playbook("backup.yml", inventory(tmp_path), files_job(fakedb, media_mount.path, fakedb.data_dir, "b1"))
        assert run.rc != 0, run
        assert "locked by run live-run" in run.out and "is alive" in run.out, run
        assert fakedb.calls() == []
        assert load_json(os.path.join(media_mount.path, "b1", "LOCK"))["run_id"] == "live-run"
    finally:
        live.kill()
        live.wait()
