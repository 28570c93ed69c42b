# -*- coding: utf-8 -*-
# Copyright: contributors to consistent.backup
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A restore is safe (issue 6, point 5), on a real set: playbooks/backup.yml backs up a real PostgreSQL 18 with a
tablespace; each test tampers with its own copy of that set the way the issue's hostile tester did and runs the real
consistent.backup.pg_restore module through ansible-playbook.

Each refusal must name the file, write nothing to the target and leave a sentinel outside the target as it was.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile

import pytest

from helpers import PYTHON, ROOT, VENV_BIN, ansible_env, first_port, load_json, run_playbook, write_inventory

sys.path.insert(0, os.path.join(ROOT, "scripts"))
from pgcluster import Cluster, free_port  # noqa: E402  pylint: disable=wrong-import-position

BASE = "/var/tmp/consistent-backup/tests"
BACKUP_ID = "safety1"


@pytest.fixture(scope="module")
def real_set(tmp_path_factory):
    """One real backup (backup.yml) of a PostgreSQL 18 cluster with pgbench data and a tablespace; its set's path."""
    work = tmp_path_factory.mktemp("restore-safety")
    port = free_port(first_port())
    while os.path.exists(os.path.join(BASE, "pg18-%d" % port)):
        port = free_port(port + 1)
    cluster = Cluster(18, os.path.join(BASE, "pg18-%d" % port), port)
    cluster.init(archive=True)
    cluster.start()
    media = os.path.join(str(work), "media")
    mounted = False
    try:
        tablespace = os.path.join(cluster.base_dir, "tablespace")
        os.makedirs(tablespace)
        shutil.chown(tablespace, "postgres", "postgres")
        cluster.psql("CREATE TABLESPACE outside LOCATION '%s'" % tablespace)
        cluster.psql("CREATE TABLE in_tablespace TABLESPACE outside AS SELECT g AS id FROM generate_series(1, 1000) g")
        cluster.pgbench(["-i", "-q", "-s", "1"])
        os.makedirs(media)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512m,mode=0755", "consistent-test", media], check=True)
        mounted = True
        values = {
            "backup_engine": "postgresql", "backup_dest": media, "backup_id": BACKUP_ID, "backup_retry_delay": 0,
            "backup_postgresql_host": cluster.run_dir, "backup_postgresql_port": cluster.port,
            "backup_postgresql_user": "postgres", "backup_postgresql_runtime_dir": os.path.join(cluster.base_dir, "holders"),
            "backup_postgresql_archive_timeout": 60,
        }
        inventory = write_inventory(os.path.join(str(work), "inventory.yml"), {"db1": {}})
        run = run_playbook("backup.yml", inventory, values)
        assert run.rc == 0, run
        relation = cluster.psql("SELECT pg_relation_filepath('pgbench_branches')")
        yield {"set_path": os.path.join(media, BACKUP_ID), "relation": "pgdata/" + relation, "tablespace": tablespace,
               "cluster": cluster}
    finally:
        if mounted:
            subprocess.run(["umount", "-l", media], check=False)
        cluster.destroy()


@pytest.fixture
def copy_of_the_set(real_set, tmp_path):
    """The real set copied (cp -a) into a plain backup_dest of this test, to tamper with."""
    dest = os.path.join(str(tmp_path), "sets")
    os.makedirs(dest)
    subprocess.run(["cp", "-a", real_set["set_path"], os.path.join(dest, BACKUP_ID)], check=True)
    return dict(real_set, dest=dest, set_path=os.path.join(dest, BACKUP_ID))


@pytest.fixture
def outside(tmp_path):
    """A directory outside the target with a file in it: the restore must leave both as they are."""
    path = os.path.join(str(tmp_path), "outside")
    os.mkdir(path)
    os.chmod(path, 0o751)
    with open(os.path.join(path, "x"), "wb") as handle:
        handle.write(b"sentinel")
    os.chmod(os.path.join(path, "x"), 0o640)
    return path


def snapshot(path):
    found = {".": stat.S_IMODE(os.lstat(path).st_mode)}
    for name in sorted(os.listdir(path)):
        full = os.path.join(path, name)
        with open(full, "rb") as handle:
            found[name] = (stat.S_IMODE(os.lstat(full).st_mode), handle.read())
    return found


def run_pg_restore(args, check=False):
    """Run consistent.backup.pg_restore once through ansible-playbook on localhost; its registered result."""
    workdir = tempfile.mkdtemp(prefix="cb-restore-")
    out = os.path.join(workdir, "result.json")
    playbook = [{"hosts": "localhost", "gather_facts": False, "tasks": [
        {"name": "pg_restore", "consistent.backup.pg_restore": args, "register": "result", "ignore_errors": True},
        {"name": "save result", "ansible.builtin.copy": {"content": "{{ result | to_json }}", "dest": out}, "check_mode": False},
    ]}]
    play_path = os.path.join(workdir, "play.yml")
    with open(play_path, "w", encoding="utf-8") as handle:
        json.dump(playbook, handle)
    cmd = [os.path.join(VENV_BIN, "ansible-playbook"), "-i", "localhost,", "-c", "local",
           "-e", "ansible_python_interpreter=%s" % PYTHON, play_path] + (["--check"] if check else [])
    proc = subprocess.run(cmd, cwd=ROOT, env=ansible_env(), capture_output=True, text=True, timeout=600, check=False,
                          stdin=subprocess.DEVNULL)
    try:
        return load_json(out)
    except (OSError, ValueError):
        raise AssertionError("ansible-playbook did not record a result (rc %d):\n%s" % (proc.returncode, (proc.stdout + proc.stderr)[-6000:]))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def restore_args(the_set, tmp_path, **more):
    args = {"backup_dest": the_set["dest"], "backup_id": BACKUP_ID, "target": os.path.join(str(tmp_path), "target"),
            "tablespace_dir": os.path.join(str(tmp_path), "spc"), "port": 5499, "wal_archive": the_set["cluster"].archive_dir}
    args.update(more)
    return args


