# -*- coding: utf-8 -*-
# Copyright: contributors to consistent.backup
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""Prepare a PostgreSQL data directory from a backup set for recovery (the file work of a restore).

This is a private module_utils file of consistent.backup: it is not part of the collection's
public API and may change without notice.

Two steps, as for a split backup: the label comes first (from the label store when one is given, else from
the set), then the data set it names. A set without its backup_label is refused: PostgreSQL would then run
crash recovery from the copied pg_control and could come up silently corrupt.

Nothing is written before the whole set is checked (plan_restore): a set is data from a medium, and a hostile or
damaged one must not make the restore write outside its target. Then write_restore copies it; a failure there is
undone (_undo), so a refused restore leaves the target as it was found.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import stat
import time
import typing as t

from ansible_collections.consistent.backup.plugins.module_utils import _restore_gate as _gate
from ansible_collections.consistent.backup.plugins.module_utils import _sets
from ansible_collections.consistent.backup.plugins.module_utils._copy_plan import CopyError
from ansible_collections.consistent.backup.plugins.module_utils._copy_sink import DirectorySink, FileMeta, copy_file
from ansible_collections.consistent.backup.plugins.module_utils._fsutil import atomic_write, fsync_dir
from ansible_collections.consistent.backup.plugins.module_utils._layout import COMPLETE_NAME, backup_id_problem
from ansible_collections.consistent.backup.plugins.module_utils._manifest import load_manifest
from ansible_collections.consistent.backup.plugins.module_utils._pg_manifest import SERVER_WRITTEN

DATA_PREFIX = "pgdata"
# The server-written files (_pg_manifest.SERVER_WRITTEN): the restore writes the labels itself (byte-exact from
# the label store) and backup_manifest is meaningless in a restored cluster.
NOT_COPIED = frozenset(SERVER_WRITTEN)
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
    """(oid, path) pairs, read as PostgreSQL reads the file (read_tablespace_map): one 'oid path' per line; a
    backslash takes the next character literally, so a path may hold an escaped newline, return or backslash."""
    pairs = []
    line: t.List[str] = []
    escaped = False
    for char in text + "\n":
        if escaped:
            line.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char in "\n\r":
            if line:
                oid, _sep, path = "".join(line).partition(" ")
                pairs.append((oid, path))
            line = []
        else:
            line.append(char)
    return pairs


def format_tablespace_map(pairs: t.List[t.Tuple[str, str]]) -> str:
    """The file as PostgreSQL writes it (do_pg_backup_start): a newline, return or backslash in a path is escaped."""
    def escape(path: str) -> str:
        return "".join("\\" + char if char in "\n\r\\" else char for char in path)
    return "".join("%s %s\n" % (oid, escape(path)) for oid, path in pairs)


