# -*- coding: utf-8 -*-
# Copyright: contributors to consistent.backup
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Chains are resolved before pre: an incremental builds only on a whole chain of its own host and environment (else it
is a full set, and says why, before the database is touched), and restore.yml's latest stays within one host and one
environment."""

from __future__ import annotations

import os
import shutil
import subprocess

from bdb_fixtures import BdbEnv, bdb_env, bdb_job, inventory_state, restore_vars  # noqa: F401  pylint: disable=unused-import
from helpers import inventory, load_json, run_playbook, write_inventory


def report(media, backup_id):
    return load_json(os.path.join(media.path, backup_id, "report.json"))


def backup(inventory_path, env, media, backup_id, host=None, **more):
    job = bdb_job(env, media.path, backup_id, **more)
    if host:
        job["backup_hosts"] = host
    run = run_playbook("backup.yml", inventory_path, job)
    assert run.rc == 0, run
    return report(media, backup_id)["bdb"]


def test_an_incremental_whose_base_set_is_gone_is_a_full_set_decided_before_pre(tmp_path, bdb_env, media):
    inv = inventory(tmp_path)
    bdb_env.write(500)
    backup(inv, bdb_env, media, "f1")
    backup(inv, bdb_env, media, "i1", backup_bdb_mode="incremental")
    shutil.rmtree(os.path.join(media.path, "f1"))  # the full set i1 builds on is gone from the medium
    bdb_env.write(1000)
    forced = backup(inv, bdb_env, media, "i2", backup_bdb_mode="incremental")
    assert (forced["mode"], forced["requested_mode"], forced["previous_set"], forced["base_set"]) == ("hot", "incremental", None, "i2")
    assert forced["full_reason"].startswith("the chain of i1 is broken (backup set %s/f1 does not exist" % media.path)
    assert forced["verification"]["ok"] is True and "env/data/parts.db" in {
        entry["path"] for entry in load_json(os.path.join(media.path, "i2", "manifest.json"))["files"]}
    # and the next incremental builds on that full set: the broken chain does not fail every later run
    after = backup(inv, bdb_env, media, "i3", backup_bdb_mode="incremental")
    assert (after["mode"], after["previous_set"], after["base_set"]) == ("incremental", "i2", "i2")


def test_an_incremental_whose_previous_last_log_left_the_environment_is_a_full_set(tmp_path, bdb_env, media):
    inv = inventory(tmp_path)
    bdb_env.write(3000)
    last = backup(inv, bdb_env, media, "f1")["last_log"]
    bdb_env.write(6000)  # more logs; after a checkpoint the older ones are archivable
    subprocess.run(["db5.3_checkpoint", "-1", "-h", bdb_env.home], check=True)
    archivable = subprocess.run(["db5.3_archive", "-h", bdb_env.home], check=True, capture_output=True, text=True).stdout.split()
    number = int(last[4:])
    removed = [name for name in archivable if int(os.path.basename(name)[4:]) <= number]
    assert os.path.basename(removed[-1]) == last, (archivable, last)  # the previous set's last log is archivable now
    for name in removed:  # an operator's archival up to and including that log: the next log is still there
        os.unlink(os.path.join(bdb_env.log_dir, os.path.basename(name)))
    assert bdb_env.logs()[0] == "log.%010d" % (number + 1)
    forced = backup(inv, bdb_env, media, "i1", backup_bdb_mode="incremental")
    assert forced["mode"] == "hot" and forced["full_reason"].startswith(
        "the logs from %s (the last log of f1) on are not all in the environment" % last)
    assert forced["verification"]["ok"] is True


def test_two_hosts_and_two_environments_on_one_destination_keep_their_own_chains_and_latest(tmp_path, media):
    env_a, env_b = BdbEnv(str(tmp_path / "a")), BdbEnv(str(tmp_path / "b"))
    env_a.write(300)
    env_b.write(300)
    inv = write_inventory(str(tmp_path / "two-hosts.yml"), {"db1": {}, "db2": {}})
    # db1 and db2 back up an environment with the same home path to one destination; db2's set is the newer one
    backup(inv, env_a, media, "db1-a-full", host="db1")
    backup(inv, env_a, media, "db2-a-full", host="db2")
    env_a.write(600)
    incremental = backup(inv, env_a, media, "db1-a-inc", host="db1", backup_bdb_mode="incremental")
    assert (incremental["mode"], incremental["previous_set"], incremental["base_set"]) == ("incremental", "db1-a-full", "db1-a-full")
    assert incremental["verification"]["chain"] == ["db1-a-full", "db1-a-inc"]
    identity = load_json(os.path.join(media.path, "db1-a-inc", "set.json"))
    assert (identity["engine"], identity["host"], identity["database"]) == ("bdb", "db1", env_a.home)
    backup(inv, env_b, media, "db1-b-full", host="db1")  # db1's newest set is of the other environment

    refused = run_playbook("restore.yml", inv, dict(restore_vars(media.path, str(tmp_path / "r0")), backup_hosts="db1"))
    assert refused.rc != 0
    assert any("holds COMPLETE bdb sets of 2 databases (%s, %s)" % tuple(sorted([env_a.home, env_b.home])) in msg
               and "Say which one with backup_bdb_home" in msg for msg in refused.failure_messages()), refused.failure_messages()
    assert not os.path.exists(str(tmp_path / "r0"))

    target = str(tmp_path / "r1")
    restored = run_playbook("restore.yml", inv, dict(restore_vars(media.path, target), backup_hosts="db1",
                                                     backup_bdb_home=env_a.home))
    assert restored.rc == 0, restored
    assert restored.fact("bdb_restored", "db1")["chain"] == ["db1-a-full", "db1-a-inc"]
    assert inventory_state(target)["seq"] == 600

    other = run_playbook("restore.yml", inv, dict(restore_vars(media.path, str(tmp_path / "r2")), backup_hosts="db2",
                                                  backup_bdb_home=env_a.home))
    assert other.rc == 0, other
    assert other.fact("bdb_restored", "db2")["chain"] == ["db2-a-full"]
    assert inventory_state(str(tmp_path / "r2"))["seq"] == 300