def assert_refused_writing_nothing(result, args, *names):
    assert result.get("failed"), result
    for name in names:
        assert name in result["msg"], result["msg"]
    assert "Nothing was written to %s" % args["target"] in result["msg"]
    assert not os.path.exists(args["target"]) and not os.path.exists(args["tablespace_dir"])


def test_the_untampered_set_is_prepared_with_every_file_verified(copy_of_the_set, tmp_path, real_set):
    args = restore_args(copy_of_the_set, tmp_path)
    result = run_pg_restore(args)
    assert not result.get("failed"), result
    manifest = load_json(os.path.join(copy_of_the_set["set_path"], "manifest.json"))
    assert result["verified"] is True
    assert result["files"] == len([e for e in manifest["files"] if e["type"] == "file"])
    [tablespace] = result["tablespaces"]
    assert tablespace["original"] == real_set["tablespace"]
    assert tablespace["location"] == os.path.join(args["tablespace_dir"], tablespace["oid"])
    assert os.readlink(os.path.join(args["target"], "pg_tblspc", tablespace["oid"])) == tablespace["location"]


def test_a_relation_file_replaced_by_a_symlink_is_refused(copy_of_the_set, tmp_path, outside):
    relation = os.path.join(copy_of_the_set["set_path"], "data", copy_of_the_set["relation"])
    os.unlink(relation)
    os.symlink(os.path.join(outside, "x"), relation)
    before = snapshot(outside)
    args = restore_args(copy_of_the_set, tmp_path)
    result = run_pg_restore(args)
    assert_refused_writing_nothing(result, args, "%s is a symlink to %s" % (relation, os.path.join(outside, "x")))
    assert snapshot(outside) == before


def test_a_log_symlink_in_the_data_directory_is_refused(copy_of_the_set, tmp_path, outside):
    link = os.path.join(copy_of_the_set["set_path"], "data", "pgdata", "restore.log")
    os.symlink(os.path.join(outside, "x"), link)
    before = snapshot(outside)
    args = restore_args(copy_of_the_set, tmp_path)
    result = run_pg_restore(args)
    assert_refused_writing_nothing(result, args, "%s is a symlink" % link)
    assert snapshot(outside) == before


def test_a_tablespace_map_and_link_pointing_outside_are_refused_without_touching_it(copy_of_the_set, tmp_path, outside):
    set_path = copy_of_the_set["set_path"]
    with open(os.path.join(set_path, "tablespace_map"), encoding="utf-8") as handle:
        oid = handle.read().split()[0]
    with open(os.path.join(set_path, "tablespace_map"), "w", encoding="utf-8") as handle:
        handle.write("%s %s\n" % (oid, outside))
    copied = os.path.join(set_path, "data", "pgdata", "pg_tblspc", oid)
    shutil.rmtree(copied)
    os.symlink(outside, copied)
    before = snapshot(outside)
    args = restore_args(copy_of_the_set, tmp_path)
    result = run_pg_restore(args)
    assert_refused_writing_nothing(result, args, copied, "is a symlink to %s" % outside)
    assert snapshot(outside) == before


def test_a_manifest_path_with_dotdot_is_refused(copy_of_the_set, tmp_path, outside):
    manifest_path = os.path.join(copy_of_the_set["set_path"], "manifest.json")
    manifest = load_json(manifest_path)
    evil = "pgdata/../../%s/evil" % os.path.relpath(outside, os.path.dirname(os.path.dirname(copy_of_the_set["set_path"])))
    manifest["files"].append({"path": evil, "type": "file", "size": 0, "sha256": "0" * 64})
    with open(manifest_path, "w", encoding="utf-8") as handle:
        json.dump(manifest, handle)
    before = snapshot(outside)
    args = restore_args(copy_of_the_set, tmp_path)
    result = run_pg_restore(args)
    assert_refused_writing_nothing(result, args, "manifest.json lists the path %r" % evil, "'..'")
    assert snapshot(outside) == before


def test_a_missing_relation_file_is_refused_instead_of_verified(copy_of_the_set, tmp_path):
    relation = os.path.join(copy_of_the_set["set_path"], "data", copy_of_the_set["relation"])
    os.unlink(relation)
    args = restore_args(copy_of_the_set, tmp_path)
    result = run_pg_restore(args)
    assert_refused_writing_nothing(result, args, "%s is listed in manifest.json" % relation, "missing from the set")
    assert "verified" not in result


def test_a_relation_file_with_other_bytes_is_refused_in_check_mode_and_for_real(copy_of_the_set, tmp_path):
    relation = os.path.join(copy_of_the_set["set_path"], "data", copy_of_the_set["relation"])
    with open(relation, "r+b") as handle:
        handle.seek(100)
        byte = handle.read(1)
        handle.seek(100)
        handle.write(bytes([byte[0] ^ 0xFF]))
    args = restore_args(copy_of_the_set, tmp_path)
    for check in (True, False):
        result = run_pg_restore(args, check=check)
        assert_refused_writing_nothing(result, args, "%s does not match manifest.json" % relation)
