# -*- coding: utf-8 -*-
# Copyright: contributors to consistent.backup
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""Prepare a PostgreSQL data directory from a backup set for recovery (the file work of a restore).

This is a private module_utils file of consistent.backup: it is not part of the collection's
public API and may change without notice.

Two steps, as for a split backup: the label comes first (from the label store when one is given, else from
the set), then the data set it names. A set without its backup_label is refused: PostgreSQL would then run
crash recovery from the copied pg_control and could come up silently corrupt.
"""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import re
import shutil
import stat
import typing as t

from ansible_collections.consistent.backup.plugins.module_utils._fsutil import atomic_write, fsync_dir
from ansible_collections.consistent.backup.plugins.module_utils._manifest import load_manifest

DATA_PREFIX = "pgdata"
# Written by the restore itself (byte-exact from the label store) or meaningless in a restored cluster.
NOT_COPIED = {"backup_label", "tablespace_map", "backup_manifest"}
COPY_CHUNK = 1024 * 1024
LABEL_LINE = re.compile(r"^([A-Z ]+): (.*)$")


class RestoreError(Exception):
    """The restore cannot go on; the message names the object, what was expected and found, and what to do."""


def parse_label(text: str) -> t.Dict[str, str]:
    """backup_label's 'KEY: value' lines, e.g. START WAL LOCATION, CHECKPOINT LOCATION, START TIMELINE, LABEL."""
    fields = {}
    for line in text.splitlines():
        match = LABEL_LINE.match(line)
        if match:
            fields[match.group(1)] = match.group(2)
    return fields


def parse_tablespace_map(text: str) -> t.List[t.Tuple[str, str]]:
    """(oid, path) pairs. PostgreSQL writes one 'oid path' per line, escaping \\n and \\\\ in the path."""
    pairs = []
    for line in text.split("\n"):
        if not line:
            continue
        oid, _sep, raw = line.partition(" ")
        path, i = [], 0
        while i < len(raw):
            if raw[i] == "\\" and i + 1 < len(raw) and raw[i + 1] in "\\\n":
                i += 1
            path.append(raw[i])
            i += 1
        pairs.append((oid, "".join(path)))
    return pairs


def format_tablespace_map(pairs: t.List[t.Tuple[str, str]]) -> str:
    return "".join("%s %s\n" % (oid, path.replace("\\", "\\\\").replace("\n", "\\\n")) for oid, path in pairs)


def _read(path: str) -> t.Optional[bytes]:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except FileNotFoundError:
        return None


def resolve_set(backup_dest: t.Optional[str], backup_id: str, label_dest: t.Optional[str]) -> t.Dict[str, t.Any]:
    """Find the set and its label: the label store first (it names the set), then the set itself."""
    label_json: t.Dict[str, t.Any] = {}
    if label_dest and backup_id != "latest":
        info = _read(os.path.join(label_dest, backup_id, "label.json"))
        if info:
            label_json = json.loads(info.decode("utf-8"))
    if backup_id == "latest":
        if not backup_dest or not os.path.isdir(backup_dest):
            raise RestoreError("backup_dest %s is not a directory; give the backup destination that holds the sets" % backup_dest)
        complete = [name for name in os.listdir(backup_dest) if os.path.isfile(os.path.join(backup_dest, name, "COMPLETE"))]
        if not complete:
            raise RestoreError("no COMPLETE backup set in %s; run playbooks/backup.yml first or give backup_id" % backup_dest)
        backup_id = max(complete, key=lambda name: os.stat(os.path.join(backup_dest, name, "COMPLETE")).st_mtime)
    if backup_dest:
        set_path = os.path.join(backup_dest, backup_id)
    elif label_json.get("set_path"):
        set_path = label_json["set_path"]
    else:
        raise RestoreError("backup set %s: give backup_dest (where the sets are), or a label store that names the set" % backup_id)
    if not os.path.isdir(set_path):
        raise RestoreError("backup set %s does not exist; check backup_dest and backup_id (or use backup_id=latest)" % set_path)
    if not os.path.isfile(os.path.join(set_path, "COMPLETE")):
        raise RestoreError(
            "backup set %s is not marked COMPLETE (its copy, label or manifest did not all reach the medium); "
            "refusing to restore it. Restore an earlier COMPLETE set" % set_path)
    label_places = []
    if label_dest:
        label_places.append(os.path.join(label_dest, backup_id))
    label_places.append(set_path)
    for place in label_places:
        label = _read(os.path.join(place, "backup_label"))
        if label is not None:
            return {"backup_id": backup_id, "set_path": set_path, "label_source": place, "label": label,
                    "spcmap": _read(os.path.join(place, "tablespace_map"))}
    raise RestoreError(
        "backup set %s has no backup_label (looked in %s); refusing to restore it: without backup_label PostgreSQL "
        "would run crash recovery from the copied pg_control and could come up silently corrupt. Restore the label "
        "from the label store (label_dest) that holds %s, or restore another set"
        % (set_path, " and ".join(label_places), backup_id))


