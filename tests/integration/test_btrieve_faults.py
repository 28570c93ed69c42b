# -*- coding: utf-8 -*-
# Copyright: contributors to consistent.backup
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The btrieve engine's faults, each through the guarded playbook against the butil emulator: refusals before butil is
called, a transient start failure retried, the engine down, a slow roll-in, deltas left by a crash (fail, rollin,
discard), the controller killed during the copy, check mode, and the restore."""

from __future__ import annotations

import glob
import os
import signal
import time

import pytest

from btrieve_fixtures import Engine, Inventory, Writer, btrieve_job, delta
from bdb_fixtures import run_module
from helpers import inventory, load_json, pid_alive, processes_below, run_playbook, start_playbook, wait_until

GUARD_LEASE = 8
# Pre's bound in the slow-start test: longer than its slow start (twice the lease), far shorter than the default.
PRE_TIMEOUT = 40


@pytest.fixture
def engine(tmp_path):
    return Engine(str(tmp_path))


@pytest.fixture
def shop(tmp_path, engine):
    made = Inventory(str(tmp_path / "zen" / "inventory"), engine, mib=1)
    made.fill(10)
    return made


def phase_attempts(media_path, backup_id, phase):
    path = os.path.join(media_path, backup_id, "phases.jsonl")
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as handle:
        return [attempt for attempt in map(__import__("json").loads, handle)
                if attempt["phase"] == phase and attempt["result"] != "started"]  # ended attempts only


def crashed_with_a_write(engine, shop):
    """Another client's continuous operation, a write that went to the delta, then the engine crashed: deltas stay."""
    engine.startbu(*shop.files)
    shop.add(0, 0, 1000)
    engine.crash()
    assert engine.continuous() == [] and all(os.path.getsize(delta(path)) > 0 for path in shop.files)
    return [delta(path) for path in shop.files]


# --- refused before butil is called ---------------------------------------------------------------------------

def test_a_missing_file_is_refused_before_butil_is_called_and_no_delta_is_made(tmp_path, engine, shop, media):
    missing = os.path.join(os.path.dirname(shop.parts_file), "GONE.MKD")
    run = run_playbook("backup.yml", inventory(tmp_path), btrieve_job(engine, media.path, "b1", shop.files + [missing]))
    assert run.rc != 0, run
    preflight = run.registered("__btrieve_preflight")
    assert missing in preflight["msg"] and preflight["retryable"] is False
    assert preflight["msg"] in [result.get("msg") for result in run.failed()]
    assert engine.calls() == []
    assert not any(os.path.exists(delta(path)) for path in shop.files + [missing])
    assert not os.path.exists(os.path.join(media.path, "b1"))


def test_two_files_with_one_base_name_in_a_directory_are_refused_before_butil_is_called(tmp_path, engine, media):
    directory = tmp_path / "zen" / "billing"
    directory.mkdir(parents=True)
    files = [str(directory / "INVOICE.HDR"), str(directory / "INVOICE.DET")]
    for path in files:
        with open(path, "wb") as handle:
            handle.truncate(8192)
    run = run_playbook("backup.yml", inventory(tmp_path), btrieve_job(engine, media.path, "b1", [str(directory / "INVOICE.*")]))
    assert run.rc != 0, run
    preflight = run.registered("__btrieve_preflight")
    assert "share the base name INVOICE" in preflight["msg"] and str(directory / "INVOICE.^^^") in preflight["msg"]
    assert engine.calls() == []
    assert not os.path.exists(str(directory / "INVOICE.^^^"))


# --- the engine at start ----------------------------------------------------------------------------------------

def test_a_transient_failure_of_the_start_is_retried_and_the_backup_succeeds(tmp_path, engine, shop, media):
    engine.switch("fail-startbu", "1 85")
    ddf_dir = os.path.dirname(shop.parts_file)
    with open(os.path.join(ddf_dir, "FILE.DDF"), "wb") as handle:
        handle.truncate(4096)
    run = run_playbook("backup.yml", inventory(tmp_path),
                       btrieve_job(engine, media.path, "b1", shop.files, backup_btrieve_ddf_dir=ddf_dir))
    assert run.rc == 0, run
    # The data dictionary is in the list and in the set, as the article asks.
    manifest = load_json(os.path.join(media.path, "b1", "manifest.json"))
    assert manifest["facts"]["files"] == shop.files + [os.path.join(ddf_dir, "FILE.DDF")]
    pre = phase_attempts(media.path, "b1", "pre")
    assert [attempt["result"] for attempt in pre] == ["failed", "ok"]
    assert "status 85" in pre[0]["msg"]
    assert engine.commands() == ["-startbu", "-startbu", "-endbu"]
    assert os.path.exists(os.path.join(media.path, "b1", "COMPLETE"))


