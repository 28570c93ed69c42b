# -*- coding: utf-8 -*-
# Copyright: contributors to consistent.backup
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""Writer of PostgreSQL's own ``backup_manifest`` for a file-level copy of a data directory.

This is a private module_utils file of consistent.backup: it is not part of the collection's
public API and may change without notice.

The layout follows PostgreSQL's src/backend/backup/backup_manifest.c byte for byte, so that the
``pg_verifybackup`` of the server's version verifies the copy (``pg_verifybackup --wal-directory=<archive>
<set>/data/pgdata``)::

    { "PostgreSQL-Backup-Manifest-Version": 2,
    "System-Identifier": 7312345678901234567,          <- version 2 (PostgreSQL 17+) only
    "Files": [
    { "Path": "backup_label", "Size": 226, "Last-Modified": "2024-05-01 10:00:00 GMT", "Checksum-Algorithm": "SHA256", "Checksum": "<hex>" },
    ...
    ],
    "WAL-Ranges": [
    { "Timeline": 1, "Start-LSN": "0/2000028", "End-LSN": "0/2000100" }
    ],
    "Manifest-Checksum": "<sha256 of every byte before this last line>"}

Paths are relative to the data directory; a path that is not valid UTF-8 is written as ``Encoded-Path`` (hex
of its bytes) as PostgreSQL does. pg_verifybackup ignores ``backup_manifest``, ``pg_wal``,
``postgresql.auto.conf``, ``recovery.signal`` and ``standby.signal`` on disk (pg_verifybackup.c), and reports
any other file on disk that the manifest does not list, so the manifest lists every copied file.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import typing as t

from ansible_collections.consistent.backup.plugins.module_utils._layout import DATA_DIR, parse_utc_iso

MANIFEST_NAME = "backup_manifest"
# Files the server itself adds to a backup: the label and map written by the stop, and the manifest itself.
SERVER_WRITTEN = ("backup_label", "tablespace_map", MANIFEST_NAME)


class ManifestFile(t.NamedTuple):
    """One file of the copy: path relative to the data directory, size in bytes, mtime (epoch), SHA-256 hex."""

    path: str
    size: int
    mtime: float
    sha256: str


def manifest_version(server_version_num: int) -> int:
    """Manifest format of a server: 1 for PostgreSQL 13-16, 2 (with System-Identifier) from 17.

    Raises ValueError before 13, which has no backup manifests (and no pg_verifybackup).
    """
    if server_version_num < 130000:
        raise ValueError(
            "PostgreSQL %d has no backup_manifest format (manifests and pg_verifybackup appeared in 13)" % server_version_num
        )
    return 2 if server_version_num >= 170000 else 1


def format_lsn(value: int) -> str:
    """An LSN the way PostgreSQL prints it (``%X/%X``)."""
    return "%X/%X" % (value >> 32, value & 0xFFFFFFFF)


def format_last_modified(mtime: float) -> str:
    """``Last-Modified`` value: GMT, second precision, as pg_strftime("%Y-%m-%d %H:%M:%S %Z", pg_gmtime())."""
    moment = datetime.datetime.fromtimestamp(int(mtime), tz=datetime.timezone.utc)
    return moment.strftime("%Y-%m-%d %H:%M:%S GMT")


def path_field(path: str) -> str:
    """``"Path": "<json>"`` for a UTF-8 path, else ``"Encoded-Path": "<hex>"`` (the bytes of the file name).

    ``path`` is a str as Python gives file names (undecodable bytes as surrogate escapes); json.dumps with
    ensure_ascii=False escapes exactly what PostgreSQL's escape_json escapes (quote, backslash, control
    characters as \\b \\f \\n \\r \\t or \\u00XX).
    """
    raw = os.fsencode(path)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return '"Encoded-Path": "%s"' % raw.hex()
    return '"Path": %s' % json.dumps(text, ensure_ascii=False)


def file_line(entry: ManifestFile) -> str:
    return '{ %s, "Size": %d, "Last-Modified": "%s", "Checksum-Algorithm": "SHA256", "Checksum": "%s" }' % (
        path_field(entry.path), entry.size, format_last_modified(entry.mtime), entry.sha256.lower())


