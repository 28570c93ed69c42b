# -*- coding: utf-8 -*-
# Copyright: contributors to consistent.backup
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The backup set's lock, report and COMPLETE marker."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from ansible_collections.consistent.backup.plugins.module_utils import _backup_set as bs
from ansible_collections.consistent.backup.plugins.module_utils._fsutil import OUTPUT_TAIL_CHARS

PHASES_OK = {
    "pre": {"start": 100.0, "end": 101.0, "attempts": 1, "result": "ok"},
    "copy": {"start": 101.0, "end": 110.0, "attempts": 1, "result": "ok"},
    "post": {"start": 110.0, "end": 110.5, "attempts": 2, "result": "ok"},
}


def write_manifest(path, files=None):
    with open(os.path.join(path, "manifest.json"), "w", encoding="utf-8") as handle:
        json.dump({"files": files if files is not None else [{"path": "a", "type": "file", "size": 5, "sha256": "x"}]}, handle)


def test_open_creates_the_set_and_takes_the_lock(tmp_path):
    result = bs.open_set(str(tmp_path), "b1", "run-1", None)
    assert result["changed"] is True
    assert json.loads((tmp_path / "b1" / "LOCK").read_text())["run_id"] == "run-1"


def test_open_again_by_the_same_run_is_not_a_change(tmp_path):
    bs.open_set(str(tmp_path), "b1", "run-1", None)
    assert bs.open_set(str(tmp_path), "b1", "run-1", None)["changed"] is False


def test_open_by_another_run_is_refused_with_the_holder_named(tmp_path):
    bs.open_set(str(tmp_path), "b1", "run-1", None)
    with pytest.raises(bs.BackupSetError, match="locked by run run-1"):
        bs.open_set(str(tmp_path), "b1", "run-2", None)


def test_a_lock_older_than_stale_lock_after_is_replaced_and_reported(tmp_path):
    (tmp_path / "b1").mkdir()
    (tmp_path / "b1" / "LOCK").write_text(json.dumps({"run_id": "dead", "epoch": 1.0}))
    result = bs.open_set(str(tmp_path), "b1", "run-2", 3600)
    assert result["broke_stale_lock"]["run_id"] == "dead"
    assert json.loads((tmp_path / "b1" / "LOCK").read_text())["run_id"] == "run-2"


def test_a_complete_set_is_refused(tmp_path):
    (tmp_path / "b1").mkdir()
    (tmp_path / "b1" / "COMPLETE").write_text("{}")
    with pytest.raises(bs.BackupSetError, match="already marked COMPLETE"):
        bs.open_set(str(tmp_path), "b1", "run-1", None)


@pytest.mark.parametrize("backup_id", ["", "a/b", "..", ".hidden", "has space", "line1\nline2", "x" * 129, "tab\t"])
def test_backup_ids_outside_the_one_rule_are_refused(tmp_path, backup_id):
    with pytest.raises(bs.BackupSetError, match="backup_id must be 1-128 characters from letters, digits and") as caught:
        bs.set_path(str(tmp_path), backup_id)
    assert repr(backup_id) in str(caught.value)


@pytest.mark.parametrize("backup_id", ["db1-20261122T020000Z", "a", "x" * 128, "pg@host:5432+full_1.b"])
def test_backup_ids_inside_the_rule_are_accepted(tmp_path, backup_id):
    assert bs.set_path(str(tmp_path), backup_id) == os.path.join(str(tmp_path), backup_id)