def check_target(target: str) -> None:
    if not os.path.isabs(target):
        raise RestoreError("restore_target must be an absolute path; found %r" % target)
    if os.path.exists(target):
        if not os.path.isdir(target):
            raise RestoreError("restore_target %s exists and is not a directory; give an empty directory or a new path" % target)
        if os.listdir(target):
            raise RestoreError(
                "restore_target %s is not empty; a restore never overwrites a directory. Give an empty directory or a new path" % target)


def _owner_ids(owner: str) -> t.Tuple[int, int]:
    try:
        entry = pwd.getpwnam(owner)
    except KeyError:
        raise RestoreError("server user %s does not exist on this host; create it or set restore_owner" % owner) from None
    return entry.pw_uid, entry.pw_gid


def _copy_file(source: str, target: str, expected: t.Optional[str], uid: int, gid: int) -> t.Tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    with open(source, "rb") as src, open(target, "wb") as dst:
        while True:
            chunk = src.read(COPY_CHUNK)
            if not chunk:
                break
            digest.update(chunk)
            dst.write(chunk)
            size += len(chunk)
        dst.flush()
        os.fsync(dst.fileno())
    info = os.stat(source)
    os.chmod(target, stat.S_IMODE(info.st_mode))
    os.chown(target, uid, gid)
    os.utime(target, ns=(info.st_atime_ns, info.st_mtime_ns))
    checksum = digest.hexdigest()
    if expected is not None and checksum != expected:
        raise RestoreError(
            "%s does not match the set's manifest (sha256 %s, manifest says %s): the backup medium returned other "
            "bytes than were written. Do not use this set; restore another one" % (source, checksum, expected))
    return size, checksum


def copy_tree(set_path: str, manifest: t.Dict[str, t.Any], target: str, uid: int, gid: int, verify: bool) -> t.Dict[str, t.Any]:
    """Copy <set>/data/pgdata into target, checking each file against the set's manifest when verify is true."""
    source_root = os.path.join(set_path, "data", DATA_PREFIX)
    if not os.path.isdir(source_root):
        raise RestoreError("backup set %s has no data/%s directory; it is not a PostgreSQL set" % (set_path, DATA_PREFIX))
    expected: t.Dict[str, str] = {}
    if verify:
        expected = {entry["path"]: entry["sha256"] for entry in manifest.get("files", []) if entry.get("sha256")}
    files = bytes_total = 0
    for directory, dirnames, filenames in os.walk(source_root):
        dirnames.sort()
        relative = os.path.relpath(directory, source_root)
        destination = target if relative == "." else os.path.join(target, relative)
        if relative != ".":
            os.mkdir(destination, stat.S_IMODE(os.stat(directory).st_mode))
        os.chown(destination, uid, gid)
        for name in sorted(filenames) + [d for d in dirnames if os.path.islink(os.path.join(directory, d))]:
            source = os.path.join(directory, name)
            if relative == "." and name in NOT_COPIED:
                continue
            target_file = os.path.join(destination, name)
            if os.path.islink(source):
                os.symlink(os.readlink(source), target_file)
                os.lchown(target_file, uid, gid)
                continue
            key = "/".join(p for p in (DATA_PREFIX, "" if relative == "." else relative, name) if p)
            if verify and key not in expected:
                raise RestoreError("%s is in the set but not in its manifest.json; the set was changed after the backup" % source)
            size, _checksum = _copy_file(source, target_file, expected.get(key), uid, gid)
            files += 1
            bytes_total += size
    return {"files": files, "bytes": bytes_total, "verified": verify}


