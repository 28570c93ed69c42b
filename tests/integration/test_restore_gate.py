# -*- coding: utf-8 -*-
# Copyright: contributors to consistent.backup
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Hostile sets against the restore gate, with real db5.3 utilities and the butil emulator: a set changed on the medium
(its manifest changed to agree) is refused before a byte is written. Every file around the target, the live
environment's and a victim directory's included, is byte-identical (mode too) before and after, and the target is as it
was: absent."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat

import pytest

from bdb_fixtures import BdbEnv, bdb_job, restore_vars, run_module, strip_logs
from btrieve_fixtures import Engine, Inventory, btrieve_job
from helpers import Tmpfs, inventory, load_json, run_playbook


def world_state(root):
    """Every entry below ``root``: its type and mode, and a file's SHA-256 or a link's target."""
    found = {}
    for directory, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = os.path.join(directory, name)
            info = os.lstat(full)
            if stat.S_ISREG(info.st_mode):
                with open(full, "rb") as handle:
                    what = hashlib.sha256(handle.read()).hexdigest()
            elif stat.S_ISLNK(info.st_mode):
                what = os.readlink(full)
            else:
                what = None
            found[os.path.relpath(full, root)] = (stat.filemode(info.st_mode), what)
    return found


def edit_manifest(set_path, change):
    path = os.path.join(set_path, "manifest.json")
    manifest = load_json(path)
    change(manifest)
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(manifest, handle)


def agree(manifest, set_path, rel):
    """Make the manifest agree with the set's file data/<rel> (size and SHA-256), as a tamperer would."""
    with open(os.path.join(set_path, "data", rel), "rb") as handle:
        content = handle.read()
    for entry in manifest["files"]:
        if entry["path"] == rel:
            entry.update(size=len(content), sha256=hashlib.sha256(content).hexdigest())


def drop(manifest, rel):
    manifest["files"] = [entry for entry in manifest["files"] if entry["path"] != rel]


# --- Berkeley DB ----------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def bdb_world(tmp_path_factory):
    """A COMPLETE hot set on a tmpfs medium inside ``world``, beside a victim directory holding copies of the
    environment's databases (what a set's DB_CONFIG could point recovery at)."""
    base = tmp_path_factory.mktemp("gate-bdb")
    env = BdbEnv(str(base / "bdb"))
    env.write(800)
    world = base / "world"
    world.mkdir()
    media = Tmpfs(str(world / "backup")).mount("256m")
    run = run_playbook("backup.yml", inventory(base), bdb_job(env, media.path, "good"))
    assert run.rc == 0, run
    shutil.copytree(os.path.join(env.home, "data"), str(world / "victim"))
    yield {"base": base, "world": str(world), "dest": media.path, "env": env}
    media.umount()


def tampered(bdb_world, name):
    target = os.path.join(bdb_world["dest"], name)
    shutil.copytree(os.path.join(bdb_world["dest"], "good"), target)
    return target


def refused_restore(tmp_path, bdb_world, backup_id, *expected):
    """restore.yml of ``backup_id`` into world/restore-<backup_id>: it fails with every ``expected`` text in its message, the world
    (live environment, victim, medium) is byte-identical and the target is absent."""
    before = world_state(bdb_world["world"]), world_state(bdb_world["env"].home)
    target = os.path.join(bdb_world["world"], "restore-" + backup_id)
    run = run_playbook("restore.yml", inventory(tmp_path), restore_vars(bdb_world["dest"], target, backup_id))
    assert run.rc != 0, run
    message = run.registered("__bdb_restore")["msg"]
    for text in expected:
        assert text in message, message
    assert not os.path.lexists(target)
    assert (world_state(bdb_world["world"]), world_state(bdb_world["env"].home)) == before
    return message


def test_an_intact_set_restores_inside_its_target(tmp_path, bdb_world):
    target = os.path.join(bdb_world["world"], "intact")
    run = run_playbook("restore.yml", inventory(tmp_path), restore_vars(bdb_world["dest"], target, "good"))
    assert run.rc == 0, run
    fact = run.fact("bdb_restored")
    assert fact["verified"] is True
    assert sorted(db["file"] for db in fact["databases"]) == ["data/history.db", "data/locations.db", "data/parts.db"]
    shutil.rmtree(target)


