# -*- coding: utf-8 -*-
# Copyright: contributors to consistent.backup
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Incremental Berkeley DB sets: only the logs since the last COMPLETE set of the same environment; refused without
a full set to build on; a full set every backup_bdb_full_every runs and after a bulk load; a chain restores."""

from __future__ import annotations

import os

from bdb_fixtures import bdb_env, bdb_job, inventory_state, restore_vars  # noqa: F401  pylint: disable=unused-import
from helpers import inventory, load_json, run_playbook


def backup(tmp_path, env, media, backup_id, **more):
    run = run_playbook("backup.yml", inventory(tmp_path), bdb_job(env, media.path, backup_id, **more))
    assert run.rc == 0, run
    return load_json(os.path.join(media.path, backup_id, "report.json"))["bdb"]


def set_files(media, backup_id):
    return sorted(entry["path"] for entry in load_json(os.path.join(media.path, backup_id, "manifest.json"))["files"]
                  if entry["type"] == "file")


def test_an_incremental_without_a_full_set_is_refused_before_pre(tmp_path, bdb_env, media):
    run = run_playbook("backup.yml", inventory(tmp_path), bdb_job(bdb_env, media.path, "inc0", backup_bdb_mode="incremental"))
    assert run.rc != 0
    assert any("no COMPLETE set of the environment" in msg for msg in run.failure_messages()), run.failure_messages()
    assert not os.path.exists(os.path.join(media.path, "inc0"))  # refused by the preflight: no set was opened


def test_a_full_set_and_two_incrementals_restore_to_the_state_of_the_last_incremental(tmp_path, bdb_env, media):
    bdb_env.start_writer()
    full = backup(tmp_path, bdb_env, media, "f1")
    first = backup(tmp_path, bdb_env, media, "i1", backup_bdb_mode="incremental")
    before_last = bdb_env.committed()
    last = backup(tmp_path, bdb_env, media, "i2", backup_bdb_mode="incremental")
    bdb_env.stop_writer()
    assert full["mode"] == "hot" and first["mode"] == "incremental" and last["mode"] == "incremental"
    assert (first["previous_set"], first["base_set"], first["runs_since_full"]) == ("f1", "f1", 1)
    assert (last["previous_set"], last["base_set"], last["runs_since_full"]) == ("i1", "f1", 2)
    # an incremental holds logs only, from the previous set's last log on
    assert all(os.path.basename(path).startswith("log.") for path in set_files(media, "i2"))
    assert last["first_log"] == first["last_log"]
    assert last["verification"]["ok"] is True and last["verification"]["chain"] == ["f1", "i1", "i2"]
    target = str(tmp_path / "restored")
    restored = run_playbook("restore.yml", inventory(tmp_path), restore_vars(media.path, target, "i2"))
    assert restored.rc == 0, restored
    fact = restored.fact("bdb_restored")
    assert fact["chain"] == ["f1", "i1", "i2"] and fact["verified"] is True
    assert fact["last_log"] == last["last_log"]
    state = inventory_state(target)
    assert state["seq"] >= before_last  # every transaction committed before the last incremental started
    assert all(total == spread for total, spread in state["parts"].values()), state


def test_a_full_set_is_forced_every_full_every_runs_and_after_a_bulk_load(tmp_path, bdb_env, media):
    bdb_env.start_writer()
    backup(tmp_path, bdb_env, media, "f1", backup_bdb_full_every=2)
    assert backup(tmp_path, bdb_env, media, "i1", backup_bdb_mode="incremental", backup_bdb_full_every=2)["mode"] == "incremental"
    forced = backup(tmp_path, bdb_env, media, "f2", backup_bdb_mode="incremental", backup_bdb_full_every=2)
    bulk = backup(tmp_path, bdb_env, media, "f3", backup_bdb_mode="incremental", backup_bdb_bulk_loaded=True)
    bdb_env.stop_writer()
    assert (forced["mode"], forced["requested_mode"], forced["runs_since_full"]) == ("hot", "incremental", 0)
    assert "backup_bdb_full_every" in forced["full_reason"]
    assert bulk["mode"] == "hot" and "bulk" in bulk["full_reason"]
    assert "env/data/parts.db" in set_files(media, "f3")


def test_recover_as_you_go_lays_out_only_each_new_incremental_over_the_kept_recovered_copy(tmp_path, bdb_env, media):
    kept = str(tmp_path / "kept")
    bdb_env.start_writer()
    full = backup(tmp_path, bdb_env, media, "f1", backup_bdb_recover_dir=kept)
    first = backup(tmp_path, bdb_env, media, "i1", backup_bdb_mode="incremental", backup_bdb_recover_dir=kept)
    before_last = bdb_env.committed()
    last = backup(tmp_path, bdb_env, media, "i2", backup_bdb_mode="incremental", backup_bdb_recover_dir=kept)
    bdb_env.stop_writer()
    assert full["verification"]["laid_out"] == ["f1"]
    assert first["verification"]["laid_out"] == ["i1"] and last["verification"]["laid_out"] == ["i2"]
    assert last["verification"]["ok"] is True and last["verification"]["chain"] == ["f1", "i1", "i2"]
    assert load_json(os.path.join(kept, ".bdb-kept.json")) == {"chain": ["f1", "i1", "i2"]}
    # the kept copy is an environment recovered up to the last incremental
    state = inventory_state(kept)
    assert state["seq"] >= before_last
    assert all(total == spread for total, spread in state["parts"].values()), state