def place_tablespaces(target: str, spcmap: t.Optional[bytes], tablespace_dir: str, uid: int, gid: int) -> t.List[t.Dict[str, str]]:
    """Move each copied tablespace out of pg_tblspc/<oid> to tablespace_dir/<oid> and link it back.

    A drill must never write into the original tablespace locations (the production server still uses them),
    so tablespace_map is rewritten with the new locations; the server recreates the same links from it.
    """
    if not spcmap:
        return []
    pairs = parse_tablespace_map(spcmap.decode("utf-8"))
    moved = []
    os.makedirs(tablespace_dir, mode=0o700, exist_ok=True)
    os.chown(tablespace_dir, uid, gid)
    new_pairs = []
    for oid, original in pairs:
        copied = os.path.join(target, "pg_tblspc", oid)
        location = os.path.join(tablespace_dir, oid)
        if os.path.exists(location):
            raise RestoreError("tablespace location %s already exists; give an empty restore_tablespace_dir" % location)
        if not os.path.isdir(copied):
            raise RestoreError("tablespace %s (%s) is in tablespace_map but its copy %s is missing from the set" % (oid, original, copied))
        shutil.move(copied, location)
        os.chmod(location, 0o700)
        os.symlink(location, copied)
        os.lchown(copied, uid, gid)
        new_pairs.append((oid, location))
        moved.append({"oid": oid, "original": original, "location": location})
    atomic_write(os.path.join(target, "tablespace_map"), format_tablespace_map(new_pairs).encode("utf-8"), 0o600, (uid, gid))
    return moved


def quote_setting(value: t.Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, int):
        return str(value)
    return "'%s'" % str(value).replace("'", "''")


def recovery_settings(port: int, wal_archive: str, socket_dir: str, recovery_target: str, target_value: t.Optional[str],
                      action: str, extra: t.Dict[str, t.Any]) -> t.Dict[str, t.Any]:
    settings: t.Dict[str, t.Any] = {
        "port": port,
        "listen_addresses": "",
        "unix_socket_directories": socket_dir,
        # A drill never writes into the production WAL archive.
        "archive_mode": "off",
        # cp fails on a missing file, which is what recovery needs to see at the end of the archive.
        "restore_command": 'cp "%s/%%f" "%%p"' % wal_archive.replace('"', '\\"'),
        "recovery_target_action": action,
        "logging_collector": False,
    }
    if recovery_target == "immediate":
        settings["recovery_target"] = "immediate"
    elif recovery_target != "latest":
        if not target_value:
            raise RestoreError("recovery_target %s needs recovery_target_value (the %s to stop at)" % (recovery_target, recovery_target))
        settings["recovery_target_" + recovery_target] = target_value
    settings.update(extra)
    return settings


def write_settings(target: str, settings: t.Dict[str, t.Any], uid: int, gid: int) -> None:
    """Settings go to postgresql.auto.conf (read last, so they win); a minimal postgresql.conf and pg_hba.conf
    are written when the copied data directory has none (Debian keeps them in /etc)."""
    if not os.path.exists(os.path.join(target, "postgresql.conf")):
        atomic_write(os.path.join(target, "postgresql.conf"), b"# written by consistent.backup restore: see postgresql.auto.conf\n",
                     0o600, (uid, gid))
    if not os.path.exists(os.path.join(target, "pg_hba.conf")):
        atomic_write(os.path.join(target, "pg_hba.conf"), b"# written by consistent.backup restore\nlocal all all peer\n", 0o600, (uid, gid))
    if not os.path.exists(os.path.join(target, "pg_ident.conf")):
        atomic_write(os.path.join(target, "pg_ident.conf"), b"", 0o600, (uid, gid))
    auto = os.path.join(target, "postgresql.auto.conf")
    current = _read(auto) or b"# Do not edit this file manually!\n# It will be overwritten by the ALTER SYSTEM command.\n"
    lines = [line for line in current.decode("utf-8").splitlines() if line.split("=")[0].strip() not in settings]
    lines.append("# restore settings written by consistent.backup")
    lines += ["%s = %s" % (name, quote_setting(value)) for name, value in settings.items()]
    atomic_write(auto, ("\n".join(lines) + "\n").encode("utf-8"), 0o600, (uid, gid))


def resolve_label_only(backup_id: str, label_dest: t.Optional[str], target: str) -> t.Dict[str, t.Any]:
    """Split backup: third-party software has already restored the files into target; the label store has the label."""
    if not label_dest or backup_id == "latest":
        raise RestoreError("a restore of data already in place (data_present) needs label_dest and the backup_id whose label "
                           "to use; found label_dest=%r, backup_id=%r" % (label_dest, backup_id))
    place = os.path.join(label_dest, backup_id)
    label = _read(os.path.join(place, "backup_label"))
    if label is None:
        raise RestoreError(
            "label store %s has no backup_label for %s; refusing: without backup_label PostgreSQL would run crash recovery "
            "from the restored pg_control and could come up silently corrupt. Restore the label store first" % (place, backup_id))
    if not os.path.isfile(os.path.join(target, "global", "pg_control")):
        raise RestoreError("%s has no global/pg_control: restore the data directory with the backup software first, "
                           "then run this restore with data_present" % target)
    return {"backup_id": backup_id, "set_path": None, "label_source": place, "label": label,
            "spcmap": _read(os.path.join(place, "tablespace_map"))}