def test_engine_down_fails_pre_naming_the_engine_with_no_copy_and_post_runs_ok(tmp_path, engine, shop, media):
    engine.switch("engine-down", "3012")
    run = run_playbook("backup.yml", inventory(tmp_path), btrieve_job(engine, media.path, "b1", shop.files))
    assert run.rc != 0, run
    pre = phase_attempts(media.path, "b1", "pre")
    assert [attempt["result"] for attempt in pre] == ["failed"] * 3  # the engine may come back: retried
    assert "status 3012" in pre[-1]["msg"] and "Btrieve/Zen engine" in pre[-1]["msg"]
    assert phase_attempts(media.path, "b1", "copy") == []
    assert not os.path.exists(os.path.join(media.path, "b1", "data"))
    post = run.registered("__btrieve_step")  # the last call of the module: post
    assert not post.get("failed") and post["changed"] is False
    assert [attempt["result"] for attempt in phase_attempts(media.path, "b1", "post")] == ["ok"]
    assert engine.commands() == ["-startbu"] * 3
    assert not os.path.exists(os.path.join(media.path, "b1", "COMPLETE"))


# --- the end ----------------------------------------------------------------------------------------------------

def test_a_slow_start_and_a_slow_roll_in_are_waited_for_and_their_durations_reported(tmp_path, engine, shop, media):
    engine.switch("sleep-rollin", "1.5")  # per file, after -endbu returned
    engine.switch("sleep-startbu", "1")  # and a slow start: its duration is reported too
    run = run_playbook("backup.yml", inventory(tmp_path), btrieve_job(engine, media.path, "b1", shop.files))
    assert run.rc == 0, run
    report = run.fact("btrieve_report")
    assert float(report["start_seconds"]) >= 1.0
    assert float(report["rollin_seconds"]) >= 3.0
    assert [entry["remaining"] for entry in report["rollin_progress"]] == [2, 1, 0]
    assert not any(os.path.exists(delta(path)) for path in shop.files)
    assert load_json(os.path.join(media.path, "b1", "report.json"))["verdict"] == "success"


def test_post_when_nothing_is_in_continuous_operation_is_ok_and_not_changed(tmp_path, engine, shop, media):
    run = run_playbook("backup.yml", inventory(tmp_path), btrieve_job(engine, media.path, "b1", shop.files))
    assert run.rc == 0, run
    again = run_playbook(os.path.join(os.path.dirname(__file__), "files", "btrieve_post.yml"), inventory(tmp_path),
                         btrieve_job(engine, media.path, "b1", shop.files))
    assert again.rc == 0, again
    post = again.registered("__btrieve_step")
    assert post["changed"] is False and not post.get("failed")
    in_check_mode = run_playbook(os.path.join(os.path.dirname(__file__), "files", "btrieve_post.yml"), inventory(tmp_path),
                                 btrieve_job(engine, media.path, "b1", shop.files), check=True)
    assert in_check_mode.rc == 0, in_check_mode
    assert in_check_mode.registered("__btrieve_step")["changed"] is False
    assert engine.commands() == ["-startbu", "-endbu"]  # neither later post called butil


# --- deltas left by a crash -------------------------------------------------------------------------------------

def test_stale_deltas_refuse_the_next_backup_by_default_explaining_both_ways_out(tmp_path, engine, shop, media):
    deltas = crashed_with_a_write(engine, shop)
    run = run_playbook("backup.yml", inventory(tmp_path), btrieve_job(engine, media.path, "b1", shop.files))
    assert run.rc != 0, run
    preflight = run.registered("__btrieve_preflight")
    assert preflight["stale_deltas"] == deltas
    assert "stale_deltas=rollin" in preflight["msg"] and "stale_deltas=discard" in preflight["msg"]
    assert engine.commands() == ["-startbu"]  # the crashed client's start only
    assert all(os.path.exists(path) for path in deltas)


