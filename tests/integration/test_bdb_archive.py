# -*- coding: utf-8 -*-
# Copyright: contributors to consistent.backup
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Log archival (roles/bdb archive entry point): only the archivable logs that a COMPLETE, verified set holds with
the same SHA-256 are removed; the environment still recovers afterwards."""

from __future__ import annotations

import hashlib
import json
import os

from bdb_fixtures import bdb_env, bdb_job, recovered_state, run_module  # noqa: F401  pylint: disable=unused-import
from helpers import inventory, load_json, run_playbook


def archive(tmp_path, env, dest, enabled=True):
    playbook = str(tmp_path / "archive.yml")
    with open(playbook, "w", encoding="utf-8") as handle:
        json.dump([{"name": "archive", "hosts": "all", "gather_facts": False, "tasks": [
            {"name": "archive the logs a verified set holds", "ansible.builtin.include_role": {
                "name": "consistent.backup.bdb", "tasks_from": "archive"}}]}], handle)
    return run_playbook(playbook, inventory(tmp_path), {"backup_dest": dest, "backup_bdb_home": env.home,
                                                        "backup_bdb_archive_logs": enabled})


def sha256(path):
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


def test_archival_removes_only_verified_logs_of_the_set_and_the_environment_still_recovers(tmp_path, bdb_env, media):
    bdb_env.write(3000)
    run = run_playbook("backup.yml", inventory(tmp_path), bdb_job(bdb_env, media.path, "a1"))
    assert run.rc == 0, run
    in_set = {os.path.basename(e["path"]): e["sha256"] for e in load_json(os.path.join(media.path, "a1", "manifest.json"))["files"]
              if os.path.basename(e["path"]).startswith("log.")}
    bdb_env.write(6000)  # more logs after the set, then a checkpoint: they become archivable but are not in the set
    run_module(tmp_path, "bdb_checkpoint", {"home": bdb_env.home, "force": True})
    live_before = bdb_env.logs()
    refused = archive(tmp_path, bdb_env, media.path, enabled=False)
    assert refused.rc != 0 and bdb_env.logs() == live_before  # off by default: nothing removed
    done = archive(tmp_path, bdb_env, media.path)
    assert done.rc == 0, done
    archived = done.fact("bdb_archived")
    removed = sorted(os.path.basename(path) for path in archived["removed"])
    assert removed, archived
    assert all(name in in_set for name in removed)  # each removed log is in the set ...
    assert set(removed) == set(live_before) - set(bdb_env.logs())  # ... and exactly those are gone
    kept = {os.path.basename(entry["log"]): entry["why"] for entry in archived["kept"]}
    assert any(why == "not in the set" for why in kept.values())
    for name, why in kept.items():  # a kept log is not in the set, or differs from the set's copy
        path = os.path.join(bdb_env.home, "logs", name)
        assert name not in in_set or in_set[name] != sha256(path), (name, why)
    # the environment still recovers and its inventory adds up
    state = recovered_state(bdb_env.home)  # the environment still recovers after archival
    assert state["seq"] == 6000 and all(total == spread for total, spread in state["parts"].values())


def test_the_backup_job_archives_the_logs_of_its_own_verified_set_when_asked(tmp_path, bdb_env, media):
    bdb_env.write(6000)
    live_before = bdb_env.logs()
    run = run_playbook("backup.yml", inventory(tmp_path), dict(bdb_job(bdb_env, media.path, "j1"), backup_bdb_archive_logs=True))
    assert run.rc == 0, run
    assert os.path.exists(os.path.join(media.path, "j1", "COMPLETE"))
    in_set = {os.path.basename(e["path"]): e["sha256"] for e in load_json(os.path.join(media.path, "j1", "manifest.json"))["files"]
              if os.path.basename(e["path"]).startswith("log.")}
    archived = run.fact("bdb_archived")
    removed = sorted(os.path.basename(path) for path in archived["removed"])
    assert removed and all(name in in_set for name in removed), (removed, sorted(in_set))
    assert set(removed) == set(live_before) - set(bdb_env.logs())
    state = recovered_state(bdb_env.home)  # the environment still recovers after archival
    assert state["seq"] == 6000 and all(total == spread for total, spread in state["parts"].values())