def clean_third_party_copy(target: str) -> t.List[str]:
    """What a file-level copy of a running cluster carries but recovery must not see (PostgreSQL's own list)."""
    removed = []
    for name in ("postmaster.pid", "postmaster.opts", "backup_label.old", "recovery.signal", "standby.signal"):
        path = os.path.join(target, name)
        if os.path.lexists(path):
            os.unlink(path)
            removed.append(name)
    wal = os.path.join(target, "pg_wal")
    for directory in (wal, os.path.join(wal, "archive_status")):
        if os.path.isdir(directory):
            for name in os.listdir(directory):
                path = os.path.join(directory, name)
                if os.path.isfile(path) or os.path.islink(path):
                    os.unlink(path)
                    removed.append(os.path.relpath(path, target))
    return removed


def chown_tree(path: str, uid: int, gid: int) -> None:
    os.chown(path, uid, gid)
    for directory, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            os.lchown(os.path.join(directory, name), uid, gid)


def prepare_in_place(backup_id: str, label_dest: t.Optional[str], target: str, owner: str, settings: t.Dict[str, t.Any],
                     check_mode: bool) -> t.Dict[str, t.Any]:
    found = resolve_label_only(backup_id, label_dest, target)
    uid, gid = _owner_ids(owner)
    result = {"backup_id": backup_id, "set_path": None, "label_source": found["label_source"],
              "label": parse_label(found["label"].decode("utf-8", "replace")), "target": target, "settings": settings,
              "server_version_num": None, "system_identifier": None, "changed": not check_mode}
    if check_mode:
        return result
    result["removed"] = clean_third_party_copy(target)
    os.makedirs(os.path.join(target, "pg_wal", "archive_status"), mode=0o700, exist_ok=True)
    chown_tree(target, uid, gid)
    os.chmod(target, 0o700)
    atomic_write(os.path.join(target, "backup_label"), found["label"], 0o600, (uid, gid))
    if found["spcmap"]:
        atomic_write(os.path.join(target, "tablespace_map"), found["spcmap"], 0o600, (uid, gid))
    write_settings(target, settings, uid, gid)
    atomic_write(os.path.join(target, "recovery.signal"), b"", 0o600, (uid, gid))
    fsync_dir(target)
    with open(os.path.join(target, "PG_VERSION"), encoding="utf-8") as handle:
        result["server_version_num"] = int(handle.read().strip()) * 10000
    return result


def prepare(backup_dest: t.Optional[str], backup_id: str, label_dest: t.Optional[str], target: str, tablespace_dir: str,
            owner: str, settings: t.Dict[str, t.Any], verify: bool, check_mode: bool) -> t.Dict[str, t.Any]:
    found = resolve_set(backup_dest, backup_id, label_dest)
    check_target(target)
    uid, gid = _owner_ids(owner)
    label_text = found["label"].decode("utf-8", "replace")
    try:
        manifest = load_manifest(found["set_path"])
    except ValueError as exc:
        raise RestoreError(str(exc)) from None
    facts = manifest.get("facts", {})
    result = {
        "server_version_num": facts.get("server_version_num"),
        "system_identifier": facts.get("system_identifier"),
        "backup_id": found["backup_id"],
        "set_path": found["set_path"],
        "label_source": found["label_source"],
        "label": parse_label(label_text),
        "target": target,
        "settings": settings,
        "changed": not check_mode,
    }
    if check_mode:
        return result
    os.makedirs(target, mode=0o700, exist_ok=True)
    os.chmod(target, 0o700)
    result.update(copy_tree(found["set_path"], manifest, target, uid, gid, verify))
    result["tablespaces"] = place_tablespaces(target, found["spcmap"], tablespace_dir, uid, gid)
    # byte-exact, as the stop call returned it
    atomic_write(os.path.join(target, "backup_label"), found["label"], 0o600, (uid, gid))
    for name in ("pg_wal", os.path.join("pg_wal", "archive_status")):
        path = os.path.join(target, name)
        if not os.path.isdir(path):
            os.mkdir(path, 0o700)
            os.chown(path, uid, gid)
    write_settings(target, settings, uid, gid)
    atomic_write(os.path.join(target, "recovery.signal"), b"", 0o600, (uid, gid))
    fsync_dir(target)
    return result