def test_stale_deltas_are_rolled_in_with_rollin_and_the_backup_holds_the_rolled_in_write(tmp_path, engine, shop, media):
    deltas = crashed_with_a_write(engine, shop)
    run = run_playbook("backup.yml", inventory(tmp_path),
                       btrieve_job(engine, media.path, "b1", shop.files, backup_btrieve_stale_deltas="rollin"))
    assert run.rc == 0, run
    assert run.fact("btrieve_report")["stale_deltas_rolled_in"] == deltas
    assert engine.commands() == ["-startbu", "-stat", "-stat", "-startbu", "-endbu"]
    totals, quantities = shop.read_files(os.path.join(media.path, "b1", "data", shop.parts_file.lstrip("/")),
                                         os.path.join(media.path, "b1", "data", shop.locations_file.lstrip("/")))
    assert (totals, quantities) == shop.model_state()  # the write of the crashed session is in the set


def test_rollin_fails_and_says_why_when_the_engine_rolls_in_only_while_a_file_is_held_open(tmp_path, engine, shop, media):
    deltas = crashed_with_a_write(engine, shop)
    engine.switch("hold-open-only")
    run = run_playbook("backup.yml", inventory(tmp_path),
                       btrieve_job(engine, media.path, "b1", shop.files, backup_btrieve_stale_deltas="rollin",
                                   backup_btrieve_timeout=1))
    assert run.rc != 0, run
    pre = phase_attempts(media.path, "b1", "pre")
    assert len(pre) == 1 and "held open" in pre[0]["msg"]  # not retried: a retry cannot help
    assert "-startbu" not in engine.commands()[1:]
    assert all(os.path.exists(path) for path in deltas)


def test_discard_needs_the_acknowledgement_and_keeps_the_deltas_aside(tmp_path, engine, shop, media):
    deltas = crashed_with_a_write(engine, shop)
    contents = [open(path, "rb").read() for path in deltas]  # pylint: disable=consider-using-with
    before = shop.read_files(shop.parts_file, shop.locations_file)
    discard_dir = str(tmp_path / "discarded")
    job = btrieve_job(engine, media.path, "b1", shop.files, backup_btrieve_stale_deltas="discard",
                      backup_btrieve_discard_dir=discard_dir)
    refused = run_playbook("backup.yml", inventory(tmp_path), job)
    assert refused.rc != 0, refused
    assert "backup_btrieve_discard_acknowledged=true" in refused.registered("__btrieve_preflight")["msg"]
    assert all(os.path.exists(path) for path in deltas)

    run = run_playbook("backup.yml", inventory(tmp_path), dict(job, backup_btrieve_discard_acknowledged=True, backup_id="b2"))
    assert run.rc == 0, run
    discarded = run.fact("btrieve_report")["stale_deltas_discarded"]
    assert [entry["delta"] for entry in discarded] == deltas
    assert [open(entry["kept"], "rb").read() for entry in discarded] == contents  # pylint: disable=consider-using-with
    assert all(entry["kept"].startswith(discard_dir + "/") for entry in discarded)
    # The changes since the interrupted start are gone from the files: they are as they were before it.
    assert shop.read_files(shop.parts_file, shop.locations_file) == before


# --- check mode --------------------------------------------------------------------------------------------------

def test_check_mode_starts_nothing_and_reports_stale_deltas(tmp_path, engine, shop, media):
    deltas = crashed_with_a_write(engine, shop)
    job = btrieve_job(engine, media.path, "b1", shop.files, backup_btrieve_stale_deltas="rollin")
    run = run_playbook("backup.yml", inventory(tmp_path), job, check=True)
    assert run.rc == 0, run
    preflight = run.registered("__btrieve_preflight")
    assert preflight["stale_deltas"] == deltas and "would roll them in" in preflight["msg"]
    assert engine.commands() == ["-startbu"]  # the crashed client's start only: nothing started, nothing opened
    assert all(os.path.exists(path) for path in deltas) and engine.continuous() == []

    refused = run_playbook("backup.yml", inventory(tmp_path), dict(job, backup_btrieve_stale_deltas="fail"), check=True)
    assert refused.rc != 0, refused
    assert refused.registered("__btrieve_preflight")["stale_deltas"] == deltas
    assert engine.commands() == ["-startbu"]


