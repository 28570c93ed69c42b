# -*- coding: utf-8 -*-
# Copyright: contributors to consistent.backup
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""playbooks/backup.yml with the files engine: the guard (media, pre, copy, post, retries, verdict) on real tmpfs.

The operator commands are tests/integration/files/fakedb.py, which records each call and fails on demand.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile

import pytest

from helpers import FAKEDB, PYTHON, load_json, run_playbook, write_inventory


@pytest.fixture
def fakedb(tmp_path):
    """A demo database directory and the state of its operator commands."""
    state = tmp_path / "fakedb-state"
    state.mkdir()
    data = tmp_path / "db"
    (data / "tables").mkdir(parents=True)
    (data / "logs").mkdir()
    for name, size in (("tables/accounts.dat", 3 * 1024 * 1024 + 123), ("tables/empty.dat", 0),
                       ("tables/small.dat", 4095), ("logs/log.0000000001", 1024 * 1024)):
        (data / name).write_bytes(os.urandom(size))

    class FakeDb:
        state_dir = str(state)
        data_dir = str(data)

        def fail_next(self, action: str, times: int) -> None:
            (state / ("fail-" + action)).write_text(str(times))

        def calls(self):
            log = state / "calls.log"
            return log.read_text().split("\n")[:-1] if log.exists() else []

    return FakeDb()


def job_vars(fakedb, dest: str, **more):
    values = {
        "backup_engine": "files",
        "backup_dest": dest,
        "backup_retry_delay": 0,
        "backup_files_pre_command": [PYTHON, FAKEDB, fakedb.state_dir, "pre"],
        "backup_files_post_command": [PYTHON, FAKEDB, fakedb.state_dir, "post"],
        "backup_files_paths": [fakedb.data_dir],
    }
    values.update(more)
    return values


def one_host(tmp_path, **host_vars):
    return write_inventory(str(tmp_path / "inventory.yml"), {"db1": host_vars})


def sha256sum(path: str) -> str:
    return subprocess.run(["sha256sum", path], capture_output=True, text=True, check=True).stdout.split()[0]


# --- the medium fails: nothing touches the database ---------------------------------------------------------

@pytest.fixture
def dir_on_root_filesystem():
    """A directory that lives on / itself (tmp_path may be on a tmpfs /tmp on some machines)."""
    path = tempfile.mkdtemp(prefix=".consistent-backup-test-", dir="/")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_destination_that_is_not_a_mount_point_stops_the_job_before_pre(tmp_path, fakedb, dir_on_root_filesystem):
    run = run_playbook("backup.yml", one_host(tmp_path), job_vars(fakedb, dir_on_root_filesystem, backup_id="b1"))
    assert run.rc != 0, run
    assert "is not a mount point" in run.out, run
    assert fakedb.calls() == []
    assert os.listdir(dir_on_root_filesystem) == []


def test_read_only_tmpfs_stops_the_job_before_pre(tmp_path, fakedb, tmpfs_factory):
    media = tmpfs_factory("ro", size="16m", options="ro")
    run = run_playbook("backup.yml", one_host(tmp_path), job_vars(fakedb, media.path, backup_id="b1"))
    assert run.rc != 0, run
    assert [r["failed_checks"] for r in run.failed() if "failed_checks" in r] == [["writable"]], run.failure_messages()
    assert fakedb.calls() == []


def test_tmpfs_smaller_than_min_free_stops_the_job_before_pre(tmp_path, fakedb, tmpfs_factory):
    media = tmpfs_factory("small", size="1m")
    run = run_playbook("backup.yml", one_host(tmp_path),
                       job_vars(fakedb, media.path, backup_id="b1", backup_media_min_free="10M"))
    assert run.rc != 0, run
    assert [r["failed_checks"] for r in run.failed() if "failed_checks" in r] == [["min_free"]], run.failure_messages()
    assert fakedb.calls() == []
    assert os.listdir(media.path) == []


# --- retries and the verdict -------------------------------------------------------------------------------

