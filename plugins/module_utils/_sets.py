# -*- coding: utf-8 -*-
# Copyright: contributors to consistent.backup
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""The set reader: which sets a backup destination holds, whose they are, and which one a restore means.

Every restore (PostgreSQL, Berkeley DB, Btrieve), the Berkeley DB incremental's choice of the set it builds on,
and later the catalog pick sets here, so ``latest`` means one thing everywhere: the newest COMPLETE set (by the
time its COMPLETE marker was written) of one engine, one host and one database.

A set's identity is written once, when the set is opened (``set.json``: engine, host, database, run id; see
_backup_set.open_set). A set written before set.json existed is read from its manifest (engine, host); its
database is then unknown and it is never taken as ``latest`` of a named database.

This is a private module_utils file of consistent.backup: it is not part of the collection's
public API and may change without notice.
"""

from __future__ import annotations

import os
import typing as t

from ansible_collections.consistent.backup.plugins.module_utils._fsutil import read_json_object
from ansible_collections.consistent.backup.plugins.module_utils._layout import (
    COMPLETE_NAME, IDENTITY_NAME, MANIFEST_NAME, backup_id_problem, set_path)

# The literal a restore gives for "the newest COMPLETE set".
LATEST = "latest"


class SetError(ValueError):
    """No set, or not the set the caller asked for; the message names the destination, the filter and what to do."""


def identity_document(backup_id: str, engine: str, host: str, database: t.Optional[str], run_id: str) -> t.Dict[str, t.Any]:
    """What set.json holds (written by _backup_set.open_set, read by read_set)."""
    return {"format": 1, "backup_id": backup_id, "engine": engine, "host": host, "database": database, "run_id": run_id}


def read_identity(set_dir: str) -> t.Optional[t.Dict[str, t.Any]]:
    """The set's set.json, or None when it was never written (or cannot be read)."""
    return read_json_object(os.path.join(set_dir, IDENTITY_NAME))


def read_set(dest: str, backup_id: str) -> t.Dict[str, t.Any]:
    """One set's summary: backup_id, path, engine, host, database, complete, completed_at (COMPLETE's mtime)."""
    path = os.path.join(dest, backup_id)
    ident = read_identity(path)
    if ident is None:
        manifest = read_json_object(os.path.join(path, MANIFEST_NAME)) or {}
        ident = {"engine": manifest.get("engine"), "host": manifest.get("host"), "database": None}
    try:
        completed_at: t.Optional[float] = os.stat(os.path.join(path, COMPLETE_NAME)).st_mtime
    except OSError:
        completed_at = None
    return {"backup_id": backup_id, "path": path, "engine": ident.get("engine"), "host": ident.get("host"),
            "database": ident.get("database"), "complete": completed_at is not None, "completed_at": completed_at}


def list_sets(dest: str) -> t.List[t.Dict[str, t.Any]]:
    """Every set directory of ``dest`` whose name follows the backup id rule (dot names, such as a set being
    removed, are out of sight), oldest COMPLETE first, then the sets that are not COMPLETE by name."""
    if not os.path.isdir(dest):
        raise SetError("backup_dest %s is not a directory; give the backup destination that holds the sets" % dest)
    sets = [read_set(dest, name) for name in sorted(os.listdir(dest))
            if not backup_id_problem(name) and os.path.isdir(os.path.join(dest, name))]
    return sorted(sets, key=lambda info: (not info["complete"], info["completed_at"] or 0, info["backup_id"]))


def _describe(engine: str, host: t.Optional[str], database: t.Optional[str]) -> str:
    return "%s set%s%s" % (engine, " of host %s" % host if host else "", " of database %s" % database if database else "")


def select_latest(dest: str, engine: str, host: t.Optional[str] = None, database: t.Optional[str] = None,
                  exclude: t.Sequence[str] = (), database_option: str = "database",
                  required: bool = True) -> t.Optional[t.Dict[str, t.Any]]:
    """The newest COMPLETE set of ``engine`` (and ``host``, ``database`` when given) in ``dest``.

    When no database is given and the matching sets belong to more than one database (or host), the choice is not
    the reader's to make: it refuses and names them, and the caller's option (``database_option``) that settles it.
    None when nothing matches and not ``required``."""
    matches = [info for info in list_sets(dest)
               if info["complete"] and info["engine"] == engine and info["backup_id"] not in exclude
               and (host is None or info["host"] == host) and (database is None or info["database"] == database)]
    if not matches:
        if not required:
            return None
        raise SetError("no COMPLETE %s in %s; run playbooks/backup.yml with backup_engine %s first, or give backup_id"
                       % (_describe(engine, host, database), dest, engine))
    for key, option in (("host", "host"), ("database", database_option)):
        given = host if key == "host" else database
        found = sorted({str(info[key]) for info in matches})
        if given is None and len(found) > 1:
            raise SetError("%s holds COMPLETE %s sets of %d %ss (%s); latest would pick one of them by time alone. "
                           "Say which one with %s" % (dest, engine, len(found), key, ", ".join(found), option))
    return matches[-1]


def resolve(dest: str, backup_id: str, engine: str, host: t.Optional[str] = None, database: t.Optional[str] = None,
            database_option: str = "database", require_complete: bool = True) -> t.Dict[str, t.Any]:
    """The set a restore means: ``latest`` (select_latest), or the named set, which must follow the backup id rule,
    exist, be COMPLETE (unless ``require_complete`` is false: a backup's own proof before its COMPLETE) and be a set
    of ``engine``. A named set is taken whatever its host: naming it is the choice."""
    if backup_id == LATEST:
        return t.cast(t.Dict[str, t.Any], select_latest(dest, engine, host, database, database_option=database_option))
    problem = backup_id_problem(backup_id)
    if problem:
        raise SetError(problem + ", or latest for the newest COMPLETE set")
    try:
        path = set_path(dest, backup_id)
    except ValueError as exc:
        raise SetError(str(exc).replace("dest must", "backup_dest must")) from None
    if not os.path.isdir(path):
        raise SetError("backup set %s does not exist; check backup_dest and backup_id (or use backup_id=latest)" % path)
    info = read_set(dest, backup_id)
    if require_complete and not info["complete"]:
        raise SetError("backup set %s is not marked COMPLETE (its copy, metadata or manifest did not all reach the medium); "
                       "refusing to restore it. Restore an earlier COMPLETE set" % path)
    if info["engine"] not in (None, engine):
        raise SetError("backup set %s is a %s set, expected a %s set; give the backup_id of a %s set, or the engine that "
                       "wrote it" % (path, info["engine"], engine, engine))
    return info