def test_check_mode_on_a_clean_database_calls_no_butil_and_says_what_it_would_do(tmp_path, engine, shop, media):
    run = run_playbook("backup.yml", inventory(tmp_path), btrieve_job(engine, media.path, "b1", shop.files), check=True)
    assert run.rc == 0, run
    assert engine.calls() == [] and engine.continuous() == []
    would = run.fact("btrieve_declares")["would"]
    assert "-startbu" in would["pre"] and "-endbu" in would["post"]
    assert not any(os.path.exists(delta(path)) for path in shop.files)


# --- the controller dies ------------------------------------------------------------------------------------------

def test_controller_sigtermed_during_the_copy_the_guard_ends_continuous_operation(tmp_path, engine, tmpfs_factory):
    big = Inventory(str(tmp_path / "zen" / "big"), engine, mib=300)
    big.fill(5)
    media = tmpfs_factory("backup", size="800m")
    writer = Writer(big, pause=0.01)
    writer.start()
    job = btrieve_job(engine, media.path, "killed", big.files, backup_guard_lease=GUARD_LEASE)
    controller = start_playbook("backup.yml", inventory(tmp_path), job, str(tmp_path / "controller.log"))
    data_dir = os.path.join(media.path, "killed", "data")
    try:
        wait_until(lambda: os.path.isdir(data_dir) and os.listdir(data_dir), 90, "the copy to start")
        assert engine.continuous() == sorted(big.files)
        killed_at = time.monotonic()
        os.kill(controller.pid, signal.SIGTERM)
        assert engine.commands() == ["-startbu"], "the controller's post ran before the kill: %s" % engine.calls()
        controller.wait(timeout=30)
        wait_until(lambda: engine.continuous() == [], GUARD_LEASE + 30, "the guard to end continuous operation (calls %s)"
                   % engine.calls())
        ended_after = time.monotonic() - killed_at
    finally:
        writer.stop.set()
        writer.join(30)
    assert writer.error is None, writer.error
    # The bound: the copy's last progress plus the lease (plus the guard's poll); the orphaned copy may run to its end.
    assert ended_after < GUARD_LEASE + 25, (ended_after, engine.calls())
    wait_until(lambda: not any(os.path.exists(delta(path)) for path in big.files), 30, "the roll-in")
    assert big.read_files(big.parts_file, big.locations_file) == big.model_state()
    assert engine.commands()[-1] == "-endbu"

    def fired():
        """The guard's record once it has written its post's result (it does so just after butil returned)."""
        guards = os.path.join(os.path.dirname(engine.state_dir), "guards", "*")
        states = glob.glob(os.path.join(guards, "state.json")) + glob.glob(os.path.join(guards, "history", "*.json"))
        return [load_json(path) for path in states if load_json(path).get("state") == "fired"]

    wait_until(fired, 10, "the guard to record its post")
    assert fired()[0]["post_result"]["ok"] is True
    assert not os.path.exists(os.path.join(media.path, "killed", "COMPLETE"))


# --- restore -----------------------------------------------------------------------------------------------------

def test_restore_puts_the_set_back_only_when_no_delta_exists(tmp_path, engine, shop, media):
    run = run_playbook("backup.yml", inventory(tmp_path), btrieve_job(engine, media.path, "b1", shop.files))
    assert run.rc == 0, run
    backed_up = shop.read_files(shop.parts_file, shop.locations_file)
    shop.add(1, 1, 77)  # a change after the backup, straight to the files
    restore_vars = {"backup_engine": "btrieve", "backup_dest": media.path, "backup_id": "latest",
                    "backup_btrieve_butil": engine.butil}

    engine.startbu(shop.parts_file)  # a file in continuous operation: refused, nothing written
    refused = run_playbook("restore.yml", inventory(tmp_path), restore_vars)
    assert refused.rc != 0, refused
    assert delta(shop.parts_file) in refused.registered("__btrieve_restore")["msg"]
    assert shop.read_files(shop.parts_file, shop.locations_file) != backed_up

    engine.endbu_all()
    restored = run_playbook("restore.yml", inventory(tmp_path), restore_vars)
    assert restored.rc == 0, restored
    fact = restored.fact("btrieve_restored")
    assert fact["backup_id"] == "b1" and fact["verified"] is True and sorted(fact["files"]) == sorted(shop.files)
    assert shop.read_files(shop.parts_file, shop.locations_file) == backed_up