def test_a_db_config_that_leads_recovery_out_of_the_copy_is_refused_before_writing(tmp_path, bdb_world):
    """The finding: set_data_dir ../victim in the set's DB_CONFIG, its manifest entry changed to agree, made
    catastrophic recovery rewrite the databases in world/victim and report them verified."""
    set_path = tampered(bdb_world, "dbconfig-out")
    with open(os.path.join(set_path, "data", "env", "DB_CONFIG"), "w", encoding="utf-8") as handle:
        handle.write("set_data_dir ../victim\nset_lg_dir logs\nset_lg_max 65536\n")
    edit_manifest(set_path, lambda manifest: agree(manifest, set_path, "env/DB_CONFIG"))
    refused_restore(tmp_path, bdb_world, "dbconfig-out", "DB_CONFIG names the data directories",
                    "but the set recorded ['data'] and logs when it was taken", "Nothing was written to")


def test_a_set_missing_one_recorded_database_is_refused_before_writing(tmp_path, bdb_world):
    set_path = tampered(bdb_world, "no-parts")
    os.unlink(os.path.join(set_path, "data", "env", "data", "parts.db"))
    edit_manifest(set_path, lambda manifest: drop(manifest, "env/data/parts.db"))
    refused_restore(tmp_path, bdb_world, "no-parts", "holds env/data/parts.db, but manifest.json does not list it: the set "
                                                     "is not whole")


def test_a_set_that_records_no_database_is_not_verified(tmp_path, bdb_world):
    """'0 of 0 databases verify' passed; a set whose record agrees that it holds no database proves nothing."""
    set_path = tampered(bdb_world, "no-databases")
    shutil.rmtree(os.path.join(set_path, "data", "env", "data"))

    def empty(manifest):
        manifest["files"] = [entry for entry in manifest["files"] if not entry["path"].startswith("env/data/")]
        manifest["facts"]["bdb"].update(data_files=[], page_sizes={})
    edit_manifest(set_path, empty)
    refused_restore(tmp_path, bdb_world, "no-databases", "does not verify", "0 of 0 databases verify: the set records no "
                                                                            "database")


def test_a_symlinked_database_in_a_set_is_refused_before_writing(tmp_path, bdb_world):
    set_path = tampered(bdb_world, "linked")
    database = os.path.join(set_path, "data", "env", "data", "parts.db")
    os.unlink(database)
    os.symlink(os.path.join(bdb_world["world"], "victim", "parts.db"), database)
    edit_manifest(set_path, lambda manifest: agree(manifest, set_path, "env/data/parts.db"))
    refused_restore(tmp_path, bdb_world, "linked", "parts.db is a symlink to %s" % os.path.join(bdb_world["world"], "victim"))


def test_a_log_missing_from_a_set_is_refused_before_writing(tmp_path, bdb_world):
    set_path = tampered(bdb_world, "holed")
    logs = sorted(os.listdir(os.path.join(set_path, "data", "env", "logs")))
    assert strip_logs(set_path, lambda name: name != logs[-1]) == [logs[-1]]
    refused_restore(tmp_path, bdb_world, "holed", "holds env/logs/%s, but manifest.json does not list it" % logs[-1])


def test_a_traversal_path_in_a_set_is_refused_before_writing(tmp_path, bdb_world):
    set_path = tampered(bdb_world, "traversal")

    def traverse(manifest):
        for entry in manifest["files"]:
            if entry["path"] == "env/data/parts.db":
                entry["path"] = "env/../../../victim/parts.db"
    edit_manifest(set_path, traverse)
    refused_restore(tmp_path, bdb_world, "traversal", "lists the path 'env/../../../victim/parts.db', expected a relative, "
                                                      "normalised path under env/")


def test_a_setuid_file_in_a_set_is_refused_before_writing(tmp_path, bdb_world):
    set_path = tampered(bdb_world, "setuid")
    os.chmod(os.path.join(set_path, "data", "env", "data", "parts.db"), 0o4755)
    refused_restore(tmp_path, bdb_world, "setuid", "parts.db has the mode -rwsr-xr-x (setuid or setgid)")


