# -*- coding: utf-8 -*-
# Copyright: contributors to consistent.backup
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A restore is safe (issue 6, point 5): the whole set is checked before anything is written to the target.

Small hand-built PostgreSQL sets on tmp dirs, each with one fault a hostile tester (or a damaged medium) puts there.
Every refusal must name the file, leave the target as it was found and leave the world outside the target alone:
a sentinel directory next to it keeps its files' contents and modes and gains no file.
"""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import stat

import pytest

from ansible_collections.consistent.backup.plugins.module_utils import _pg_restore as pr

LABEL = b"START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\nSTART TIMELINE: 1\nLABEL: b1\n"
OWNER = pwd.getpwuid(os.getuid()).pw_name
SETTINGS = {"port": 5499}
RELATION = "pgdata/base/5/16384"


def build_set(dest, files=None, dirs=(), spcmap=None, backup_id="b1"):
    """<dest>/<backup_id>: data/pgdata/... with a manifest.json that lists exactly what is written, label, COMPLETE."""
    files = files if files is not None else {"pgdata/PG_VERSION": b"18\n", RELATION: b"\0" * 8192,
                                             "pgdata/global/pg_control": b"control"}
    set_path = os.path.join(dest, backup_id)
    data = os.path.join(set_path, "data")
    entries = [{"path": "pgdata", "type": "dir", "size": 0}]
    wanted_dirs = set(dirs)
    for path in files:
        parts = path.split("/")
        wanted_dirs.update("/".join(parts[:i]) for i in range(2, len(parts)))
    for path in sorted(wanted_dirs):
        os.makedirs(os.path.join(data, path), exist_ok=True)
        entries.append({"path": path, "type": "dir", "size": 0})
    os.makedirs(os.path.join(data, "pgdata"), exist_ok=True)
    for path, content in files.items():
        with open(os.path.join(data, path), "wb") as handle:
            handle.write(content)
        entries.append({"path": path, "type": "file", "size": len(content), "sha256": hashlib.sha256(content).hexdigest()})
    write_manifest(set_path, entries)
    with open(os.path.join(set_path, "backup_label"), "wb") as handle:
        handle.write(LABEL)
    if spcmap is not None:
        with open(os.path.join(set_path, "tablespace_map"), "wb") as handle:
            handle.write(spcmap)
    with open(os.path.join(set_path, "COMPLETE"), "w", encoding="utf-8") as handle:
        handle.write("{}")
    return set_path


def write_manifest(set_path, entries):
    with open(os.path.join(set_path, "manifest.json"), "w", encoding="utf-8") as handle:
        json.dump({"format": 1, "engine": "postgresql", "files": entries, "facts": {"server_version_num": 180000}}, handle)


def manifest_entries(set_path):
    with open(os.path.join(set_path, "manifest.json"), encoding="utf-8") as handle:
        return json.load(handle)["files"]


def restore(dest, target, tablespace_dir=None, backup_id="b1", verify=True, check_mode=False):
    return pr.prepare(str(dest), backup_id, None, str(target), str(tablespace_dir or str(target) + "_tablespaces"), OWNER,
                      SETTINGS, verify, check_mode)


@pytest.fixture
def outside(tmp_path):
    """A directory outside every target, with a file the restore must not touch."""
    path = tmp_path / "outside"
    path.mkdir(mode=0o751)
    os.chmod(path, 0o751)
    (path / "x").write_bytes(b"sentinel")
    os.chmod(path / "x", 0o640)
    return path


def snapshot(path):
    """Names, contents and modes of a directory (and its own mode): what 'untouched' means."""
    found = {".": stat.S_IMODE(os.lstat(path).st_mode)}
    for name in sorted(os.listdir(path)):
        full = os.path.join(path, name)
        info = os.lstat(full)
        found[name] = (stat.S_IMODE(info.st_mode), open(full, "rb").read() if stat.S_ISREG(info.st_mode) else None)
    return found


@pytest.fixture
def dest(tmp_path):
    path = tmp_path / "media"
    path.mkdir()
    return path


def refused(dest, target, match, **kwargs):
    with pytest.raises(pr.RestoreError) as caught:
        restore(dest, target, **kwargs)
    message = str(caught.value)
    assert match in message, message
    return message


# -- what a good set does ------------------------------------------------------------------------------------------

def test_a_clean_set_restores_every_listed_file_and_says_verified(dest, tmp_path):
    build_set(str(dest))
    target = tmp_path / "target"
    result = restore(dest, target)
    assert result["verified"] is True
    assert result["files"] == 3 and result["bytes"] == 3 + 8192 + 7
    assert (target / "base" / "5" / "16384").read_bytes() == b"\0" * 8192
    assert (target / "backup_label").read_bytes() == LABEL
    assert (target / "recovery.signal").exists()
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o700


def test_check_mode_reads_every_file_and_writes_nothing(dest, tmp_path):
    build_set(str(dest))
    target = tmp_path / "target"
    result = restore(dest, target, check_mode=True)
    assert result["verified"] is True and result["files"] == 3
    assert not target.exists()


def test_without_verify_the_result_says_not_verified(dest, tmp_path):
    build_set(str(dest))
    assert restore(dest, tmp_path / "target", verify=False)["verified"] is False


def test_server_written_label_files_next_to_the_copy_are_not_manifest_entries_and_not_copied(dest, tmp_path):
    set_path = build_set(str(dest))
    for name in ("backup_label", "tablespace_map", "backup_manifest"):
        with open(os.path.join(set_path, "data", "pgdata", name), "wb") as handle:
            handle.write(b"server-written " + name.encode())
    target = tmp_path / "target"
    restore(dest, target)
    assert (target / "backup_label").read_bytes() == LABEL
    assert not (target / "backup_manifest").exists()


# -- symlinks ------------------------------------------------------------------------------------------------------

def test_a_symlink_in_the_data_tree_is_refused_before_anything_is_written(dest, tmp_path, outside):
    set_path = build_set(str(dest))
    os.symlink(str(outside / "x"), os.path.join(set_path, "data", "pgdata", "restore.log"))
    before = snapshot(str(outside))
    target = tmp_path / "target"
    message = refused(dest, target, "pgdata/restore.log is a symlink to %s" % (outside / "x"))
    assert "Nothing was written to %s" % target in message
    assert not target.exists()
    assert snapshot(str(outside)) == before


def test_a_relation_file_replaced_by_a_symlink_is_refused(dest, tmp_path, outside):
    set_path = build_set(str(dest))
    relation = os.path.join(set_path, "data", RELATION)
    os.unlink(relation)
    os.symlink(str(outside / "x"), relation)
    before = snapshot(str(outside))
    target = tmp_path / "target"
    refused(dest, target, "%s is a symlink to %s" % (relation, outside / "x"))
    assert not target.exists()
    assert snapshot(str(outside)) == before


def test_a_symlink_the_manifest_lists_is_refused_too(dest, tmp_path, outside):
    set_path = build_set(str(dest))
    os.symlink(str(outside), os.path.join(set_path, "data", "pgdata", "log"))
    write_manifest(set_path, manifest_entries(set_path) + [{"path": "pgdata/log", "type": "symlink", "size": 0,
                                                           "target": str(outside)}])
    target = tmp_path / "target"
    refused(dest, target, "pgdata/log is a symlink to %s" % outside)
    assert not target.exists()


def test_a_pg_wal_link_is_neither_followed_nor_recreated(dest, tmp_path, outside):
    set_path = build_set(str(dest))
    os.symlink(str(outside), os.path.join(set_path, "data", "pgdata", "pg_wal"))
    # what the copy records for a linked pg_wal: the link, and the archive_status directory it made behind it
    write_manifest(set_path, manifest_entries(set_path) + [
        {"path": "pgdata/pg_wal", "type": "symlink", "size": 0, "target": str(outside)},
        {"path": "pgdata/pg_wal/archive_status", "type": "dir", "size": 0}])
    before = snapshot(str(outside))
    target = tmp_path / "target"
    restore(dest, target)
    assert (target / "pg_wal").is_dir() and not (target / "pg_wal").is_symlink()
    assert os.listdir(target / "pg_wal") == ["archive_status"]
    assert snapshot(str(outside)) == before


def test_a_label_file_that_is_a_symlink_is_refused(dest, tmp_path, outside):
    set_path = build_set(str(dest))
    os.unlink(os.path.join(set_path, "backup_label"))
    os.symlink(str(outside / "x"), os.path.join(set_path, "backup_label"))
    target = tmp_path / "target"
    refused(dest, target, "%s is a symlink (to %s)" % (os.path.join(set_path, "backup_label"), outside / "x"))
    assert not target.exists()


# -- manifest paths ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("path, problem", [
    ("pgdata/../../outside/evil", "'..'"),
    ("pgdata/base/../../../../outside/evil", "'..'"),
    ("/outside/evil", "absolute"),
    ("pgdata/./evil", "'.'"),
    ("pgdata//evil", "empty component"),
    ("pgdata/evil/", "empty component"),
    ("pgdata/ev\0il", "NUL"),
    ("other/evil", "not under pgdata/"),
])
def test_a_manifest_path_that_leaves_the_target_is_refused(dest, tmp_path, outside, path, problem):
    set_path = build_set(str(dest))
    write_manifest(set_path, manifest_entries(set_path) + [
        {"path": path, "type": "file", "size": 4, "sha256": hashlib.sha256(b"evil").hexdigest()}])
    before = snapshot(str(outside))
    target = tmp_path / "target"
    message = refused(dest, target, "manifest.json lists the path %r" % path)
    assert problem in message
    assert not target.exists()
    assert snapshot(str(outside)) == before


def test_a_manifest_file_without_a_checksum_is_refused(dest, tmp_path):
    set_path = build_set(str(dest))
    entries = [dict(entry, sha256=None) if entry["path"] == RELATION else entry for entry in manifest_entries(set_path)]
    write_manifest(set_path, entries)
    refused(dest, tmp_path / "target", "lists the file %s without a byte size and a SHA-256" % RELATION)


def test_a_manifest_with_no_files_is_refused(dest, tmp_path):
    set_path = build_set(str(dest))
    write_manifest(set_path, [])
    refused(dest, tmp_path / "target", "manifest.json lists no files")


# -- the set against its manifest ---------------------------------------------------------------------------------

def test_a_listed_file_missing_from_the_set_is_refused(dest, tmp_path):
    set_path = build_set(str(dest))
    relation = os.path.join(set_path, "data", RELATION)
    os.unlink(relation)
    target = tmp_path / "target"
    message = refused(dest, target, "%s is listed in manifest.json (a file, 8192 bytes) but missing from the set" % relation)
    assert "restore another set" in message
    assert not target.exists()


def test_a_file_whose_checksum_differs_is_refused_naming_both_checksums(dest, tmp_path):
    set_path = build_set(str(dest))
    relation = os.path.join(set_path, "data", RELATION)
    with open(relation, "r+b") as handle:
        handle.seek(4096)
        handle.write(b"\1")
    expected = hashlib.sha256(b"\0" * 8192).hexdigest()
    found = hashlib.sha256(b"\0" * 4096 + b"\1" + b"\0" * 4095).hexdigest()
    target = tmp_path / "target"
    refused(dest, target, "%s does not match manifest.json: expected 8192 bytes with sha256 %s, found 8192 bytes with sha256 %s"
            % (relation, expected, found))
    assert not target.exists()


def test_a_checksum_mismatch_is_found_in_check_mode_too(dest, tmp_path):
    set_path = build_set(str(dest))
    with open(os.path.join(set_path, "data", RELATION), "r+b") as handle:
        handle.write(b"\1")
    with pytest.raises(pr.RestoreError, match="does not match manifest.json"):
        restore(dest, tmp_path / "target", check_mode=True)


def test_a_file_of_another_size_is_refused(dest, tmp_path):
    set_path = build_set(str(dest))
    relation = os.path.join(set_path, "data", RELATION)
    with open(relation, "ab") as handle:
        handle.write(b"more")
    refused(dest, tmp_path / "target", "%s is 8196 bytes, expected 8192 bytes" % relation)


@pytest.mark.parametrize("extra, kind", [("pgdata/base/5/99999", "file"), ("pgdata/surprise", "dir"), ("other", "dir")])
def test_anything_in_the_data_tree_that_the_manifest_does_not_list_is_refused(dest, tmp_path, extra, kind):
    set_path = build_set(str(dest))
    path = os.path.join(set_path, "data", extra)
    if kind == "file":
        with open(path, "wb") as handle:
            handle.write(b"x")
    else:
        os.mkdir(path)
    target = tmp_path / "target"
    refused(dest, target, "%s (a %s) is in the set's data tree but not in its manifest.json" % (path, kind))
    assert not target.exists()


def test_an_existing_empty_target_is_left_as_it_was_found(dest, tmp_path):
    set_path = build_set(str(dest))
    os.unlink(os.path.join(set_path, "data", RELATION))
    target = tmp_path / "target"
    target.mkdir()
    os.chmod(target, 0o755)
    refused(dest, target, "missing from the set")
    assert os.listdir(target) == []
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o755


def test_a_failure_while_writing_removes_what_was_written(dest, tmp_path, monkeypatch):
    build_set(str(dest), files={"pgdata/PG_VERSION": b"18\n", RELATION: b"\0" * 8192,
                                "pgdata/pg_tblspc/16400/PG_18/5/1": b"ts"},
              spcmap=b"16400 /somewhere/else\n")
    target = tmp_path / "target"
    target.mkdir()
    os.chmod(target, 0o750)
    copied = []

    def copy_then_fail(source, destination, *args):
        if copied:
            raise OSError(28, "No space left on device", destination)
        copied.append(destination)
        return real_copy(source, destination, *args)

    real_copy = pr._copy_file
    monkeypatch.setattr(pr, "_copy_file", copy_then_fail)
    message = refused(dest, target, "No space left on device")
    assert "What it wrote was removed; %s is as it was found" % target in message
    assert os.listdir(target) == []
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o750
    assert not os.path.exists(str(target) + "_tablespaces")


# -- tablespaces ---------------------------------------------------------------------------------------------------

TABLESPACE_FILES = {"pgdata/PG_VERSION": b"18\n", "pgdata/pg_tblspc/16400/PG_18_202406281/5/16500": b"t" * 8192}


def test_a_tablespace_goes_to_the_tablespace_dir_whatever_the_map_names(dest, tmp_path, outside):
    build_set(str(dest), files=TABLESPACE_FILES, spcmap=("16400 %s\n" % outside).encode())
    before = snapshot(str(outside))
    target, tablespaces = tmp_path / "target", tmp_path / "spc"
    result = restore(dest, target, tablespace_dir=tablespaces)
    location = str(tablespaces / "16400")
    assert result["tablespaces"] == [{"oid": "16400", "original": str(outside), "location": location}]
    assert os.readlink(target / "pg_tblspc" / "16400") == location
    assert (tablespaces / "16400" / "PG_18_202406281" / "5" / "16500").read_bytes() == b"t" * 8192
    assert (target / "tablespace_map").read_bytes() == ("16400 %s\n" % location).encode()
    assert stat.S_IMODE(os.stat(location).st_mode) == 0o700
    assert snapshot(str(outside)) == before


def test_a_tablespace_link_to_outside_in_the_set_is_refused_and_nothing_outside_is_touched(dest, tmp_path, outside):
    set_path = build_set(str(dest), files={"pgdata/PG_VERSION": b"18\n"}, dirs=["pgdata/pg_tblspc"],
                         spcmap=("16400 %s\n" % outside).encode())
    link = os.path.join(set_path, "data", "pgdata", "pg_tblspc", "16400")
    os.symlink(str(outside), link)
    write_manifest(set_path, manifest_entries(set_path) + [{"path": "pgdata/pg_tblspc/16400", "type": "symlink", "size": 0,
                                                           "target": str(outside)}])
    before = snapshot(str(outside))
    target = tmp_path / "target"
    refused(dest, target, "%s is a symlink to %s, expected the tablespace's copy as a real directory" % (link, outside))
    assert not target.exists() and not os.path.exists(str(target) + "_tablespaces")
    assert snapshot(str(outside)) == before


@pytest.mark.parametrize("oid", ["../../outside", "16400/../../x", "-1", "abc"])
def test_a_tablespace_map_oid_that_is_not_a_number_is_refused(dest, tmp_path, outside, oid):
    build_set(str(dest), files=TABLESPACE_FILES, spcmap=("%s %s\n" % (oid, outside)).encode())
    before = snapshot(str(outside))
    target = tmp_path / "target"
    refused(dest, target, "tablespace_map has the line %r, expected '<oid> <path>' with a numeric OID" % ("%s %s" % (oid, outside)))
    assert not target.exists()
    assert snapshot(str(outside)) == before


def test_a_tablespace_in_the_map_without_its_copy_is_refused(dest, tmp_path, outside):
    build_set(str(dest), spcmap=("16401 %s\n" % outside).encode())
    refused(dest, tmp_path / "target", "tablespace 16401 (%s) is in tablespace_map, expected its copy as the directory "
                                       "data/pgdata/pg_tblspc/16401 in the set, found none" % outside)


def test_a_tablespace_dir_inside_the_target_is_refused(dest, tmp_path):
    build_set(str(dest), files=TABLESPACE_FILES, spcmap=b"16400 /srv/ts\n")
    target = tmp_path / "target"
    refused(dest, target, "is inside target", tablespace_dir=target / "spc")


# -- the backup id -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("backup_id", ["../b1", "b1/../../x", "has space", "line1\nline2", ".hidden", ""])
def test_a_backup_id_that_breaks_the_rule_is_refused_before_the_set_is_read(dest, tmp_path, backup_id):
    build_set(str(dest))
    target = tmp_path / "target"
    message = refused(dest, target, "backup_id must be 1-128 characters", backup_id=backup_id)
    assert repr(backup_id) in message
    assert not target.exists()


def test_latest_is_still_a_valid_backup_id(dest, tmp_path):
    build_set(str(dest))
    assert restore(dest, tmp_path / "target", backup_id="latest")["backup_id"] == "b1"