def test_pre_failing_twice_is_retried_and_the_backup_succeeds(tmp_path, fakedb, tmpfs_factory):
    media = tmpfs_factory()
    fakedb.fail_next("pre", 2)
    run = run_playbook("backup.yml", one_host(tmp_path), job_vars(fakedb, media.path, backup_id="b1"))
    assert run.rc == 0, run
    assert fakedb.calls() == ["pre fail", "pre fail", "pre ok", "post ok"]
    report = load_json(os.path.join(media.path, "b1", "report.json"))
    assert report["phases"]["pre"]["attempts"] == 3
    assert report["phases"]["copy"]["result"] == "ok"
    assert report["verdict"] == "success"
    assert os.path.exists(os.path.join(media.path, "b1", "COMPLETE"))


def test_pre_failing_three_times_skips_copy_runs_post_and_fails(tmp_path, fakedb, tmpfs_factory):
    media = tmpfs_factory()
    fakedb.fail_next("pre", 3)
    run = run_playbook("backup.yml", one_host(tmp_path), job_vars(fakedb, media.path, backup_id="b1"))
    assert run.rc != 0, run
    # post runs although pre never succeeded; the database is already open and post says so and succeeds
    assert fakedb.calls() == ["pre fail", "pre fail", "pre fail", "post ok already-open"]
    set_dir = os.path.join(media.path, "b1")
    assert not os.path.exists(os.path.join(set_dir, "data"))
    assert not os.path.exists(os.path.join(set_dir, "COMPLETE"))
    report = load_json(os.path.join(set_dir, "report.json"))
    assert report["phases"]["pre"] == {**report["phases"]["pre"], "result": "failed", "attempts": 3}
    assert "copy" not in report["phases"]
    assert report["phases"]["post"]["result"] == "ok"
    assert report["verdict"] == "failed"
    assert "pre failed" in report["failure"]


def test_a_medium_too_small_for_the_plan_stops_the_job_before_pre(tmp_path, fakedb, tmpfs_factory):
    media = tmpfs_factory("tiny", size="2m")
    run = run_playbook("backup.yml", one_host(tmp_path), job_vars(fakedb, media.path, backup_id="b1"))
    assert run.rc != 0, run
    assert fakedb.calls() == []
    assert "not enough free space on %s (dest) for the copy" % media.path in run.out, run


def test_copy_filling_the_medium_is_tried_once_runs_post_fails_and_leaves_the_set_incomplete(tmp_path, fakedb, tmpfs_factory):
    media = tmpfs_factory("small", size="8m")
    # The database grows by 8 MiB between the preflight (which it passed) and the copy: pre writes it, then quiesces.
    grow_then_pre = [PYTHON, "-c", "import os, subprocess, sys; open(sys.argv[1], 'ab').write(os.urandom(8 << 20)); "
                     "sys.exit(subprocess.call(sys.argv[2:]))",
                     os.path.join(fakedb.data_dir, "tables", "accounts.dat"), PYTHON, FAKEDB, fakedb.state_dir, "pre"]
    run = run_playbook("backup.yml", one_host(tmp_path), job_vars(fakedb, media.path, backup_id="b1",
                                                                  backup_files_pre_command=grow_then_pre))
    assert run.rc != 0, run
    assert fakedb.calls()[-1] == "post ok"
    assert fakedb.calls().count("pre ok") == 1
    set_dir = os.path.join(media.path, "b1")
    assert not os.path.exists(os.path.join(set_dir, "COMPLETE"))
    report = load_json(os.path.join(set_dir, "report.json"))
    assert report["phases"]["copy"]["result"] == "failed"
    assert report["phases"]["copy"]["attempts"] == 1  # no space left: a retry cannot help
    assert report["phases"]["post"]["result"] == "ok"
    assert report["verdict"] == "failed"
    assert "copy failed" in report["failure"]
    assert "no space left" in report["failure"].lower()