def test_a_device_in_a_set_is_refused_before_writing(tmp_path, bdb_world):
    set_path = tampered(bdb_world, "device")
    logs = sorted(os.listdir(os.path.join(set_path, "data", "env", "logs")))
    device = os.path.join(set_path, "data", "env", "logs", logs[0])
    os.unlink(device)
    os.mknod(device, 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    refused_restore(tmp_path, bdb_world, "device", "is a special file (c), expected only regular files and directories")


def test_the_proof_before_complete_refuses_a_set_missing_a_database_without_a_scratch_left(tmp_path, bdb_world):
    set_path = tampered(bdb_world, "proof-no-parts")
    os.unlink(os.path.join(set_path, "data", "env", "data", "parts.db"))
    edit_manifest(set_path, lambda manifest: drop(manifest, "env/data/parts.db"))
    before = world_state(bdb_world["world"])
    result = run_module(tmp_path, "bdb_verify", {"backup_dest": bdb_world["dest"], "backup_id": "proof-no-parts"})
    assert result["ok"] is False and "parts.db, but manifest.json does not list it" in result["msg"]
    assert world_state(bdb_world["world"]) == before  # no scratch copy left on the medium either


# --- DB_CONFIG directories with '..' (set_lg_dir ../logs, as the docs support) --------------------------------------

def test_a_log_directory_beside_the_home_is_backed_up_and_restored_inside_the_target(tmp_path, media):
    env = BdbEnv(str(tmp_path / "bdb"), log_dir="../logs")
    env.write(1500)
    run = run_playbook("backup.yml", inventory(tmp_path), bdb_job(env, media.path, "dotdot"))
    assert run.rc == 0, run
    log_dir = str(tmp_path / "bdb" / "logs")
    report = load_json(os.path.join(media.path, "dotdot", "report.json"))
    assert report["complete"] is True and report["bdb"]["verification"]["ok"] is True
    assert report["bdb"]["log_dir"] == log_dir
    in_set = {entry["path"] for entry in load_json(os.path.join(media.path, "dotdot", "manifest.json"))["files"]}
    assert any(path.startswith("env/_outside_home%s/log." % log_dir) for path in in_set)
    live = world_state(str(tmp_path / "bdb"))
    target = str(tmp_path / "restored")
    restored = run_playbook("restore.yml", inventory(tmp_path), restore_vars(media.path, target))
    assert restored.rc == 0, restored
    fact = restored.fact("bdb_restored")
    assert fact["verified"] is True and len(fact["databases"]) == 3
    assert fact["config_rewritten"] == {"set_lg_dir ../logs": "set_lg_dir _outside_home" + log_dir}
    assert os.listdir(os.path.join(target, "_outside_home" + log_dir))
    assert world_state(str(tmp_path / "bdb")) == live


# --- Btrieve --------------------------------------------------------------------------------------------------------

@pytest.fixture
def btrieve_world(tmp_path, media):
    engine = Engine(str(tmp_path / "zen"))
    shop = Inventory(str(tmp_path / "zen" / "data"), engine, mib=1)
    shop.fill(10)
    run = run_playbook("backup.yml", inventory(tmp_path), btrieve_job(engine, media.path, "b1", shop.files))
    assert run.rc == 0, run
    world = tmp_path / "world"
    (world / "drill").mkdir(parents=True)
    return {"engine": engine, "shop": shop, "dest": media.path, "world": str(world), "set": os.path.join(media.path, "b1"),
            "vars": {"backup_engine": "btrieve", "backup_dest": media.path, "backup_id": "b1",
                     "backup_btrieve_butil": engine.butil, "restore_target": str(world / "drill")}}


def btrieve_refused(tmp_path, btrieve_world, *expected):
    before = world_state(btrieve_world["world"]), world_state(os.path.dirname(btrieve_world["shop"].parts_file))
    run = run_playbook("restore.yml", inventory(tmp_path), btrieve_world["vars"])
    assert run.rc != 0, run
    message = run.registered("__btrieve_restore")["msg"]
    for text in expected:
        assert text in message, message
    assert os.listdir(os.path.join(btrieve_world["world"], "drill")) == []
    assert (world_state(btrieve_world["world"]), world_state(os.path.dirname(btrieve_world["shop"].parts_file))) == before


def test_a_btrieve_drill_puts_the_recorded_files_under_its_target(tmp_path, btrieve_world):
    run = run_playbook("restore.yml", inventory(tmp_path), btrieve_world["vars"])
    assert run.rc == 0, run
    drill = os.path.join(btrieve_world["world"], "drill")
    for path in btrieve_world["shop"].files:
        restored = drill + path
        assert stat.S_IMODE(os.stat(restored).st_mode) & 0o7111 == 0
        with open(restored, "rb") as copy, open(os.path.join(btrieve_world["set"], "data", path[1:]), "rb") as original:
            assert copy.read() == original.read()


def test_a_btrieve_manifest_naming_a_file_outside_the_record_with_a_setuid_mode_is_refused(tmp_path, btrieve_world):
    """The finding: the restore wrote a file the manifest named outside the engine's recorded files, with the mode
    the manifest gave it."""
    set_path = btrieve_world["set"]
    evil = os.path.join(set_path, "data", "usr", "local", "bin", "evil")
    os.makedirs(os.path.dirname(evil))
    with open(evil, "wb") as handle:
        handle.write(b"#!/bin/sh\nid\n")

    def add(manifest):
        manifest["files"].append({"path": "usr/local/bin/evil", "type": "file", "size": 13, "mode": "4755",
                                  "sha256": hashlib.sha256(b"#!/bin/sh\nid\n").hexdigest()})
    edit_manifest(set_path, add)
    btrieve_refused(tmp_path, btrieve_world, "usr/local/bin/evil", "Nothing was written")


def test_a_btrieve_manifest_naming_a_file_outside_the_record_is_refused(tmp_path, btrieve_world):
    set_path = btrieve_world["set"]
    extra = os.path.join(set_path, "data", "etc", "cron.d", "job")
    os.makedirs(os.path.dirname(extra))
    with open(extra, "wb") as handle:
        handle.write(b"* * * * * root id\n")

    def add(manifest):
        manifest["files"].append({"path": "etc/cron.d/job", "type": "file", "size": 18, "mode": "0644",
                                  "sha256": hashlib.sha256(b"* * * * * root id\n").hexdigest()})
    edit_manifest(set_path, add)
    btrieve_refused(tmp_path, btrieve_world, "manifest.json lists etc/cron.d/job, which the set's Btrieve record "
                                             "(manifest.json facts: files) does not hold")


def test_a_btrieve_recorded_file_with_a_setuid_mode_is_refused(tmp_path, btrieve_world):
    part = btrieve_world["shop"].parts_file[1:]

    def setuid(manifest):
        for entry in manifest["files"]:
            if entry["path"] == part:
                entry["mode"] = "4755"
    edit_manifest(btrieve_world["set"], setuid)
    btrieve_refused(tmp_path, btrieve_world, "expected permission bits only (no setuid, setgid or file type)")


def test_a_btrieve_set_missing_a_recorded_file_is_refused(tmp_path, btrieve_world):
    part = btrieve_world["shop"].parts_file[1:]
    os.unlink(os.path.join(btrieve_world["set"], "data", part))
    edit_manifest(btrieve_world["set"], lambda manifest: drop(manifest, part))
    btrieve_refused(tmp_path, btrieve_world, "holds %s, but manifest.json does not list it" % part)


def test_a_btrieve_traversal_path_is_refused(tmp_path, btrieve_world):
    part = btrieve_world["shop"].parts_file[1:]

    def traverse(manifest):
        for entry in manifest["files"]:
            if entry["path"] == part:
                entry["path"] = "../" + part
    edit_manifest(btrieve_world["set"], traverse)
    btrieve_refused(tmp_path, btrieve_world, "lists the path '../%s', expected a relative, normalised path" % part)
