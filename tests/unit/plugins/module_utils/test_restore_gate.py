# -*- coding: utf-8 -*-
# Copyright: contributors to consistent.backup
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The restore gate (_restore_gate): what every restore and drill checks, whatever the engine, before a byte is
written. A set of plain files is built here; each test changes one thing about it."""

from __future__ import annotations

import hashlib
import json
import os
import stat

import pytest

from ansible_collections.consistent.backup.plugins.module_utils import _restore_gate as gate

FILES = {"env/DB_CONFIG": b"set_data_dir data\n", "env/data/parts.db": b"p" * 4096, "env/logs/log.0000000001": b"l" * 100}
RECORD = ("env/data/parts.db", "env/logs/log.0000000001")
OPTIONAL = ("env/DB_CONFIG",)


def build_set(base, files=None, modes=None):
    files = FILES if files is None else files
    set_path = os.path.join(str(base), "s1")
    entries = []
    for path, content in files.items():
        full = os.path.join(set_path, "data", path)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        with open(full, "wb") as handle:
            handle.write(content)
        entries.append({"path": path, "type": "file", "size": len(content), "sha256": hashlib.sha256(content).hexdigest(),
                        "mode": (modes or {}).get(path, "0640")})
    os.makedirs(os.path.join(set_path, "data"), exist_ok=True)
    return set_path, {"files": entries}


def check(set_path, manifest, recorded=RECORD, optional=OPTIONAL, vanished=()):
    return gate.check_set(set_path, manifest, recorded, "the test record", "a test set", under="env", optional=optional,
                          vanished=vanished)


def refused(match, set_path, manifest, **kwargs):
    with pytest.raises(gate.GateError) as caught:
        check(set_path, manifest, **kwargs)
    assert match in str(caught.value), str(caught.value)
    return str(caught.value)


# -- paths ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("path, problem", [
    ("env/data/parts.db", ""),
    ("", "it is not a non-empty string"),
    (7, "it is not a non-empty string"),
    ("env/a\0b", "it holds a NUL byte"),
    ("/etc/passwd", "it is absolute"),
    ("env//x", "it has an empty component (a doubled or trailing '/')"),
    ("env/../../etc/passwd", "it has a '.' or '..' component"),
    ("env/./x", "it has a '.' or '..' component"),
    ("other/x", "it is not under env/"),
])
def test_a_manifest_path_must_be_relative_normalised_and_under_the_engines_directory(path, problem):
    assert gate.path_problem(path, "env") == problem


def test_inside_accepts_a_normalised_relative_directory_and_the_target_itself(tmp_path):
    assert gate.inside(str(tmp_path), "_outside_home/srv/logs", "DB_CONFIG") == str(tmp_path / "_outside_home/srv/logs")
    assert gate.inside(str(tmp_path), ".", "DB_CONFIG") == str(tmp_path)


@pytest.mark.parametrize("directory", ["../logs", "/srv/logs", "a/../../b", ""])
def test_inside_refuses_a_directory_that_could_leave_the_target(tmp_path, directory):
    with pytest.raises(gate.GateError, match="expected a directory inside the restore target"):
        gate.inside(str(tmp_path), directory, "DB_CONFIG line")


# -- a whole set -----------------------------------------------------------------------------------------------------

def test_a_whole_set_passes_with_every_file_read_and_matched(tmp_path):
    set_path, manifest = build_set(tmp_path)
    plan = check(set_path, manifest)
    assert sorted(plan.files) == [("env/DB_CONFIG", 18), ("env/data/parts.db", 4096), ("env/logs/log.0000000001", 100)]
    assert sorted(rel for rel, _mode in plan.dirs) == ["env", "env/data", "env/logs"]


def test_a_traversal_path_in_the_manifest_is_refused(tmp_path):
    set_path, manifest = build_set(tmp_path)
    manifest["files"][0]["path"] = "env/../../victim/x"
    refused("lists the path 'env/../../victim/x', expected a relative, normalised path under env/", set_path, manifest)


def test_a_file_the_engine_did_not_record_is_refused_even_when_the_manifest_and_the_medium_agree(tmp_path):
    files = dict(FILES, **{"env/data/extra.db": b"x"})
    set_path, manifest = build_set(tmp_path, files)
    refused("manifest.json lists env/data/extra.db, which the test record does not hold", set_path, manifest)


def test_a_recorded_file_the_manifest_does_not_list_is_refused(tmp_path):
    files = {path: content for path, content in FILES.items() if path != "env/data/parts.db"}
    set_path, manifest = build_set(tmp_path, files)
    refused("the test record holds env/data/parts.db, but manifest.json does not list it: the set is not whole",
            set_path, manifest)


def test_a_recorded_file_that_vanished_during_the_copy_may_be_absent(tmp_path):
    files = {path: content for path, content in FILES.items() if path != "env/data/parts.db"}
    set_path, manifest = build_set(tmp_path, files)
    assert len(check(set_path, manifest, vanished=["env/data/parts.db"]).files) == 2


def test_a_listed_file_missing_from_the_medium_is_refused(tmp_path):
    set_path, manifest = build_set(tmp_path)
    os.unlink(os.path.join(set_path, "data", "env/logs/log.0000000001"))
    refused("log.0000000001 is listed in manifest.json (a file, 100 bytes) but missing from the set", set_path, manifest)


def test_a_file_of_another_size_is_refused(tmp_path):
    set_path, manifest = build_set(tmp_path)
    with open(os.path.join(set_path, "data", "env/data/parts.db"), "ab") as handle:
        handle.write(b"more")
    refused("parts.db is 4100 bytes, expected 4096 bytes (manifest.json)", set_path, manifest)


def test_a_file_of_another_checksum_is_refused_naming_both(tmp_path):
    set_path, manifest = build_set(tmp_path)
    with open(os.path.join(set_path, "data", "env/data/parts.db"), "r+b") as handle:
        handle.write(b"X")
    message = refused("parts.db does not match manifest.json: expected 4096 bytes with sha256 %s"
                      % hashlib.sha256(b"p" * 4096).hexdigest(), set_path, manifest)
    assert hashlib.sha256(b"X" + b"p" * 4095).hexdigest() in message


def test_a_symlink_in_the_set_is_refused_even_when_the_manifest_lists_it(tmp_path):
    set_path, manifest = build_set(tmp_path)
    target = tmp_path / "victim.db"
    target.write_bytes(b"p" * 4096)
    database = os.path.join(set_path, "data", "env/data/parts.db")
    os.unlink(database)
    os.symlink(str(target), database)
    refused("parts.db is a symlink to %s; expected no symlink in the set except where its engine defines one" % target,
            set_path, manifest)


def test_a_link_the_engine_defines_is_reported_and_not_followed(tmp_path):
    set_path, manifest = build_set(tmp_path)
    os.symlink("/nowhere", os.path.join(set_path, "data", "env", "pg_wal"))
    entries = gate.check_entries(set_path, manifest, "env")
    tree = gate.inspect_tree(set_path, os.path.join(set_path, "data"), entries, "/t",
                             defined_link=lambda rel, entry, link: rel == "env/pg_wal")
    assert tree.links == ["env/pg_wal"]


@pytest.mark.parametrize("make", ["fifo", "device"])
def test_a_device_or_special_file_in_the_set_is_refused(tmp_path, make):
    set_path, manifest = build_set(tmp_path)
    special = os.path.join(set_path, "data", "env/data/parts.db")
    os.unlink(special)
    if make == "fifo":
        os.mkfifo(special)
    else:
        if os.geteuid() != 0:
            pytest.skip("mknod of a device needs root")
        os.mknod(special, 0o600 | stat.S_IFCHR, os.makedev(1, 3))  # /dev/null's numbers
    refused("expected only regular files and directories: a restore never makes a device or special file", set_path, manifest)


def test_a_setuid_file_on_the_medium_is_refused(tmp_path):
    set_path, manifest = build_set(tmp_path)
    os.chmod(os.path.join(set_path, "data", "env/data/parts.db"), 0o4755)
    refused("(setuid or setgid), expected permission bits only", set_path, manifest)


@pytest.mark.parametrize("mode", ["4755", "02750", "0106640", "rwx", 0o4755])
def test_a_manifest_mode_beyond_the_permission_bits_is_refused(tmp_path, mode):
    set_path, manifest = build_set(tmp_path, modes={"env/data/parts.db": mode})
    refused("expected permission bits only (no setuid, setgid or file type)", set_path, manifest)


def test_an_unlisted_file_in_the_set_is_refused(tmp_path):
    set_path, manifest = build_set(tmp_path)
    with open(os.path.join(set_path, "data", "env", "surprise"), "wb") as handle:
        handle.write(b"x")
    refused("surprise (a file) is in the set's data tree but not in its manifest.json", set_path, manifest)


def test_a_set_without_its_data_directory_is_not_a_set_of_the_engine(tmp_path):
    set_path = str(tmp_path / "empty")
    os.makedirs(set_path)
    with pytest.raises(gate.GateError, match="has no data directory; it is not a test set"):
        check(set_path, {"files": []})


def test_a_record_that_names_a_path_outside_the_set_is_refused(tmp_path):
    set_path, manifest = build_set(tmp_path)
    refused("the test record names 'env/../x', expected a relative, normalised path", set_path, manifest,
            recorded=RECORD + ("env/../x",))


# -- the target ------------------------------------------------------------------------------------------------------

def test_a_target_must_be_absent_or_an_empty_directory(tmp_path):
    assert gate.check_target(str(tmp_path / "new")) is None
    (tmp_path / "empty").mkdir()
    assert stat.S_ISDIR(gate.check_target(str(tmp_path / "empty")).st_mode)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(gate.GateError, match="is not an empty directory"):
        gate.check_target(str(tmp_path / "full"))
    os.symlink(str(tmp_path / "empty"), str(tmp_path / "link"))
    with pytest.raises(gate.GateError, match="is not an empty directory .found a symlink"):
        gate.check_target(str(tmp_path / "link"))
    with pytest.raises(gate.GateError, match="must be an absolute path"):
        gate.check_target("relative")


def test_undo_removes_a_target_that_was_absent(tmp_path):
    target = str(tmp_path / "restore")
    written = gate.Written(target)
    written.makedirs(os.path.join(target, "data", "deep"))
    with open(os.path.join(target, "data", "deep", "x"), "w", encoding="utf-8") as handle:
        handle.write("x")
    assert written.undo() == []
    assert not os.path.lexists(target)


def test_undo_empties_an_existing_target_and_gives_back_its_mode(tmp_path):
    target = tmp_path / "restore"
    target.mkdir()
    os.chmod(str(target), 0o711)
    written = gate.Written(str(target))
    os.chmod(str(target), 0o700)
    (target / "x").write_text("x")
    os.symlink("/etc", str(target / "link"))
    assert written.undo() == []
    assert os.listdir(str(target)) == [] and stat.S_IMODE(os.stat(str(target)).st_mode) == 0o711
    assert os.path.isdir("/etc")


def test_undo_removes_only_what_the_restore_made_outside_a_target(tmp_path):
    (tmp_path / "existing").mkdir()
    (tmp_path / "existing" / "keep").write_text("keep")
    written = gate.Written(None)
    written.makedirs(str(tmp_path / "existing" / "new" / "deeper"))
    temporary = tmp_path / "existing" / ".x.restoring"
    temporary.write_text("t")
    written.made(str(temporary))
    assert written.undo() == []
    assert sorted(os.listdir(str(tmp_path / "existing"))) == ["keep"]


def test_the_manifest_json_shape_is_checked_before_any_entry(tmp_path):
    set_path, _manifest = build_set(tmp_path)
    with pytest.raises(gate.GateError, match="manifest.json has no list of files"):
        check(set_path, json.loads('{"files": {"a": 1}}'))