def test_post_failing_once_is_retried_and_the_backup_succeeds(tmp_path, fakedb, tmpfs_factory):
    media = tmpfs_factory()
    fakedb.fail_next("post", 1)
    run = run_playbook("backup.yml", one_host(tmp_path), job_vars(fakedb, media.path, backup_id="b1"))
    assert run.rc == 0, run
    assert fakedb.calls() == ["pre ok", "post fail", "post ok"]
    report = load_json(os.path.join(media.path, "b1", "report.json"))
    assert report["phases"]["post"]["attempts"] == 2
    assert report["verdict"] == "success"


def test_post_failing_three_times_fails_the_job_after_a_good_copy(tmp_path, fakedb, tmpfs_factory):
    media = tmpfs_factory()
    fakedb.fail_next("post", 3)
    run = run_playbook("backup.yml", one_host(tmp_path), job_vars(fakedb, media.path, backup_id="b1"))
    assert run.rc != 0, run
    report = load_json(os.path.join(media.path, "b1", "report.json"))
    assert report["phases"]["copy"]["result"] == "ok"
    assert report["phases"]["post"]["result"] == "failed"
    assert report["verdict"] == "failed"
    assert not os.path.exists(os.path.join(media.path, "b1", "COMPLETE"))


# --- success -------------------------------------------------------------------------------------------------

def test_success_writes_manifest_report_and_complete(tmp_path, fakedb, tmpfs_factory):
    media = tmpfs_factory()
    run = run_playbook("backup.yml", one_host(tmp_path), job_vars(fakedb, media.path, backup_id="b1"))
    assert run.rc == 0, run
    set_dir = os.path.join(media.path, "b1")
    assert sorted(os.listdir(set_dir)) == ["COMPLETE", "data", "manifest.json", "phases.jsonl", "report.json", "set.json"]
    manifest = load_json(os.path.join(set_dir, "manifest.json"))
    files = [entry for entry in manifest["files"] if entry["type"] == "file"]
    assert len(files) == 4
    for entry in files:
        source = "/" + entry["path"]
        assert entry["sha256"] == sha256sum(source), entry
        assert entry["sha256"] == sha256sum(os.path.join(set_dir, "data", entry["path"])), entry
        assert entry["size"] == os.path.getsize(source)
    report = load_json(os.path.join(set_dir, "report.json"))
    assert report["verdict"] == "success" and report["complete"] is True
    for phase in ("pre", "copy", "post"):
        assert report["phases"][phase]["result"] == "ok"
        assert report["phases"][phase]["attempts"] == 1
        assert report["phases"][phase]["end"] >= report["phases"][phase]["start"]
    assert report["phases"]["pre"]["end"] <= report["phases"]["copy"]["start"] <= report["phases"]["post"]["start"]
    assert report["quiesce_seconds"] == pytest.approx(report["phases"]["post"]["end"] - report["phases"]["pre"]["start"], abs=0.01)
    assert report["bytes"] == sum(entry["size"] for entry in files)
    published = run.stats("consistent_backup")["db1"]  # set_stats for AWX
    assert (published["backup_id"], published["verdict"], published["bytes"]) == ("b1", "success", report["bytes"]), published
    assert not os.path.exists(os.path.join(set_dir, "LOCK"))


def test_check_mode_checks_the_medium_and_changes_nothing(tmp_path, fakedb, tmpfs_factory):
    media = tmpfs_factory()
    run = run_playbook("backup.yml", one_host(tmp_path), job_vars(fakedb, media.path, backup_id="b1"), check=True)
    assert run.rc == 0, run
    assert os.listdir(media.path) == []
    assert fakedb.calls() == []
    # check mode says what the run would do: the commands it would run and the plan it would copy
    readiness = run.registered("backup_closed")["readiness"]
    assert "pre would: run %s %s %s pre" % (PYTHON, FAKEDB, fakedb.state_dir) in readiness, readiness
    assert "post would: run %s %s %s post" % (PYTHON, FAKEDB, fakedb.state_dir) in readiness, readiness
    files = sum(len(names) for _dir, _dirs, names in os.walk(fakedb.data_dir))
    assert any(line.startswith("copy would: copy %d files, " % files) for line in readiness), readiness