# --- pre cannot outrun the guard ------------------------------------------------------------------------------

def guard_records(engine):
    runtime = os.path.dirname(engine.state_dir)
    paths = (glob.glob(os.path.join(runtime, "guards", "*", "state.json"))
             + glob.glob(os.path.join(runtime, "guards", "*", "history", "*.json")))
    return [load_json(path) for path in paths]


def test_controller_killed_during_a_slow_start_no_file_stays_in_continuous_operation(tmp_path, engine, shop, media):
    # butil -startbu takes twice the lease (BUTIL-139: "this request may take several minutes"); the controller dies
    # while it runs. The guard must not run post before the start lands and then leave the files in continuous operation.
    slow = 2 * GUARD_LEASE
    engine.switch("sleep-startbu", str(slow))
    job = btrieve_job(engine, media.path, "slow-start", shop.files, backup_guard_lease=GUARD_LEASE, backup_pre_timeout=PRE_TIMEOUT)
    controller = start_playbook("backup.yml", inventory(tmp_path), job, str(tmp_path / "controller.log"))
    wait_until(lambda: processes_below(b"\x00-startbu\x00", controller.pid), 60, "butil -startbu to run")
    killed_at = time.monotonic()
    os.kill(controller.pid, signal.SIGKILL)
    controller.wait(timeout=30)
    wait_until(lambda: "-startbu" in engine.commands(), slow + 30, "the slow start to land")
    wait_until(lambda: engine.commands()[-1:] == ["-endbu"] and engine.continuous() == []
               and not any(os.path.exists(delta(path)) for path in shop.files),
               PRE_TIMEOUT + GUARD_LEASE + 20, "no file in continuous operation after the start (calls %s)" % engine.calls())
    assert time.monotonic() - killed_at < PRE_TIMEOUT + GUARD_LEASE + 20
    assert [(call["argv"][0], call["rc"]) for call in engine.calls()] == [("-startbu", 0), ("-endbu", 0)]
    assert not os.path.exists(os.path.join(media.path, "slow-start", "COMPLETE"))
    wait_until(lambda: any(record.get("state") == "fired" for record in guard_records(engine)), 15, "the guard's record")
    wait_until(lambda: not any(pid_alive(record.get("pid", -1)) for record in guard_records(engine)), 15, "the guard to exit")


def test_the_next_run_ends_a_dead_run_s_continuous_operation_and_its_set_holds_a_write_made_before_it(tmp_path, engine, shop, media):
    # A dead run's start that nobody ended (its guard's post failed, or the old guard left it): files in continuous
    # operation, recorded for run "dead-run". A write after it goes to the deltas, not the files.
    dead_start = {"state": "started", "files": shop.files, "butil": engine.butil, "state_dir": engine.state_dir,
                  "run_id": "dead-run"}
    dead = run_module(tmp_path, "btrieve_continuous", dead_start)
    assert dead.get("changed") is True, dead
    shop.add(1, 2, 777)
    assert shop.writes[-1]["went"] == "delta"
    run = run_playbook("backup.yml", inventory(tmp_path), btrieve_job(engine, media.path, "after-dead", shop.files))
    assert run.rc == 0, run
    set_files = [os.path.join(media.path, "after-dead", "data", path.lstrip("/")) for path in shop.files]
    assert shop.read_files(*set_files) == shop.model_state()  # the write made before the run is in the set
    assert engine.commands() == ["-startbu", "-endbu", "-startbu", "-endbu"]  # dead run's start, its end, this run's
    started = run.fact("__btrieve_started")
    assert started["ended_earlier"]["run_id"] == "dead-run" and started["ended_earlier"]["files"] == shop.files
    assert engine.continuous() == []
