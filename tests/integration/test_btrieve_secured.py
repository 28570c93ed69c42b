# -*- coding: utf-8 -*-
# Copyright: contributors to consistent.backup
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A secured Btrieve engine (the butil emulator's ``credentials``: every command needs the login) backed up, released by
the guard and restored through the playbooks, with the password nowhere: not in the set, not in the runtime directory,
not in ansible-playbook's output at -vvv, not in the recorded task results - also where butil echoed it in an error
(the emulator's ``echo-command``)."""

from __future__ import annotations

import glob
import json
import os
import signal
import time

import pytest

from btrieve_fixtures import Engine, Inventory, btrieve_job, delta
from helpers import inventory, load_json, run_playbook, start_playbook, wait_until

USER, PASSWORD, DB = "backup", "Zen-s3cret-Pa55", "INVENTORY"
VERBOSE = {"ANSIBLE_VERBOSITY": "3"}  # -vvv: every module's arguments and result in the output
GUARD_LEASE = 8


@pytest.fixture
def engine(tmp_path):
    made = Engine(str(tmp_path))
    made.switch("credentials", "%s:%s:%s" % (USER, PASSWORD, DB))
    made.switch("echo-command")  # a failed call prints its command line, the password with it
    return made


@pytest.fixture
def shop(tmp_path, engine):
    made = Inventory(str(tmp_path / "zen" / "inventory"), engine, mib=1)
    made.fill(10)
    return made


def secured_inventory(tmp_path, password=PASSWORD):
    """The operator's inventory holds the login (as it would, in a vault)."""
    return inventory(tmp_path, backup_btrieve_user=USER, backup_btrieve_password=password, backup_btrieve_db=DB)


def files_holding(secret, *roots):
    """Every file under ``roots`` whose bytes hold ``secret``."""
    found = []
    for root in roots:
        for directory, _dirs, names in os.walk(root):
            for name in names:
                path = os.path.join(directory, name)
                if os.path.isfile(path) and not os.path.islink(path):
                    with open(path, "rb") as handle:
                        if secret.encode() in handle.read():
                            found.append(path)
    return found


def assert_nowhere(secret, run, *roots):
    assert "ESTABLISH LOCAL CONNECTION" in run.out, "the output is not at -vvv"
    assert secret not in run.out, [line for line in run.out.splitlines() if secret in line][:5]
    assert secret not in json.dumps(run.results), "a recorded task result holds the password"
    assert files_holding(secret, *roots) == []


def logins(engine):
    """Each butil call's login arguments, as the engine's calls.log shows them (it masks the password)."""
    return [[arg for arg in call["argv"] if arg[:4].upper() in ("-UID", "-PWD") or arg[:3].upper() == "-DB"]
            for call in engine.calls()]


def test_a_secured_engine_is_backed_up_and_restored_with_the_login_on_every_butil_call_and_the_password_nowhere(
        tmp_path, engine, shop, media):
    engine.switch("fail-startbu", "1 85")  # the first start fails (butil echoes the password), the retry succeeds
    runtime = os.path.join(str(tmp_path), "run")
    job = btrieve_job(engine, media.path, "sec1", shop.files)
    run = run_playbook("backup.yml", secured_inventory(tmp_path), job, env=VERBOSE)
    assert run.rc == 0, run
    assert os.path.exists(os.path.join(media.path, "sec1", "COMPLETE"))
    assert engine.commands() == ["-startbu", "-startbu", "-endbu"]
    assert logins(engine) == [["-UID" + USER, "-PWD********", "-DB" + DB]] * 3
    assert [call["rc"] for call in engine.calls()] == [2, 0, 0]
    assert engine.continuous() == [] and not any(os.path.exists(delta(path)) for path in shop.files)
    # The echoed password of the failed first start is in the ledger and the report, masked.
    pre = load_json(os.path.join(media.path, "sec1", "report.json"))["phases"]["pre"]
    assert pre["attempts"] == 2 and "-PWD********" in pre["messages"][0]["msg"]
    assert_nowhere(PASSWORD, run, media.path, runtime)

    backed_up = shop.read_files(shop.parts_file, shop.locations_file)
    shop.add(1, 1, 77)  # a change after the backup
    calls_before = len(engine.calls())
    restore_vars = {"backup_engine": "btrieve", "backup_dest": media.path, "backup_id": "sec1",
                    "backup_btrieve_butil": engine.butil}
    restored = run_playbook("restore.yml", secured_inventory(tmp_path), restore_vars, env=VERBOSE)
    assert restored.rc == 0, restored
    assert shop.read_files(shop.parts_file, shop.locations_file) == backed_up
    # The restore asked the engine whether it holds each file (-stat), with the login, and the engine answered.
    assert engine.commands()[calls_before:] == ["-stat", "-stat"]
    assert logins(engine)[calls_before:] == [["-UID" + USER, "-PWD********", "-DB" + DB]] * 2
    assert [call["rc"] for call in engine.calls()[calls_before:]] == [0, 0]
    assert_nowhere(PASSWORD, restored, media.path, runtime)


def test_a_password_butil_echoes_in_an_error_is_masked_in_the_ledger_the_report_the_task_result_and_set_stats(
        tmp_path, engine, shop, media):
    wrong = "Wr0ng-pa55word"
    run = run_playbook("backup.yml", secured_inventory(tmp_path, password=wrong),
                       btrieve_job(engine, media.path, "sec2", shop.files), env=VERBOSE)
    assert run.rc != 0, run
    # butil refused the login and echoed the command line, password included.
    assert [call["rc"] for call in engine.calls()] == [2]  # -startbu, not retried (a login failure); post had nothing to end
    started = [result for result in run.failed() if "starting continuous operation failed" in str(result.get("msg"))]
    assert started, run.failure_messages()
    set_dir = os.path.join(media.path, "sec2")
    with open(os.path.join(set_dir, "phases.jsonl"), encoding="utf-8") as handle:
        ledger = [json.loads(line) for line in handle]
    pre = [line for line in ledger if line["phase"] == "pre" and line["result"] == "failed"]
    report = load_json(os.path.join(set_dir, "report.json"))
    stats = run.stats("consistent_backup")["db1"]
    for where, text in (("task result", json.dumps(started)), ("phases.jsonl", json.dumps(pre)),
                        ("report.json", json.dumps(report["phases"]["pre"])), ("set_stats", stats["failure"])):
        assert wrong not in text, where
        assert "-PWD********" in text, (where, text)
    assert "status 170: login failed" in pre[0]["msg"]
    assert_nowhere(wrong, run, media.path, os.path.join(str(tmp_path), "run"))


@pytest.mark.parametrize("kill", ["sigterm-controller", "sigkill-session"])
def test_the_guard_ends_continuous_operation_of_a_secured_engine_with_the_login_when_the_controller_is_killed(
        tmp_path, engine, tmpfs_factory, kill):
    big = Inventory(str(tmp_path / "zen" / "big"), engine, mib=300)
    big.fill(5)
    media = tmpfs_factory("backup", size="800m")
    runtime = os.path.join(str(tmp_path), "run")
    log = str(tmp_path / "controller.log")
    job = btrieve_job(engine, media.path, "killed", big.files, backup_guard_lease=GUARD_LEASE)
    controller = start_playbook("backup.yml", secured_inventory(tmp_path), job, log, env=VERBOSE)
    data_dir = os.path.join(media.path, "killed", "data")
    states = os.path.join(runtime, "guards", "*", "state.json")
    wait_until(lambda: os.path.isdir(data_dir) and os.listdir(data_dir), 90, "the copy to start")
    assert engine.continuous() == sorted(big.files)
    # The guard holds the login in its memory only: not on its command line, not in its environment.
    guard_pid = load_json(glob.glob(states)[0])["pid"]
    for name in ("cmdline", "environ"):
        with open("/proc/%d/%s" % (guard_pid, name), "rb") as handle:
            assert PASSWORD.encode() not in handle.read(), name
    killed_at = time.monotonic()
    if kill == "sigterm-controller":
        os.kill(controller.pid, signal.SIGTERM)  # an AWX cancel
    else:
        os.killpg(controller.pid, signal.SIGKILL)  # the controller and every module it runs: only the guard is left
    controller.wait(timeout=30)
    assert engine.commands() == ["-startbu"], "the controller's post ran before the kill: %s" % engine.calls()
    wait_until(lambda: engine.continuous() == [], GUARD_LEASE + 30, "the guard to end continuous operation (calls %s)"
               % engine.calls())
    assert time.monotonic() - killed_at < GUARD_LEASE + 25
    wait_until(lambda: not any(os.path.exists(delta(path)) for path in big.files), 30, "the roll-in")
    assert big.read_files(big.parts_file, big.locations_file) == big.model_state()
    assert engine.commands() == ["-startbu", "-endbu"]
    assert logins(engine)[-1] == ["-UID" + USER, "-PWD********", "-DB" + DB] and engine.calls()[-1]["rc"] == 0

    def fired():
        records = glob.glob(states) + glob.glob(os.path.join(runtime, "guards", "*", "history", "*.json"))
        return [load_json(path) for path in records if load_json(path).get("state") == "fired"]

    wait_until(fired, 10, "the guard to record its post")
    assert fired()[0]["post_result"]["ok"] is True
    assert not os.path.exists(os.path.join(media.path, "killed", "COMPLETE"))
    with open(log, encoding="utf-8") as handle:
        output = handle.read()
    assert "Arm the on-host guard" in output and "ESTABLISH LOCAL CONNECTION" in output  # the run's -vvv output
    assert PASSWORD not in output
    assert files_holding(PASSWORD, media.path, runtime) == []


def test_stale_deltas_of_a_secured_engine_are_rolled_in_with_the_login(tmp_path, engine, shop, media):
    engine.startbu(*shop.files, login=["-UID" + USER, "-PWD" + PASSWORD, "-DB" + DB])  # another client
    shop.add(0, 0, 1000)
    engine.crash()  # its deltas stay
    calls_before = len(engine.calls())
    job = btrieve_job(engine, media.path, "sec3", shop.files, backup_btrieve_stale_deltas="rollin")
    run = run_playbook("backup.yml", secured_inventory(tmp_path), job, env=VERBOSE)
    assert run.rc == 0, run
    assert engine.commands()[calls_before:] == ["-stat", "-stat", "-startbu", "-endbu"]
    assert logins(engine)[calls_before:] == [["-UID" + USER, "-PWD********", "-DB" + DB]] * 4
    totals, _quantities = shop.read_files(os.path.join(media.path, "sec3", "data", shop.parts_file.lstrip("/")),
                                          os.path.join(media.path, "sec3", "data", shop.locations_file.lstrip("/")))
    assert totals == shop.model_state()[0]  # the set holds the rolled-in write
    assert_nowhere(PASSWORD, run, media.path, os.path.join(str(tmp_path), "run"))
