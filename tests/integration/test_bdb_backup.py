# -*- coding: utf-8 -*-
# Copyright: contributors to consistent.backup
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Berkeley DB backups with backup.yml and restores with restore.yml: real db5.3 utilities, environments made with
the berkeleydb binding, a writer committing transactions during the backup."""

from __future__ import annotations

import os
import subprocess

from bdb_fixtures import INVENTORY, bdb_env, bdb_job, inventory_state, restore_vars, tree_checksums  # noqa: F401  pylint: disable=unused-import
from helpers import PYTHON, inventory, load_json, run_playbook, wait_until


def test_hot_backup_with_a_writer_restores_every_committed_transaction_with_matching_totals(tmp_path, bdb_env, media):
    bdb_env.start_writer()
    committed_before = bdb_env.committed()
    run = run_playbook("backup.yml", inventory(tmp_path), bdb_job(bdb_env, media.path, "hot1"))
    committed_after = bdb_env.committed()
    bdb_env.stop_writer()
    assert run.rc == 0, run
    assert committed_after > committed_before  # the writer committed during the backup
    report = load_json(os.path.join(media.path, "hot1", "report.json"))
    assert report["complete"] is True
    assert report["bdb"]["mode"] == "hot"
    assert report["bdb"]["verification"]["ok"] is True
    assert {db["file"] for db in report["bdb"]["verification"]["databases"]} == {"data/history.db", "data/locations.db", "data/parts.db"}
    # history.db was never opened during the current logs (db_archive -s misses it); it is in the set all the same
    assert report["bdb"]["unlisted_data_files"] == ["data/history.db"]
    in_set = {entry["path"] for entry in load_json(os.path.join(media.path, "hot1", "manifest.json"))["files"]}
    assert {"env/DB_CONFIG", "env/data/history.db", "env/data/parts.db", "env/data/locations.db"} <= in_set
    # the copy read whole pages of the largest page size
    assert report["bdb"]["block_size"] == 8192
    target = str(tmp_path / "restored")
    restored = run_playbook("restore.yml", inventory(tmp_path), restore_vars(media.path, target))
    assert restored.rc == 0, restored
    fact = restored.fact("bdb_restored")
    assert fact["backup_id"] == "hot1" and fact["chain"] == ["hot1"]
    assert fact["verified"] is True
    assert all(db["ok"] for db in fact["databases"]) and len(fact["databases"]) == 3
    assert fact["last_log"] == report["bdb"]["last_log"]
    state = inventory_state(target)
    assert state["seq"] >= committed_before
    assert all(total == spread for total, spread in state["parts"].values()), state
    assert sum(total for total, _spread in state["parts"].values()) > 0


def test_a_database_removed_during_a_hot_copy_is_recorded_and_the_set_still_recovers_and_restores(tmp_path, bdb_env, tmpfs_factory):
    media = tmpfs_factory("backup", size="1g")
    # Exports the application keeps in its data directory sort first (16 x 32 MiB), zz-scratch.db sorts last: the
    # application removes zz-scratch.db as soon as the copy starts on the first export, long before the copy (which
    # opens a few files ahead of its two workers) reaches it. The checkpoint in pre listed it; the copy finds it gone.
    block = os.urandom(1 << 20)
    for number in range(16):
        with open(os.path.join(bdb_env.home, "data", "export-%02d.dat" % number), "wb") as export:
            export.write(b"%02d" % number + block[2:] + block * 31)
    copied_into = os.path.join(media.path, "vanish1", "data", "env", "data")
    dropper = subprocess.Popen([PYTHON, INVENTORY, "drop-when", bdb_env.home, bdb_env.state, "zz-scratch.db", copied_into,
                                "export-"])
    try:
        wait_until(lambda: os.path.exists(os.path.join(bdb_env.state, "drop-ready")), 60, "zz-scratch.db to be made")
        run = run_playbook("backup.yml", inventory(tmp_path),
                           bdb_job(bdb_env, media.path, "vanish1", backup_bdb_scratch_dir=str(tmp_path / "scratch")))
        assert dropper.wait(timeout=60) == 0
    finally:
        if dropper.poll() is None:
            dropper.kill()
    assert run.rc == 0, run
    assert not os.path.exists(os.path.join(bdb_env.home, "data", "zz-scratch.db"))
    manifest = load_json(os.path.join(media.path, "vanish1", "manifest.json"))
    assert manifest["vanished"] == ["env/data/zz-scratch.db"]
    assert "env/data/zz-scratch.db" not in {entry["path"] for entry in manifest["files"]}
    report = load_json(os.path.join(media.path, "vanish1", "report.json"))
    assert report["complete"] is True
    # the removal is in the logs copied after the data files: catastrophic recovery replays it over a copy without the file
    assert report["bdb"]["verification"]["ok"] is True
    assert {db["file"] for db in report["bdb"]["verification"]["databases"]} == {"data/history.db", "data/locations.db", "data/parts.db"}
    target = str(tmp_path / "restored")
    restored = run_playbook("restore.yml", inventory(tmp_path), restore_vars(media.path, target))
    assert restored.rc == 0, restored
    assert restored.fact("bdb_restored")["verified"] is True
    assert sorted(name for name in os.listdir(os.path.join(target, "data")) if not name.startswith("export-")) == [
        "history.db", "locations.db", "parts.db"]
    state = inventory_state(target)
    assert all(total == spread for total, spread in state["parts"].values()), state


def test_a_proof_that_cannot_make_its_scratch_copy_fails_the_job_and_the_set_is_not_complete(tmp_path, bdb_env, media):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory\n")
    run = run_playbook("backup.yml", inventory(tmp_path),
                       bdb_job(bdb_env, media.path, "unproven", backup_bdb_scratch_dir=str(blocker / "scratch")))
    assert run.rc != 0, run
    report = load_json(os.path.join(media.path, "unproven", "report.json"))
    assert report["phases"]["post"]["result"] == "ok"  # post ran; only the proof failed
    assert report["phases"]["verify"]["result"] == "failed"
    assert "Not a directory" in report["phases"]["verify"]["msg"] and str(blocker) in report["phases"]["verify"]["msg"]
    assert report["verdict"] == "failed" and report["complete"] is False
    assert not os.path.exists(os.path.join(media.path, "unproven", "COMPLETE"))
    assert "verify failed after 1 attempt" in run.out


def env_bytes(home):
    return sum(os.path.getsize(os.path.join(root, name)) for root, _dirs, names in os.walk(home) for name in names
               if not name.startswith("__db."))


def test_a_medium_with_room_for_the_set_but_not_its_scratch_copy_is_refused_before_pre(tmp_path, bdb_env, tmpfs_factory):
    small = tmpfs_factory("backup", size="%dk" % (env_bytes(bdb_env.home) * 3 // 2 // 1024 + 64))
    refused = run_playbook("backup.yml", inventory(tmp_path), bdb_job(bdb_env, small.path, "roomless"))
    assert refused.rc != 0, refused
    assert "for the set and the proof's scratch copy of it" in refused.out, refused
    assert not os.path.exists(os.path.join(small.path, "roomless"))  # stopped before the set was opened, before pre
    # the same medium with the scratch copy elsewhere: the set fits, is proven and COMPLETE
    run = run_playbook("backup.yml", inventory(tmp_path),
                       bdb_job(bdb_env, small.path, "roomless", backup_bdb_scratch_dir=str(tmp_path / "scratch")))
    assert run.rc == 0, run
    assert load_json(os.path.join(small.path, "roomless", "report.json"))["bdb"]["verification"]["ok"] is True
    assert os.path.exists(os.path.join(small.path, "roomless", "COMPLETE"))
