# -*- coding: utf-8 -*-
# Copyright: contributors to consistent.backup
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""The one reader, merger and writer of a backup set's ``manifest.json``.

This is a private module_utils file of consistent.backup: it is not part of the collection's
public API and may change without notice.

A backup set is ``<backup_dest>/<backup_id>/``; its manifest sits at ``<set>/manifest.json``::

    {"format": 1, "backup_id": ..., "engine": ..., "host": ..., "block_size": ...,
     "created": ISO 8601 UTC, "updated": ISO 8601 UTC,
     "files": [{"path", "type", "size", "sha256", "mtime", "mtime_ns", "mode", "phase", "target"}],
     "vanished": [paths], "facts": {...},
     "changed_during_copy": [{"path", "source", "size_before", "size_after", "bytes_read", "mtime_before", "mtime_after",
                              "mtime_ns_before", "mtime_ns_after"}]}

``changed_during_copy`` is only present when a source changed while it was read and the engine accepted it
(``changes: warn``: recovery repairs it from the log), or when such a change failed the copy that wrote it.

Several calls add to one set (data files first, logs later, pg_control last): entries are merged by
``path``, a new entry replacing an old one, and ``files`` is kept sorted by (phase, path); a path copied
again drops its old ``vanished`` and ``changed_during_copy`` records. The file is
always replaced atomically, so a reader sees the previous manifest or the new one, never a torn one.
Size, sha256 and mtime are copied exactly as the copy engine measured them: other code builds
PostgreSQL's ``backup_manifest`` from them.
"""

from __future__ import annotations

import json
import os
import platform
import socket
import typing as t

from ansible_collections.consistent.backup.plugins.module_utils._fsutil import atomic_write
from ansible_collections.consistent.backup.plugins.module_utils._layout import MANIFEST_NAME, utc_iso

__all__ = ["MANIFEST_NAME", "MANIFEST_FORMAT", "manifest_path", "load_manifest", "entries_by_path", "merge",
           "merge_and_write", "merge_and_write_changed", "dumps", "empty_manifest", "default_host"]

MANIFEST_FORMAT = 1

# Keys of ``meta`` that describe the whole set (a value of None leaves the stored value alone).
_META_KEYS = ("backup_id", "engine", "host", "block_size")


def manifest_path(set_path: str) -> str:
    """Return the path of the manifest of the backup set directory ``set_path``."""
    return os.path.join(set_path, MANIFEST_NAME)


def default_host() -> str:
    """The name this host records in manifests: its FQDN, else its node name."""
    try:
        name = socket.getfqdn()
    except OSError:
        name = ""
    return name or platform.node()


def empty_manifest() -> t.Dict[str, t.Any]:
    """A manifest with no files, the starting point of a new set."""
    return {"format": MANIFEST_FORMAT, "files": [], "vanished": [], "facts": {}}


def load_manifest(set_path: str) -> t.Dict[str, t.Any]:
    """Read ``<set_path>/manifest.json``; a set without one yields ``empty_manifest()``.

    Raises ValueError naming the file when it is not a JSON object with a ``files`` list, so a
    caller never silently overwrites a manifest it could not read.
    """
    path = manifest_path(set_path)
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
    except FileNotFoundError:
        return empty_manifest()
    try:
        data = json.loads(raw.decode("utf-8"))
    except ValueError as exc:
        raise ValueError(
            "manifest %s is not valid JSON (%s); restore it from the medium's catalog or remove the set and back up again"
            % (path, exc)
        ) from exc
    if not isinstance(data, dict) or not isinstance(data.get("files", []), list):
        raise ValueError(
            "manifest %s is not a consistent.backup manifest (expected an object with a 'files' list); "
            "choose another backup_id or remove the set" % path
        )
    data.setdefault("format", MANIFEST_FORMAT)
    data.setdefault("files", [])
    data.setdefault("vanished", [])
    data.setdefault("facts", {})
    return data


def entries_by_path(manifest: t.Dict[str, t.Any]) -> t.Dict[str, t.Dict[str, t.Any]]:
    """Index a manifest's ``files`` by path (the last entry of a path wins)."""
    return dict((entry["path"], entry) for entry in manifest.get("files", []))


def _sort_key(entry: t.Dict[str, t.Any]) -> t.Tuple[int, str]:
    return (int(entry.get("phase", 0)), entry["path"])


