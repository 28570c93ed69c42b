# -*- coding: utf-8 -*-
# Copyright: contributors to consistent.backup
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The "Adding an engine" contract is real: an engine role that lives only under tests/ (files/roles/cmdengine, a
minimal command-driven engine) runs through playbooks/backup.yml and restore.yml with no edit to playbooks/,
roles/media, plugins/ or meta/; and latest stays within its own engine when another engine's set is newer."""

from __future__ import annotations

import os

from bdb_fixtures import tree_checksums
from helpers import FAKEDB, PYTHON, ROOT, inventory, load_json, run_playbook

ROLES = os.path.join(ROOT, "tests", "integration", "files", "roles")
ENV = {"ANSIBLE_ROLES_PATH": ROLES}


def cmdengine_job(fakedb, dest, backup_id):
    return {"backup_engine": "cmdengine", "backup_engine_role": "cmdengine", "backup_dest": dest, "backup_id": backup_id,
            "backup_retry_delay": 0, "backup_runtime_dir": fakedb.runtime_dir, "cmdengine_dir": fakedb.data_dir,
            "cmdengine_pre_command": [PYTHON, FAKEDB, fakedb.state_dir, "pre"],
            "cmdengine_post_command": [PYTHON, FAKEDB, fakedb.state_dir, "post"]}


def test_an_engine_role_under_tests_runs_through_backup_and_restore_and_latest_keeps_to_its_engine(tmp_path, fakedb, media):
    inv = inventory(tmp_path)
    run = run_playbook("backup.yml", inv, cmdengine_job(fakedb, media.path, "c1"), env=ENV)
    assert run.rc == 0, run
    assert fakedb.calls() == ["pre ok", "post ok"]
    report = load_json(os.path.join(media.path, "c1", "report.json"))
    assert (report["engine"], report["verdict"], report["complete"]) == ("cmdengine", "success", True)
    # the engine's section: what the set records about itself (its manifest facts) and what its post reported
    assert report["cmdengine"] == {"dir": fakedb.data_dir, "files": [os.path.join(fakedb.data_dir, "table.dat")],
                                   "changed_during_copy": 0, "post_rc": 0}
    assert load_json(os.path.join(media.path, "c1", "set.json"))["database"] == fakedb.data_dir
    # a newer set of another engine on the same destination
    files = run_playbook("backup.yml", inv, {"backup_engine": "files", "backup_dest": media.path, "backup_id": "f1",
                                             "backup_retry_delay": 0, "backup_runtime_dir": fakedb.runtime_dir,
                                             "backup_files_paths": [fakedb.data_dir]})
    assert files.rc == 0, files
    target = str(tmp_path / "restored")
    restored = run_playbook("restore.yml", inv, {"backup_engine": "cmdengine", "backup_engine_role": "cmdengine",
                                                 "backup_dest": media.path, "backup_id": "latest",
                                                 "restore_target": target}, env=ENV)
    assert restored.rc == 0, restored.failure_messages()
    assert restored.fact("cmdengine_restored")["backup_id"] == "c1"
    assert tree_checksums(os.path.join(target, fakedb.data_dir.lstrip("/"))) == tree_checksums(fakedb.data_dir)


def test_an_engine_without_a_role_is_refused_before_the_medium_is_touched(tmp_path, fakedb, media):
    run = run_playbook("backup.yml", inventory(tmp_path), dict(cmdengine_job(fakedb, media.path, "x1"),
                                                               backup_engine="nosuch", backup_engine_role="nosuch"))
    assert run.rc != 0
    assert any(msg.startswith("backup_engine nosuch: its role nosuch could not declare what it supports")
               for msg in run.failure_messages()), run.failure_messages()
    assert fakedb.calls() == [] and os.listdir(media.path) == []


def test_restore_refuses_an_engine_that_declares_no_restore_saying_what_to_do(tmp_path, media):
    run = run_playbook("restore.yml", inventory(tmp_path), {"backup_engine": "files", "backup_dest": media.path,
                                                            "restore_target": str(tmp_path / "t")})
    assert run.rc != 0
    assert any("restore.yml does not restore sets of the files engine: sets of the files engine are plain copies" in msg
               for msg in run.failure_messages()), run.failure_messages()