def _read(path: str) -> t.Optional[bytes]:
    """A label or map file's bytes (None when absent); never read through a symlink."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        return None
    except OSError as exc:
        if os.path.islink(path):
            raise RestoreError("%s is a symlink (to %s), expected a regular file: a restore never follows a link in a "
                               "backup set or label store; restore another set" % (path, os.readlink(path))) from None
        raise
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            raise RestoreError("%s is not a regular file; expected the label file written by the backup: restore another set" % path)
        return handle.read()


def check_restore_id(backup_id: t.Any) -> None:
    """The one backup id rule (_layout), or the literal 'latest'; checked before any path is built from it."""
    if backup_id != "latest":
        problem = backup_id_problem(backup_id)
        if problem:
            raise RestoreError(problem + ", or latest for the newest COMPLETE set")


def resolve_set(backup_dest: t.Optional[str], backup_id: str, label_dest: t.Optional[str],
                set_host: t.Optional[str] = None, set_database: t.Optional[str] = None) -> t.Dict[str, t.Any]:
    """Find the set and its label: the label store first (it names the set), then the set itself (the set reader:
    latest is the newest COMPLETE PostgreSQL set of set_host and set_database)."""
    label_json: t.Dict[str, t.Any] = {}
    if label_dest and backup_id != _sets.LATEST:
        info = _read(os.path.join(label_dest, backup_id, "label.json"))
        if info:
            label_json = json.loads(info.decode("utf-8"))
    if backup_dest:
        try:
            found = _sets.resolve(backup_dest, backup_id, "postgresql", set_host, set_database,
                                  database_option="set_database (the source's data directory)")
        except _sets.SetError as exc:
            raise RestoreError(str(exc)) from None
        backup_id, set_path = found["backup_id"], found["path"]
    elif label_json.get("set_path"):
        set_path = label_json["set_path"]
        if not os.path.isdir(set_path):
            raise RestoreError("backup set %s does not exist; check backup_dest and backup_id (or use backup_id=latest)" % set_path)
        if not os.path.isfile(os.path.join(set_path, COMPLETE_NAME)):
            raise RestoreError(
                "backup set %s is not marked COMPLETE (its copy, label or manifest did not all reach the medium); "
                "refusing to restore it. Restore an earlier COMPLETE set" % set_path)
    else:
        raise RestoreError("backup set %s: give backup_dest (where the sets are), or a label store that names the set" % backup_id)
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
        raise RestoreError("target must be an absolute path; found %r" % target)
    if os.path.exists(target):
        if not os.path.isdir(target):
            raise RestoreError("target %s exists and is not a directory; give an empty directory or a new path" % target)
        if os.listdir(target):
            raise RestoreError(
                "target %s is not empty; a restore never overwrites a directory. Give an empty directory or a new path" % target)


def _owner_ids(owner: str) -> t.Tuple[int, int]:
    try:
        entry = pwd.getpwnam(owner)
    except KeyError:
        raise RestoreError("server user %s does not exist on this host; create it or set owner" % owner) from None
    return entry.pw_uid, entry.pw_gid


# --------------------------------------------------------------------------------------------------------------
# The set is checked whole before anything is written to the target: the manifest's paths, the set's data tree
# against the manifest (nothing missing, nothing extra, no link), every listed file read and its SHA-256 compared,
# and tablespace_map. Only then is the target written; a failure while writing removes what was written.
# --------------------------------------------------------------------------------------------------------------

# A tablespace is named by its OID in pg_tblspc/ and in tablespace_map: digits only, so it never leaves a directory.
TABLESPACE_OID = re.compile(r"^[1-9][0-9]{0,9}\Z")
# PostgreSQL lets pg_wal be a link (initdb --waldir). Its contents are never in a set (recovery reads the WAL
# archive), so a pg_wal link in a set is neither followed nor recreated: the target gets an empty pg_wal directory.
WAL_DIR = DATA_PREFIX + "/pg_wal"
TABLESPACE_LINKS = DATA_PREFIX + "/pg_tblspc/"
UNDER_REASON = "a PostgreSQL set holds only the data directory there"


def manifest_path_problem(path: t.Any) -> str:
    """'' when ``path`` is a relative, normalised path under pgdata/, else what is wrong with it (the gate's rule)."""
    return _gate.path_problem(path, DATA_PREFIX, UNDER_REASON)


def _set_problem(set_path: str, what: str) -> RestoreError:
    return RestoreError(str(_gate.set_problem(set_path, what)))


def plan_restore(set_path: str, manifest: t.Dict[str, t.Any], spcmap: t.Optional[bytes], target: str, tablespace_dir: str,
                 verify: bool) -> t.Dict[str, t.Any]:
    """Check the whole set through the restore gate before the target is touched; return what to write.

    The gate (_restore_gate) refuses a manifest path that is absolute, not normalised or not under pgdata/; a listed
    file missing from the set, of another type or size, or (verify) another SHA-256; an entry of the set's data tree
    that the manifest does not list; a setuid, setgid or device file; any symlink in the set's data tree (a link
    would let the restored server write outside its target) but the two PostgreSQL defines: pg_wal, which is replaced
    by an empty directory, and pg_tblspc/<oid>, which must be a real directory in a set. Then tablespace_map: a line
    whose OID is not a number or whose copy is not a real directory in the set is refused, and every tablespace goes
    to tablespace_dir/<oid>, whatever the map names.
    """
    data_root = os.path.join(set_path, "data")
    source_root = os.path.join(data_root, DATA_PREFIX)
    for directory in (data_root, source_root):
        _gate.root_dir(set_path, directory, "a PostgreSQL set")
    entries = _gate.check_entries(set_path, manifest, DATA_PREFIX, UNDER_REASON)
    if not entries:
        raise _gate.set_problem(set_path, "manifest.json lists no files, expected the copy of the data directory")

    def defined_link(rel: str, entry: t.Optional[t.Dict[str, t.Any]], link: str) -> t.Union[bool, str, None]:
        if rel == WAL_DIR and (entry is None or entry["type"] in ("symlink", "dir")):
            return True
        if rel.startswith(TABLESPACE_LINKS) and "/" not in rel[len(TABLESPACE_LINKS):]:
            return ("%s is a symlink to %s, expected the tablespace's copy as a real directory: a set holds its "
                    "tablespaces' files, and a restore never follows a link" % (os.path.join(data_root, rel), link))
        return ("%s is a symlink to %s; expected no symlink in the set's data tree except pg_tblspc/<oid> tablespaces "
                "(restored to tablespace_dir): a link in a restored data directory would make the server read and write "
                "outside %s" % (os.path.join(data_root, rel), link, target))

    def server_written(rel: str, kind: str) -> bool:
        return kind == "file" and rel.startswith(DATA_PREFIX + "/") and rel[len(DATA_PREFIX) + 1:] in NOT_COPIED

    tree = _gate.inspect_tree(set_path, data_root, entries, target, defined_link, server_written)
    dirs, files, found = tree.dirs, tree.files, set(tree.found)
    wal_link = WAL_DIR in tree.links
    if wal_link:
        # Directories the copy recorded inside a linked pg_wal (archive_status) are made anew in the target; the link
        # is not followed to look at them.
        found.update(path for path, entry in entries.items() if path.startswith(WAL_DIR + "/") and entry["type"] == "dir")
    _gate.require_present(set_path, data_root, entries, found)
    tablespaces = _plan_tablespaces(set_path, spcmap, set(rel for rel, _mode in dirs), target, tablespace_dir)
    if verify:
        _gate.verify_files(set_path, data_root, entries, files)
    return {"data_root": data_root, "entries": entries, "dirs": dirs, "files": files, "wal_link": wal_link,
            "tablespaces": tablespaces, "verified": verify}


def _plan_tablespaces(set_path: str, spcmap: t.Optional[bytes], set_dirs: t.Set[str], target: str,
                      tablespace_dir: str) -> t.List[t.Dict[str, str]]:
    """tablespace_map's (oid, original, location): each copy must be a real directory pgdata/pg_tblspc/<oid> of the set.

    The original paths are only reported: a drill must never write into them (the production server still uses
    them), so every tablespace goes to tablespace_dir/<oid> and nowhere else.
    """
    if not spcmap:
        return []
    try:
        pairs = parse_tablespace_map(spcmap.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise _set_problem(set_path, "tablespace_map is not UTF-8 text (%s)" % exc) from None
    if not os.path.isabs(tablespace_dir):
        raise RestoreError("tablespace_dir must be an absolute path; found %r" % tablespace_dir)
    inside = os.path.normpath(tablespace_dir) + "/"
    if inside.startswith(os.path.normpath(target) + "/") or os.path.normpath(tablespace_dir) == os.path.normpath(target):
        raise RestoreError("tablespace_dir %s is inside target %s; expected a directory outside the data "
                           "directory (the playbook's default is <target>_tablespaces)" % (tablespace_dir, target))
    planned = []
    for oid, original in pairs:
        if not TABLESPACE_OID.match(oid):
            raise _set_problem(set_path, "tablespace_map has the line %r, expected '<oid> <path>' with a numeric OID"
                               % ("%s %s" % (oid, original)))
        if any(item["oid"] == oid for item in planned):
            raise _set_problem(set_path, "tablespace_map lists the tablespace %s twice" % oid)
        rel = TABLESPACE_LINKS + oid
        if rel not in set_dirs:
            raise _set_problem(set_path, "tablespace %s (%s) is in tablespace_map, expected its copy as the directory "
                                         "data/%s in the set, found none" % (oid, original, rel))
        location = os.path.join(tablespace_dir, oid)
        if os.path.lexists(location):
            raise RestoreError("tablespace location %s already exists; give an empty tablespace_dir (or remove %s)"
                               % (location, location))
        planned.append({"oid": oid, "original": original, "location": location})
    return planned


def _destination(rel: str, target: str, tablespaces: t.List[t.Dict[str, str]]) -> str:
    """Where the set's data/<rel> goes: tablespaces to their location, everything else into the target."""
    for tablespace in tablespaces:
        prefix = TABLESPACE_LINKS + tablespace["oid"]
        if rel == prefix or rel.startswith(prefix + "/"):
            return os.path.join(tablespace["location"], rel[len(prefix) + 1:]) if rel != prefix else tablespace["location"]
    return os.path.join(target, rel[len(DATA_PREFIX) + 1:])


def _copy_file(source: str, destination: str, expected: t.Dict[str, t.Any], verify: bool, uid: int, gid: int,
               sink: t.Optional[DirectorySink] = None) -> int:
    """Copy one file of the set through the copy engine (never through a link, never onto an existing name).

    The file is written under a temporary name and checked again (size, and with verify its SHA-256, computed in the
    same pass as the copy) before it gets its name: a file that changed since the check is never named in the target.
    """
    src_fd = _gate.open_regular(source)
    try:
        info = os.fstat(src_fd)

        def check(size: int, checksum: str) -> None:
            if size != expected["size"] or (verify and checksum != expected["sha256"]):
                raise RestoreError(
                    "%s changed while it was restored: expected %d bytes with sha256 %s (manifest.json, checked before the "
                    "copy), found %d bytes with sha256 %s. Something writes into the set: stop it, then restore again"
                    % (source, expected["size"], expected["sha256"], size, checksum))

        meta = FileMeta(stat.S_IMODE(info.st_mode) & 0o777, uid, gid, info.st_atime_ns, info.st_mtime_ns)
        size, _checksum = copy_file(src_fd, destination, meta, check=check, sink=sink)
    finally:
        os.close(src_fd)
    return size


def write_restore(plan: t.Dict[str, t.Any], target: str, tablespace_dir: str, uid: int, gid: int) -> t.Dict[str, t.Any]:
    """Write the checked set into target (and its tablespaces into tablespace_dir); links only to the new locations."""
    tablespaces = plan["tablespaces"]
    os.makedirs(target, mode=0o700, exist_ok=True)
    os.chmod(target, 0o700)
    os.chown(target, uid, gid)
    if tablespaces:
        os.makedirs(tablespace_dir, mode=0o700, exist_ok=True)
        os.chown(tablespace_dir, uid, gid)
    for rel, mode in sorted(plan["dirs"]):
        if rel == DATA_PREFIX:
            continue
        destination = _destination(rel, target, tablespaces)
        os.mkdir(destination, 0o700)
        os.lchown(destination, uid, gid)
        os.chmod(destination, 0o700 if destination in (item["location"] for item in tablespaces) else mode)
    if plan["wal_link"]:
        os.mkdir(os.path.join(target, "pg_wal"), 0o700)
        os.lchown(os.path.join(target, "pg_wal"), uid, gid)
    for tablespace in tablespaces:
        link = os.path.join(target, "pg_tblspc", tablespace["oid"])
        os.symlink(tablespace["location"], link)
        os.lchown(link, uid, gid)
    files = bytes_total = 0
    # One sink for the whole restore: each file is named once written and checked, and one barrier at the end makes all
    # of them (and every new name, in the target and the tablespace locations) durable before the label is written.
    sink = DirectorySink(target, target, chown=True)
    for rel, _size in plan["files"]:
        if rel[len(DATA_PREFIX) + 1:] in NOT_COPIED:
            continue
        bytes_total += _copy_file(os.path.join(plan["data_root"], rel), _destination(rel, target, tablespaces),
                                  plan["entries"][rel], plan["verified"], uid, gid, sink)
        files += 1
    try:
        sink.barrier()
    except CopyError as exc:
        raise RestoreError(str(exc)) from None
    if tablespaces:
        atomic_write(os.path.join(target, "tablespace_map"),
                     format_tablespace_map([(item["oid"], item["location"]) for item in tablespaces]).encode("utf-8"),
                     0o600, (uid, gid))
    return {"files": files, "bytes": bytes_total, "verified": plan["verified"], "tablespaces": tablespaces}


def _undo(target: str, target_before: t.Optional[os.stat_result], tablespace_dir: str,
          tablespace_dir_before: t.Optional[os.stat_result], tablespaces: t.List[t.Dict[str, str]]) -> t.List[str]:
    """Remove what a failed restore wrote (the gate's Written: links are removed, never followed); the paths that
    could not be removed.

    A target that existed (empty, as check_target requires) is emptied again and gets its mode and owner back; an
    existing tablespace_dir loses the locations this restore made and gets its owner back.
    """
    written = _gate.Written(target, target_before, checked=True)
    if tablespace_dir_before is not None:
        for tablespace in tablespaces:
            written.made(tablespace["location"])
    elif tablespaces:
        written.made(tablespace_dir)
    left = written.undo()
    if tablespace_dir_before is not None:
        try:
            os.chown(tablespace_dir, tablespace_dir_before.st_uid, tablespace_dir_before.st_gid)
        except OSError:
            left.append(tablespace_dir)
    return left


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
    check_restore_id(backup_id)
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
            owner: str, settings: t.Dict[str, t.Any], verify: bool, check_mode: bool,
            set_host: t.Optional[str] = None, set_database: t.Optional[str] = None) -> t.Dict[str, t.Any]:
    """Check the whole set (plan_restore), then write it; a refused restore has written nothing to the target."""
    check_restore_id(backup_id)
    found = resolve_set(backup_dest, backup_id, label_dest, set_host, set_database)
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
    try:
        plan = plan_restore(found["set_path"], manifest, found["spcmap"], target, tablespace_dir, verify)
    except (RestoreError, _gate.GateError) as exc:
        raise RestoreError("%s. Nothing was written to %s" % (exc, target)) from None
    except OSError as exc:
        raise RestoreError("cannot read backup set %s at %s: %s; check the medium and its permissions. Nothing was written to %s"
                           % (found["set_path"], exc.filename or "?", exc.strerror or exc, target)) from None
    result.update(files=len([rel for rel, _size in plan["files"] if rel[len(DATA_PREFIX) + 1:] not in NOT_COPIED]),
                  bytes=sum(size for rel, size in plan["files"] if rel[len(DATA_PREFIX) + 1:] not in NOT_COPIED),
                  verified=plan["verified"], tablespaces=plan["tablespaces"])
    if check_mode:
        return result
    target_before = os.stat(target) if os.path.isdir(target) else None
    tablespace_dir_before = os.stat(tablespace_dir) if os.path.isdir(tablespace_dir) else None
    try:
        result.update(write_restore(plan, target, tablespace_dir, uid, gid))
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
    except (RestoreError, _gate.GateError, OSError) as exc:
        reason = "%s: %s" % (exc.filename or "?", exc.strerror or exc) if isinstance(exc, OSError) else str(exc)
        left = _undo(target, target_before, tablespace_dir, tablespace_dir_before, plan["tablespaces"])
        raise RestoreError(_gate.undo_message(target, reason, left)) from None
    return result


# --------------------------------------------------------------------------------------------------------------
# Starting the restored server: pg_ctl as the server's user, wait for promotion, read what recovery did.
# --------------------------------------------------------------------------------------------------------------

Runner = t.Callable[[t.List[str]], t.Tuple[int, str, str]]
_REDO_RE = re.compile(r"redo starts at ([0-9A-F]+/[0-9A-F]+)")
_CONSISTENT_RE = re.compile(r"consistent recovery state reached at ([0-9A-F]+/[0-9A-F]+)")
LOG_NAME = "restore.log"


def server_bindir(server_version_num: int, bindir: t.Optional[str]) -> str:
    """The binaries of the backed-up major version (Debian's layout unless ``bindir`` is given); refused without pg_ctl."""
    chosen = bindir or "/usr/lib/postgresql/%d/bin" % (int(server_version_num) // 10000)
    if not os.access(os.path.join(chosen, "pg_ctl"), os.X_OK):
        raise RestoreError("%s/pg_ctl not found; the set is from PostgreSQL %s and must be started by the same major "
                           "version. Install it or set restore_bindir" % (chosen, server_version_num))
    return chosen


def log_tail(target: str, lines: int = 15) -> str:
    try:
        with open(os.path.join(target, LOG_NAME), "r", encoding="utf-8", errors="replace") as handle:
            return " | ".join(handle.read().splitlines()[-lines:])
    except OSError as exc:
        return "(no %s: %s)" % (LOG_NAME, exc.strerror)


def start_server(target: str, bindir: str, owner: str, port: int, socket_dir: str, timeout: int, run: Runner,
                 clock: t.Callable[[], float] = time.monotonic, pause: t.Callable[[float], None] = time.sleep
                 ) -> t.Dict[str, t.Any]:
    """Start the restored server as ``owner``, wait until recovery is over and it is promoted (or ``timeout``
    seconds), and report the new timeline, the current WAL position and, from its log, where redo started and
    where it became consistent. A failure says why with the last lines of the server's log."""
    as_owner = ["runuser", "-u", owner, "--"]
    rc, out, err = run(as_owner + [os.path.join(bindir, "pg_ctl"), "-D", target, "-l", os.path.join(target, LOG_NAME),
                                   "-w", "-t", str(timeout), "start"])
    if rc != 0:
        raise RestoreError("the restored server in %s did not start (pg_ctl rc %d: %s). Last lines of %s/%s: %s"
                           % (target, rc, (err or out).strip(), target, LOG_NAME, log_tail(target)))
    psql = as_owner + [os.path.join(bindir, "psql"), "-h", socket_dir, "-p", str(port), "-d", "postgres", "-XAt", "-c"]
    deadline = clock() + timeout
    while True:
        rc, out, err = run(psql + ["SELECT pg_is_in_recovery()"])
        if rc == 0 and out.strip() == "f":
            break
        if clock() >= deadline:
            raise RestoreError("the restored server in %s did not finish recovery within %d s (restore_timeout; last "
                               "answer: %s). Check that the WAL archive holds the segments the set needs. Last lines "
                               "of %s/%s: %s" % (target, timeout, (out or err).strip() or "none", target, LOG_NAME,
                                                 log_tail(target)))
        pause(0.2)
    rc, out, err = run(psql + ["SELECT pg_walfile_name(pg_current_wal_lsn()) || '|' || pg_current_wal_lsn()"])
    if rc != 0 or "|" not in out:
        raise RestoreError("the restored server in %s is up but its WAL position cannot be read (%s)" % (target, err.strip()))
    walfile, lsn = out.strip().split("|", 1)
    try:
        with open(os.path.join(target, LOG_NAME), "r", encoding="utf-8", errors="replace") as handle:
            log = handle.read()
    except OSError:
        log = ""
    redo, consistent = _REDO_RE.search(log), _CONSISTENT_RE.search(log)
    return {"timeline": int(walfile[:8], 16), "current_lsn": lsn, "walfile": walfile,
            # a log without these lines (other log settings) reports an empty value instead of failing the restore
            "first_lsn_replayed": redo.group(1) if redo else "", "consistent_at": consistent.group(1) if consistent else ""}
