# -*- coding: utf-8 -*-
# Copyright: contributors to consistent.backup
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Berkeley DB environments whose data and log directories are outside the home (DB_CONFIG set_data_dir and
set_lg_dir with absolute paths, the logs on another disk as the Berkeley DB guide advises): backed up, proven,
restored into one target and archived, with real db5.3 utilities."""

from __future__ import annotations

import os

import pytest

from bdb_fixtures import BdbEnv, bdb_job, inventory_state, recovered_state, restore_vars, tree_checksums
from helpers import inventory, load_json, run_playbook


@pytest.fixture
def outside_env(tmp_path):
    made = BdbEnv(str(tmp_path / "bdb"), data_dir=str(tmp_path / "disk1" / "data"), log_dir=str(tmp_path / "disk2" / "logs"))
    yield made
    made.stop_writer()


def test_outside_directories_are_backed_up_under_their_absolute_paths_and_restored_inside_the_target(tmp_path, outside_env, media):
    data_dir, log_dir = str(tmp_path / "disk1" / "data"), str(tmp_path / "disk2" / "logs")
    outside_env.start_writer()
    committed_before = outside_env.committed()
    run = run_playbook("backup.yml", inventory(tmp_path), bdb_job(outside_env, media.path, "out1"))
    outside_env.stop_writer()
    assert run.rc == 0, run
    report = load_json(os.path.join(media.path, "out1", "report.json"))
    assert report["complete"] is True and report["bdb"]["verification"]["ok"] is True
    assert (report["bdb"]["data_dirs"], report["bdb"]["log_dir"]) == ([data_dir], log_dir)
    in_set = {entry["path"] for entry in load_json(os.path.join(media.path, "out1", "manifest.json"))["files"]}
    assert {"env/DB_CONFIG"} | {"env/_outside_home%s/%s" % (data_dir, name) for name in ("history.db", "locations.db", "parts.db")} <= in_set
    logs = sorted(path for path in in_set if path.startswith("env/_outside_home%s/log." % log_dir))
    assert logs and {os.path.basename(path) for path in logs} <= set(outside_env.logs())  # the logs, from the outside log dir
    live = tree_checksums(os.path.dirname(data_dir)), tree_checksums(os.path.dirname(log_dir))

    target = str(tmp_path / "restored")
    restored = run_playbook("restore.yml", inventory(tmp_path), restore_vars(media.path, target))
    assert restored.rc == 0, restored
    fact = restored.fact("bdb_restored")
    assert fact["verified"] is True and len(fact["databases"]) == 3
    # everything inside the target: the copy's DB_CONFIG points at its own copies of the outside directories
    assert fact["config_rewritten"] == {"set_data_dir " + data_dir: "set_data_dir _outside_home" + data_dir,
                                        "set_lg_dir " + log_dir: "set_lg_dir _outside_home" + log_dir}
    with open(os.path.join(outside_env.home, "DB_CONFIG"), encoding="utf-8") as live_config, \
            open(os.path.join(target, "DB_CONFIG.original"), encoding="utf-8") as kept:
        assert kept.read() == live_config.read()
    assert sorted(os.listdir(os.path.join(target, "_outside_home" + data_dir))) == ["history.db", "locations.db", "parts.db"]
    state = inventory_state(target)
    assert state["seq"] >= committed_before
    assert all(total == spread for total, spread in state["parts"].values()), state
    # the restore wrote nothing outside the target
    assert (tree_checksums(os.path.dirname(data_dir)), tree_checksums(os.path.dirname(log_dir))) == live


def test_archival_removes_verified_logs_from_a_log_directory_outside_the_home(tmp_path, outside_env, media):
    outside_env.write(6000)
    live_before = outside_env.logs()
    run = run_playbook("backup.yml", inventory(tmp_path), dict(bdb_job(outside_env, media.path, "out2"), backup_bdb_archive_logs=True))
    assert run.rc == 0, run
    removed = sorted(os.path.basename(path) for path in run.fact("bdb_archived")["removed"])
    assert removed and set(removed) == set(live_before) - set(outside_env.logs())
    assert all(path.startswith(str(tmp_path / "disk2" / "logs") + "/") for path in run.fact("bdb_archived")["removed"])
    state = recovered_state(outside_env.home)  # the environment still recovers after archival
    assert state["seq"] == 6000 and all(total == spread for total, spread in state["parts"].values())


def test_an_incremental_set_takes_the_new_logs_from_a_log_directory_outside_the_home_and_restores(tmp_path, outside_env, media):
    outside_env.write(1000)
    full = run_playbook("backup.yml", inventory(tmp_path), bdb_job(outside_env, media.path, "full"))
    assert full.rc == 0, full
    outside_env.write(2000)
    incremental = run_playbook("backup.yml", inventory(tmp_path),
                               bdb_job(outside_env, media.path, "inc", backup_bdb_mode="incremental"))
    assert incremental.rc == 0, incremental
    report = load_json(os.path.join(media.path, "inc", "report.json"))
    assert report["bdb"]["mode"] == "incremental" and report["bdb"]["verification"]["ok"] is True
    in_set = [entry["path"] for entry in load_json(os.path.join(media.path, "inc", "manifest.json"))["files"]]
    outside_logs = "env/_outside_home%s/log." % (tmp_path / "disk2" / "logs")
    assert in_set and all(path.startswith(outside_logs) for path in in_set)  # logs only, from the outside log dir
    target = str(tmp_path / "restored")
    restored = run_playbook("restore.yml", inventory(tmp_path), restore_vars(media.path, target))
    assert restored.rc == 0, restored
    assert restored.fact("bdb_restored")["chain"] == ["full", "inc"]
    state = inventory_state(target)
    assert state["seq"] == 2000 and all(total == spread for total, spread in state["parts"].values())