def merge(
    manifest: t.Dict[str, t.Any],
    entries: t.Iterable[t.Dict[str, t.Any]],
    vanished: t.Iterable[str] = (),
    meta: t.Optional[t.Dict[str, t.Any]] = None,
    changed: t.Iterable[t.Dict[str, t.Any]] = (),
) -> t.Dict[str, t.Any]:
    """Return a new manifest: ``manifest`` with ``entries`` merged by path, ``vanished`` added, ``meta`` applied.

    ``meta`` may hold backup_id, engine, host, block_size (set when not None) and facts (merged key by
    key into the stored facts). ``changed`` (records of files that changed while they were read) replace
    the records of the paths this call copied. ``created`` and ``updated`` are not touched here.
    """
    merged = dict(manifest)
    files = entries_by_path(manifest)
    new_paths = set()
    for entry in entries:
        files[entry["path"]] = dict(entry)
        new_paths.add(entry["path"])
    merged["files"] = sorted(files.values(), key=_sort_key)
    # A path copied in this call is no longer missing; a path that vanished now stays listed.
    still_vanished = set(p for p in manifest.get("vanished", []) if p not in new_paths)
    still_vanished.update(vanished)
    merged["vanished"] = sorted(still_vanished)
    changed_by_path = dict((c["path"], c) for c in manifest.get("changed_during_copy", []) if c.get("path") not in new_paths)
    changed_by_path.update((c["path"], dict(c)) for c in changed)
    if changed_by_path:
        merged["changed_during_copy"] = [changed_by_path[p] for p in sorted(changed_by_path)]
    else:
        merged.pop("changed_during_copy", None)
    meta = meta or {}
    for key in _META_KEYS:
        if meta.get(key) is not None:
            merged[key] = meta[key]
    facts = dict(manifest.get("facts") or {})
    facts.update(meta.get("facts") or {})
    merged["facts"] = facts
    merged["format"] = MANIFEST_FORMAT
    return merged


def dumps(manifest: t.Dict[str, t.Any]) -> bytes:
    """Serialize a manifest the one way it is stored: sorted keys, one top-level key per line, one entry per line.

    A list of objects (``files``, ``changed_during_copy``) has one compact object per line, so a manifest of a large
    cluster stays readable and diffable, and it is written by json's C encoder (``indent`` would fall back to the
    pure-Python one, a tenth of a second for a few thousand files). Final newline.
    """
    keys = sorted(manifest)
    lines = ["{"]
    for number, key in enumerate(keys):
        value = manifest[key]
        comma = "," if number < len(keys) - 1 else ""
        if isinstance(value, list) and value and all(isinstance(item, dict) for item in value):
            lines.append("  %s: [" % json.dumps(key))
            last = len(value) - 1
            lines.extend("    %s%s" % (json.dumps(item, sort_keys=True), "," if index < last else "") for index, item in enumerate(value))
            lines.append("  ]" + comma)
        else:
            lines.append("  %s: %s%s" % (json.dumps(key), json.dumps(value, sort_keys=True), comma))
    lines.append("}")
    return ("\n".join(lines) + "\n").encode("utf-8")


def _without_updated(manifest: t.Dict[str, t.Any]) -> t.Dict[str, t.Any]:
    return dict((k, v) for k, v in manifest.items() if k != "updated")


def merge_and_write(
    set_path: str,
    entries: t.Iterable[t.Dict[str, t.Any]],
    vanished: t.Iterable[str] = (),
    meta: t.Optional[t.Dict[str, t.Any]] = None,
    owner: t.Optional[t.Tuple[int, int]] = None,
    changed: t.Iterable[t.Dict[str, t.Any]] = (),
) -> t.Dict[str, t.Any]:
    """Merge ``entries``/``vanished``/``meta``/``changed`` into the set's manifest and write it atomically.

    The file is left untouched (not even ``updated`` moves) when the merge changes nothing, so an
    idempotent run leaves the manifest byte for byte as it was. Returns the merged manifest; the
    key ``changed`` is not part of it (use ``merge_and_write_changed`` to learn whether it was written).
    """
    return merge_and_write_changed(set_path, entries, vanished, meta, owner, changed)[0]


def merge_and_write_changed(
    set_path: str,
    entries: t.Iterable[t.Dict[str, t.Any]],
    vanished: t.Iterable[str] = (),
    meta: t.Optional[t.Dict[str, t.Any]] = None,
    owner: t.Optional[t.Tuple[int, int]] = None,
    changed: t.Iterable[t.Dict[str, t.Any]] = (),
) -> t.Tuple[t.Dict[str, t.Any], bool]:
    """Like ``merge_and_write`` and also tell whether the file was (re)written."""
    current = load_manifest(set_path)
    existed = os.path.exists(manifest_path(set_path))
    meta = dict(meta or {})
    if not meta.get("host") and not current.get("host"):
        meta["host"] = default_host()
    merged = merge(current, entries, vanished, meta, changed)
    if existed and _without_updated(merged) == _without_updated(current):
        return current, False
    now = utc_iso()
    merged.setdefault("created", now)
    merged["updated"] = now
    atomic_write(manifest_path(set_path), dumps(merged), mode=0o600, owner=owner)
    return merged, True