def build_manifest(files: t.Iterable[ManifestFile], server_version_num: int, system_identifier: t.Optional[int],
                   timeline: int, start_lsn: int, end_lsn: int) -> bytes:
    """The bytes of a backup_manifest listing ``files`` (sorted by path) and one WAL range on ``timeline``.

    A backup taken on a primary starts and ends on the same timeline, so one range is all there is (the
    server writes one range per timeline only for a standby promoted during the backup).
    """
    version = manifest_version(server_version_num)
    if version >= 2 and system_identifier is None:
        raise ValueError("a version 2 backup_manifest (PostgreSQL 17+) needs the system identifier of the cluster")
    text = '{ "PostgreSQL-Backup-Manifest-Version": %d,\n' % version
    if version >= 2:
        # pg_control_system() shows the unsigned identifier as a signed bigint; the manifest wants it unsigned.
        text += '"System-Identifier": %d,\n' % (int(system_identifier) % (1 << 64))
    text += '"Files": ['
    lines = [file_line(entry) for entry in sorted(files, key=lambda e: os.fsencode(e.path))]
    if lines:
        text += "\n" + ",\n".join(lines)
    text += "\n],\n"
    text += '"WAL-Ranges": [\n'
    text += '{ "Timeline": %d, "Start-LSN": "%s", "End-LSN": "%s" }' % (timeline, format_lsn(start_lsn), format_lsn(end_lsn))
    text += "\n],\n"
    body = text.encode("utf-8")
    checksum = hashlib.sha256(body).hexdigest()
    return body + ('"Manifest-Checksum": "%s"}\n' % checksum).encode("ascii")


def verify_checksum(manifest: bytes) -> bool:
    """True when the Manifest-Checksum (last line) matches the bytes before it, as pg_verifybackup checks."""
    if not manifest.endswith(b"\n") or manifest.count(b"\n") < 2:
        return False
    penultimate = manifest.rindex(b"\n", 0, len(manifest) - 1)
    last_line = manifest[penultimate + 1:].decode("utf-8", "replace")
    prefix = '"Manifest-Checksum": "'
    if not last_line.startswith(prefix):
        return False
    return last_line[len(prefix):len(prefix) + 64] == hashlib.sha256(manifest[:penultimate + 1]).hexdigest()


def _entry_mtime(entry: t.Dict[str, t.Any], on_disk: str) -> float:
    mtime = entry.get("mtime")
    if isinstance(mtime, (int, float)) and not isinstance(mtime, bool):
        return float(mtime)
    if isinstance(mtime, str) and mtime:
        try:
            return parse_utc_iso(mtime).timestamp()  # type: ignore[union-attr]
        except ValueError:
            pass
    try:
        return os.stat(on_disk).st_mtime
    except OSError:
        return 0.0


def copy_entries(set_manifest: t.Dict[str, t.Any], set_path: str, data_prefix: str) -> t.List[ManifestFile]:
    """The files of the copy of the data directory: entries of the set's manifest.json under ``<data_prefix>/``.

    Entry paths are relative to ``<set>/data/`` (``pgdata/base/1/1259``); the result's paths are relative to
    the data directory (``base/1/1259``). Only regular files count (directories are implied by the paths, and
    pg_verifybackup follows the pg_tblspc links). The server-written files are left out: the caller adds the
    label and map it wrote, and the manifest does not list itself.
    """
    prefix = data_prefix.strip("/") + "/"
    data_root = os.path.join(set_path, DATA_DIR)
    result = []
    for entry in set_manifest.get("files", []):
        path = entry.get("path", "")
        if entry.get("type", "file") != "file" or not path.startswith(prefix):
            continue
        relative = path[len(prefix):]
        if relative in SERVER_WRITTEN:
            continue
        if entry.get("sha256") is None or entry.get("size") is None:
            raise ValueError(
                "manifest.json of %s lists %s without size or sha256; the copy must checksum every file (copy it again)"
                % (set_path, path))
        result.append(ManifestFile(relative, int(entry["size"]), _entry_mtime(entry, os.path.join(data_root, path)),
                                   str(entry["sha256"])))
    return result


def file_entry(directory: str, name: str) -> ManifestFile:
    """Measure a file the server wrote (backup_label, tablespace_map) in the copy directory."""
    path = os.path.join(directory, name)
    with open(path, "rb") as handle:
        data = handle.read()
    return ManifestFile(name, len(data), os.stat(path).st_mtime, hashlib.sha256(data).hexdigest())