def test_check_mode_still_fails_on_a_bad_medium(tmp_path, fakedb, tmpfs_factory):
    media = tmpfs_factory("ro", size="16m", options="ro")
    run = run_playbook("backup.yml", one_host(tmp_path), job_vars(fakedb, media.path, backup_id="b1"), check=True)
    assert run.rc != 0, run
    assert [r["failed_checks"] for r in run.failed() if "failed_checks" in r] == [["writable"]], run.failure_messages()


def test_a_complete_set_is_never_overwritten(tmp_path, fakedb, tmpfs_factory):
    media = tmpfs_factory()
    assert run_playbook("backup.yml", one_host(tmp_path), job_vars(fakedb, media.path, backup_id="b1")).rc == 0
    before = (fakedb.calls(), open(os.path.join(media.path, "b1", "COMPLETE")).read())
    run = run_playbook("backup.yml", one_host(tmp_path), job_vars(fakedb, media.path, backup_id="b1"))
    assert run.rc != 0, run
    assert "already marked COMPLETE" in run.out, run
    assert (fakedb.calls(), open(os.path.join(media.path, "b1", "COMPLETE")).read()) == before


def test_a_set_locked_by_another_run_is_refused_before_pre(tmp_path, fakedb, tmpfs_factory):
    media = tmpfs_factory()
    os.makedirs(os.path.join(media.path, "b1"))
    with open(os.path.join(media.path, "b1", "LOCK"), "w", encoding="utf-8") as handle:
        handle.write('{"run_id": "other-run", "host": "elsewhere", "since": "2026-11-21T00:00:00Z", "epoch": 1e12}')
    run = run_playbook("backup.yml", one_host(tmp_path), job_vars(fakedb, media.path, backup_id="b1"))
    assert run.rc != 0, run
    assert "locked by run other-run" in run.out, run
    assert fakedb.calls() == []


def test_three_hosts_in_one_run_make_three_sets(tmp_path, tmpfs_factory):
    media = tmpfs_factory()
    hosts = {}
    for name in ("db1", "db2", "db3"):
        data = tmp_path / name
        data.mkdir()
        (data / "table.dat").write_bytes(os.urandom(200_000))
        hosts[name] = {"backup_files_paths": [str(data)]}
    inventory = write_inventory(str(tmp_path / "inventory.yml"), hosts)
    run = run_playbook("backup.yml", inventory, {"backup_dest": media.path, "backup_retry_delay": 0})
    assert run.rc == 0, run
    sets = sorted(os.listdir(media.path))
    assert len(sets) == 3 and [s.split("-")[0] for s in sets] == ["db1", "db2", "db3"]
    for name in sets:
        assert os.path.exists(os.path.join(media.path, name, "COMPLETE"))
        manifest = load_json(os.path.join(media.path, name, "manifest.json"))
        assert [e["path"] for e in manifest["files"] if e["type"] == "file"][0].endswith(name.split("-")[0] + "/table.dat")


def test_the_ledger_records_every_attempt_of_a_phase_with_its_message(tmp_path, fakedb, tmpfs_factory):
    media = tmpfs_factory()
    fakedb.fail_next("pre", 2)
    run = run_playbook("backup.yml", one_host(tmp_path), job_vars(fakedb, media.path, backup_id="b1"))
    assert run.rc == 0, run
    pre = load_json(os.path.join(media.path, "b1", "report.json"))["phases"]["pre"]
    assert (pre["attempts"], pre["result"]) == (3, "ok")
    assert [m["attempt"] for m in pre["messages"]] == [1, 2]
    assert [m["stderr_tail"] for m in pre["messages"]] == [
        "fakedb: pre failed on demand (1 more failures queued)", "fakedb: pre failed on demand (0 more failures queued)"]
    assert all(m["rc"] == 1 for m in pre["messages"])