def test_a_lock_whose_owner_process_is_gone_is_taken_over_and_reported(tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    bs.open_set(str(tmp_path), "b1", "run-dead", None, owner_pid=dead.pid)
    result = bs.open_set(str(tmp_path), "b1", "run-2", None, owner_pid=os.getpid())
    assert result["broke_stale_lock"]["run_id"] == "run-dead"
    assert "no longer exists" in result["broke_stale_lock"]["taken_over_because"]
    assert bs.read_lock(result["set_path"])["run_id"] == "run-2"


def test_a_lock_whose_owner_lives_is_not_broken(tmp_path):
    live = subprocess.Popen(["sleep", "30"])
    try:
        bs.open_set(str(tmp_path), "b1", "run-live", None, owner_pid=live.pid)
        with pytest.raises(bs.BackupSetError, match=r"locked by run run-live .*process %d on .* is alive" % live.pid):
            bs.open_set(str(tmp_path), "b1", "run-2", None, owner_pid=os.getpid())
        assert bs.read_lock(str(tmp_path / "b1"))["run_id"] == "run-live"
    finally:
        live.kill()
        live.wait()


def test_a_lock_from_another_host_is_never_proved_gone(tmp_path):
    bs.open_set(str(tmp_path), "b1", "run-far", None, owner_pid=os.getpid())
    lock_file = tmp_path / "b1" / "LOCK"
    lock = json.loads(lock_file.read_text())
    lock["owner"]["host"] = lock["host"] = "elsewhere.example"
    lock["owner"]["pid"] = 999999
    lock_file.write_text(json.dumps(lock))
    with pytest.raises(bs.BackupSetError, match="cannot be proved gone from here"):
        bs.open_set(str(tmp_path), "b1", "run-2", None)


def test_relative_destination_is_refused():
    with pytest.raises(bs.BackupSetError, match="absolute"):
        bs.set_path("backup", "b1")


def test_close_after_success_writes_report_then_complete_and_releases_the_lock(tmp_path):
    path = bs.open_set(str(tmp_path), "b1", "run-1", None)["set_path"]
    write_manifest(path)
    report = bs.close_set(path, "b1", "run-1", "files", PHASES_OK, None, [], {})
    assert report["verdict"] == "success" and report["complete"] is True
    assert report["quiesce_seconds"] == 10.5
    assert report["bytes"] == 5
    assert json.loads((tmp_path / "b1" / "report.json").read_text())["verdict"] == "success"
    assert (tmp_path / "b1" / "COMPLETE").exists()
    assert not (tmp_path / "b1" / "LOCK").exists()


def test_close_after_a_failed_phase_writes_no_complete(tmp_path):
    path = bs.open_set(str(tmp_path), "b1", "run-1", None)["set_path"]
    write_manifest(path)
    phases = dict(PHASES_OK, copy={"start": 101.0, "end": 102.0, "attempts": 3, "result": "failed", "msg": "ENOSPC"})
    report = bs.close_set(path, "b1", "run-1", "files", phases, "copy failed: ENOSPC", [], {})
    assert report["verdict"] == "failed" and report["failure"] == "copy failed: ENOSPC"
    assert report["failed_phases"] == ["copy"]
    assert not (tmp_path / "b1" / "COMPLETE").exists()
    assert not (tmp_path / "b1" / "LOCK").exists()


def test_close_without_manifest_is_not_complete(tmp_path):
    path = bs.open_set(str(tmp_path), "b1", "run-1", None)["set_path"]
    report = bs.close_set(path, "b1", "run-1", "files", PHASES_OK, None, [], {})
    assert report["verdict"] == "failed"
    assert "manifest.json" in report["failure"]
    assert not (tmp_path / "b1" / "COMPLETE").exists()


def test_close_without_required_engine_metadata_is_not_complete(tmp_path):
    path = bs.open_set(str(tmp_path), "b1", "run-1", None)["set_path"]
    write_manifest(path)
    report = bs.close_set(path, "b1", "run-1", "postgresql", PHASES_OK, None, ["backup_label"], {})
    assert report["verdict"] == "failed" and "backup_label" in report["failure"]


def test_a_phase_that_never_finished_fails_the_verdict(tmp_path):
    path = bs.open_set(str(tmp_path), "b1", "run-1", None)["set_path"]
    write_manifest(path)
    phases = {key: value for key, value in PHASES_OK.items() if key != "copy"}
    report = bs.close_set(path, "b1", "run-1", "files", phases, None, [], {})
    assert report["verdict"] == "failed" and "copy" in report["failure"]


def test_a_required_engine_phase_that_never_recorded_an_end_fails_the_verdict(tmp_path):
    # bdb's proof (ledger phase verify) crashed before it could record its attempt: the set is not COMPLETE
    path = bs.open_set(str(tmp_path), "b1", "run-1", None)["set_path"]
    write_manifest(path)
    report = bs.close_set(path, "b1", "run-1", "bdb", PHASES_OK, None, [], {}, require_phases=["verify"])
    assert report["verdict"] == "failed" and report["complete"] is False
    assert report["failure"] == "phases verify did not run to the end"
    assert not (tmp_path / "b1" / "COMPLETE").exists()


def test_a_required_engine_phase_that_ended_ok_lets_the_set_be_complete(tmp_path):
    path = bs.open_set(str(tmp_path), "b1", "run-1", None)["set_path"]
    write_manifest(path)
    phases = dict(PHASES_OK, verify={"start": 112.0, "end": 120.0, "attempts": 1, "result": "ok"})
    report = bs.close_set(path, "b1", "run-1", "bdb", phases, None, [], {}, require_phases=["verify"])
    assert report["verdict"] == "success" and report["complete"] is True
    assert (tmp_path / "b1" / "COMPLETE").exists()


def test_close_by_a_run_that_does_not_hold_the_lock_is_refused(tmp_path):
    path = bs.open_set(str(tmp_path), "b1", "run-1", None)["set_path"]
    with pytest.raises(bs.BackupSetError, match="not by this run"):
        bs.close_set(path, "b1", "run-2", "files", PHASES_OK, None, [], {})


def test_check_mode_report_says_ready_and_the_phase_times(tmp_path):
    report = bs.build_report("b1", "files", PHASES_OK, None, None, check_mode=True)
    assert report["verdict"] == "ready"
    assert report["phases"]["copy"]["seconds"] == 9.0
    assert list(report["phases"]) == ["pre", "copy", "post"]


def test_quiesce_comes_from_the_engine_when_it_reports_its_window():
    phases = {
        "pre": dict(PHASES_OK["pre"], quiesce_start=100.6),
        "copy": PHASES_OK["copy"],
        "post": dict(PHASES_OK["post"], quiesce_end=110.1),
    }
    report = bs.build_report("b1", "postgresql", phases, None, None, check_mode=False)
    assert report["quiesce_seconds"] == 9.5 and report["quiesce_source"] == "engine"
    assert report["window_seconds"] == 10.5


def test_quiesce_is_the_controller_window_without_engine_times():
    report = bs.build_report("b1", "files", PHASES_OK, None, None, check_mode=False)
    assert report["quiesce_seconds"] == report["window_seconds"] == 10.5
    assert report["quiesce_source"] == "controller"


def test_close_with_an_unreadable_manifest_is_not_complete(tmp_path):
    path = bs.open_set(str(tmp_path), "b1", "run-1", None)["set_path"]
    (tmp_path / "b1" / "manifest.json").write_text("{not json")
    report = bs.close_set(path, "b1", "run-1", "files", PHASES_OK, None, [], {})
    assert report["verdict"] == "failed" and "not valid JSON" in report["failure"]
    assert not (tmp_path / "b1" / "COMPLETE").exists()


# --- the phase ledger -------------------------------------------------------------------------------------------

def attempt(path, phase, result, start, msg=None, rc=None, facts=None, run_id="run-1"):
    bs.record_attempt(path, run_id, phase, {"start": start, "end": start + 1, "result": result, "msg": msg, "rc": rc,
                                            "stderr_tail": msg, "facts": facts or {}})


def test_a_phase_that_failed_twice_and_passed_on_its_third_attempt_has_three_attempts_and_both_messages(tmp_path):
    path = bs.open_set(str(tmp_path), "b1", "run-1", None)["set_path"]
    attempt(path, "pre", "failed", 100.0, msg="appdb: busy", rc=1)
    attempt(path, "pre", "failed", 105.0, msg="appdb: still busy", rc=1)
    attempt(path, "pre", "ok", 110.0)
    pre = bs.phases_from_ledger(bs.read_ledger(path, "run-1"))["pre"]
    assert (pre["start"], pre["end"], pre["attempts"], pre["result"]) == (100.0, 111.0, 3, "ok")
    assert [m["msg"] for m in pre["messages"]] == ["appdb: busy", "appdb: still busy"]
    assert [m["attempt"] for m in pre["messages"]] == [1, 2]


def started(path, phase, start, run_id="run-1"):
    bs.record_attempt(path, run_id, phase, {"start": start, "result": bs.STARTED, "pid": 4242})


def test_an_attempt_that_started_and_ended_counts_once(tmp_path):
    path = bs.open_set(str(tmp_path), "b1", "run-1", None)["set_path"]
    started(path, "pre", 100.0)
    attempt(path, "pre", "ok", 100.0)
    pre = bs.phases_from_ledger(bs.read_ledger(path, "run-1"))["pre"]
    assert (pre["attempts"], pre["result"], pre["messages"]) == (1, "ok", [])


def test_an_attempt_that_started_and_never_ended_is_a_failed_attempt(tmp_path):
    path = bs.open_set(str(tmp_path), "b1", "run-1", None)["set_path"]
    started(path, "verify", 120.0)
    verify = bs.phases_from_ledger(bs.read_ledger(path, "run-1"))["verify"]
    assert (verify["attempts"], verify["result"], verify["start"], verify["end"]) == (1, "failed", 120.0, None)
    assert "never reported how it ended" in verify["msg"] and "pid 4242" in verify["msg"]
    assert verify["messages"] == [{"attempt": 1, "msg": verify["msg"], "rc": None, "stderr_tail": None}]


def test_a_crashed_attempt_then_a_good_one_is_two_attempts_and_the_phase_is_ok(tmp_path):
    path = bs.open_set(str(tmp_path), "b1", "run-1", None)["set_path"]
    started(path, "copy", 101.0)
    started(path, "copy", 105.0)
    attempt(path, "copy", "ok", 105.0, facts={"bytes": 5})
    copy = bs.phases_from_ledger(bs.read_ledger(path, "run-1"))["copy"]
    assert (copy["attempts"], copy["result"], copy["bytes"]) == (2, "ok", 5)
    assert [m["attempt"] for m in copy["messages"]] == [1] and "never reported" in copy["messages"][0]["msg"]


def test_a_second_copy_of_one_phase_that_died_fails_the_verdict_although_the_first_ended_ok(tmp_path):
    # bdb copies its data files, then its logs, both in phase copy: the logs' copy dying must not leave "ok" standing
    path = bs.open_set(str(tmp_path), "b1", "run-1", None)["set_path"]
    write_manifest(path)
    for phase, start in (("pre", 100.0), ("copy", 101.0)):
        started(path, phase, start)
        attempt(path, phase, "ok", start)
    started(path, "copy", 103.0)
    started(path, "post", 110.0)
    attempt(path, "post", "ok", 110.0)
    report = bs.close_set(path, "b1", "run-1", "bdb", {}, None, [], {})
    assert report["verdict"] == "failed" and report["complete"] is False
    assert report["failed_phases"] == ["copy"] and report["phases"]["copy"]["attempts"] == 2
    assert report["failure"].startswith("copy failed after 2 attempts: the attempt started at ")
    assert not os.path.exists(os.path.join(path, "COMPLETE"))


def test_close_builds_report_phases_from_the_ledger_of_this_run_only(tmp_path):
    path = bs.open_set(str(tmp_path), "b1", "run-1", None)["set_path"]
    write_manifest(path)
    attempt(path, "pre", "ok", 100.0, run_id="an-earlier-run")
    attempt(path, "pre", "ok", 100.0, facts={"quiesce_start": 100.2})
    attempt(path, "copy", "ok", 101.0, facts={"bytes": 5})
    attempt(path, "post", "ok", 110.0, facts={"quiesce_end": 110.7})
    report = bs.close_set(path, "b1", "run-1", "files", {}, None, [], {})
    assert report["verdict"] == "success" and report["complete"] is True
    assert [report["phases"][name]["attempts"] for name in ("pre", "copy", "post")] == [1, 1, 1]
    assert report["phases"]["copy"]["bytes"] == 5
    assert report["quiesce_seconds"] == 10.5 and report["quiesce_source"] == "engine"


def test_close_fails_a_run_whose_ledger_lacks_a_phase(tmp_path):
    path = bs.open_set(str(tmp_path), "b1", "run-1", None)["set_path"]
    write_manifest(path)
    attempt(path, "pre", "ok", 100.0)
    attempt(path, "post", "ok", 110.0)
    report = bs.close_set(path, "b1", "run-1", "files", {}, None, [], {})
    assert report["verdict"] == "failed" and report["failure"] == "phases copy did not run to the end"
    assert not os.path.exists(os.path.join(path, "COMPLETE"))


def test_the_failure_names_the_phase_its_attempts_and_its_last_message(tmp_path):
    path = bs.open_set(str(tmp_path), "b1", "run-1", None)["set_path"]
    attempt(path, "pre", "ok", 100.0)
    attempt(path, "copy", "failed", 101.0, msg="no space left on /backup")
    attempt(path, "post", "ok", 110.0)
    report = bs.close_set(path, "b1", "run-1", "files", {}, None, [], {})
    assert report["failure"] == "copy failed after 1 attempt: no space left on /backup"


def test_a_torn_last_ledger_line_from_a_crash_is_skipped(tmp_path):
    path = bs.open_set(str(tmp_path), "b1", "run-1", None)["set_path"]
    attempt(path, "pre", "ok", 100.0)
    with open(os.path.join(path, bs.LEDGER_NAME), "a", encoding="utf-8") as handle:
        handle.write('{"phase": "copy", "run_')
    assert [r["phase"] for r in bs.read_ledger(path, "run-1")] == ["pre"]


def test_no_ledger_is_written_for_a_set_that_was_never_opened(tmp_path):
    assert bs.record_attempt(str(tmp_path / "missing"), "run-1", "pre", {"result": "ok"}) is False
    assert not os.path.exists(str(tmp_path / "missing"))


def test_a_lock_taken_over_is_in_report_json(tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    bs.open_set(str(tmp_path), "b1", "run-dead", None, owner_pid=dead.pid)
    path = bs.open_set(str(tmp_path), "b1", "run-1", None, owner_pid=os.getpid())["set_path"]
    report = bs.close_set(path, "b1", "run-1", "files", {}, None, [], {})
    assert report["lock_taken_over"]["run_id"] == "run-dead"


class _FakeModule:
    check_mode = False

    def exit_json(self, **result):
        raise SystemExit(0)

    def fail_json(self, **result):
        raise SystemExit(1)


def test_a_module_with_a_ledger_records_its_attempt_when_it_starts_and_again_when_it_ends(tmp_path):
    path = bs.open_set(str(tmp_path), "b1", "run-1", None)["set_path"]
    module = _FakeModule()
    bs.PhaseLedger(module, {"set_path": path, "run_id": "run-1", "phase": "verify"})
    assert [(r["phase"], r["result"], r["pid"]) for r in bs.read_ledger(path, "run-1")] == [("verify", "started", os.getpid())]
    assert bs.phases_from_ledger(bs.read_ledger(path, "run-1"))["verify"]["result"] == "failed"  # if it died now
    with pytest.raises(SystemExit):
        module.exit_json(ok=True)
    assert [r["result"] for r in bs.read_ledger(path, "run-1")] == ["started", "ok"]
    assert bs.phases_from_ledger(bs.read_ledger(path, "run-1"))["verify"]["result"] == "ok"


class LedgerModule:
    """What PhaseLedger uses of an AnsibleModule: check_mode, no_log_values, exit_json and fail_json."""

    check_mode = False

    def __init__(self, secrets):
        self.no_log_values = set(secrets)
        self.exited = None

    def exit_json(self, **result):
        self.exited = ("ok", result)

    def fail_json(self, **result):
        self.exited = ("failed", result)


def test_a_secret_echoed_in_a_failure_is_masked_in_the_ledger_and_in_report_json(tmp_path):
    set_dir = str(tmp_path / "set")
    os.mkdir(set_dir)
    module = LedgerModule({"s3cret"})
    bs.PhaseLedger(module, {"set_path": set_dir, "run_id": "r1", "phase": "post"})
    # butil echoed its command line; the password sits where a tail cut first would keep a fragment of it ("3cret").
    error = "\nBUTIL-100: MicroKernel error = 170"
    noise = "x" * (OUTPUT_TAIL_CHARS - len("3cret") - len(error))
    module.fail_json(msg="ending continuous operation failed: butil -endbu @x.lst -UIDadmin -PWDs3cret exited with 2",
                     rc=2, stdout="butil -endbu @x.lst -UIDadmin -PWDs3cret" + noise + error, stderr="s3cret")
    with open(os.path.join(set_dir, bs.LEDGER_NAME), encoding="utf-8") as handle:
        ledger = handle.read()
    assert "s3cret" not in ledger and "3cret" not in ledger
    ended = [json.loads(line) for line in ledger.splitlines()][-1]
    assert ended["msg"] == "ending continuous operation failed: butil -endbu @x.lst -UIDadmin -PWD******** exited with 2"
    assert ended["stderr_tail"] == "********"
    write_manifest(set_dir)
    report = bs.close_set(set_dir, "b1", "r1", "btrieve", {}, None, [], {})
    assert "s3cret" not in json.dumps(report)
    with open(os.path.join(set_dir, "report.json"), encoding="utf-8") as handle:
        assert "s3cret" not in handle.read()
    # The module's own result is masked by AnsibleModule (fail_json), which gets it unchanged.
    assert "s3cret" in module.exited[1]["msg"]


def test_an_engine_report_with_a_verdict_key_does_not_change_the_verdict(tmp_path):
    path = bs.open_set(str(tmp_path), "b1", "run-1", None)["set_path"]
    # no manifest: the set is not complete, whatever the engine's report says
    report = bs.close_set(path, "b1", "run-1", "files", PHASES_OK, None, [],
                          {"verdict": "success", "complete": True, "failure": None, "engine_fact": 7})
    assert (report["verdict"], report["complete"], report["engine_fact"]) == ("failed", False, 7)
    assert report["failure"].startswith("the set lacks manifest.json")
    assert not os.path.exists(os.path.join(path, "COMPLETE"))


def test_open_records_whose_set_it_is(tmp_path):
    opened = bs.open_set(str(tmp_path), "b1", "run-1", None, engine="bdb", host="db1", database="/srv/env")
    assert opened["identity"] == {"format": 1, "backup_id": "b1", "engine": "bdb", "host": "db1",
                                  "database": "/srv/env", "run_id": "run-1"}
    with open(os.path.join(opened["set_path"], "set.json"), encoding="utf-8") as handle:
        assert json.load(handle) == opened["identity"]
