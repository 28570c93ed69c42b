# -*- coding: utf-8 -*-
# Copyright: contributors to consistent.backup
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""The backup set's names, defined once: the backup id rule, the set's file names and path, the one UTC
timestamp format, the host's runtime directory.

A set on the medium::

    <backup_dest>/<backup_id>/
        data/           DATA_DIR: the copied files
        manifest.json   MANIFEST_NAME: every copied file with its size and SHA-256
        report.json     REPORT_NAME: phases, attempts, results, verdict
        set.json        IDENTITY_NAME: whose set it is (engine, host, database), written when the set is opened
        LOCK            LOCK_NAME: the run that writes the set (removed when it closes the set)
        COMPLETE        COMPLETE_NAME: written last, only when the set is whole; a restore refuses a set without it

This is a private module_utils file of consistent.backup: it is not part of the collection's
public API and may change without notice.
"""

from __future__ import annotations

import datetime
import os
import re
import typing as t

# One rule for every module: the id is a directory name, a PostgreSQL backup label and a key in the catalog,
# so it may hold neither a '/', a space nor a newline, and must not hide as a dot file.
BACKUP_ID_RULE = "1-128 characters from letters, digits and . _ : @ + - not starting with '.'"
_BACKUP_ID_RE = re.compile(r"^(?!\.)[A-Za-z0-9._:@+-]{1,128}\Z")

# The set's file names (relative to <backup_dest>/<backup_id>/).
DATA_DIR = "data"
MANIFEST_NAME = "manifest.json"
REPORT_NAME = "report.json"
LOCK_NAME = "LOCK"
IDENTITY_NAME = "set.json"
COMPLETE_NAME = "COMPLETE"

# Where the host keeps the state of detached processes (PostgreSQL holders, guards) and database locks.
DEFAULT_RUNTIME_DIR = "/run/consistent-backup"


class InvalidBackupId(ValueError):
    """A backup id that breaks the rule; the message names the option, the rule and the value found."""


def backup_id_problem(backup_id: object) -> str:
    """'' when ``backup_id`` follows the rule, else what is wrong with it."""
    if not isinstance(backup_id, str) or not _BACKUP_ID_RE.match(backup_id):
        return "backup_id must be %s; found %r. Choose another backup_id (for example db1-20261122T0200Z)" % (
            BACKUP_ID_RULE, backup_id)
    return ""


def check_backup_id(backup_id: object) -> str:
    """Return ``backup_id`` when it follows the rule; raise InvalidBackupId otherwise."""
    problem = backup_id_problem(backup_id)
    if problem:
        raise InvalidBackupId(problem)
    return backup_id  # type: ignore[return-value]


class InvalidSetPath(ValueError):
    """A backup destination that cannot hold sets (not absolute); the message names the option and the value."""


def set_path(dest: object, backup_id: object, option: str = "dest") -> str:
    """``<dest>/<backup_id>``: the one place a set's directory is derived.

    Raises InvalidSetPath when ``dest`` is not an absolute path and InvalidBackupId when ``backup_id`` breaks
    the rule (both are ValueError), so no module writes a set relative to its working directory or outside dest.
    ``option`` is the name of the calling module's destination option, for the message.
    """
    if not isinstance(dest, str) or not os.path.isabs(dest):
        raise InvalidSetPath("%s must be an absolute path; found %r. Give the full path of the backup directory" % (option, dest))
    return os.path.join(dest, check_backup_id(backup_id))


def utc_iso(moment: t.Union[None, float, int, datetime.datetime] = None) -> str:
    """ISO 8601 UTC with microseconds and a Z suffix (``2026-11-22T02:00:00.000000Z``): every recorded time.

    ``moment`` is now (None), seconds since the epoch, or a datetime (a naive one is taken as UTC).
    """
    if moment is None:
        moment = datetime.datetime.now(datetime.timezone.utc)
    elif isinstance(moment, (int, float)):
        moment = datetime.datetime.fromtimestamp(moment, datetime.timezone.utc)
    elif moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.timezone.utc)
    return moment.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_utc_iso(text: object) -> t.Optional[datetime.datetime]:
    """The inverse of utc_iso() (also accepts other ISO 8601 forms with an offset or Z); None for an empty value."""
    if not text:
        return None
    moment = datetime.datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=datetime.timezone.utc)


def default_runtime_dir() -> str:
    """/run/consistent-backup when we may create it (root), else /tmp/consistent-backup-<uid>.

    Deterministic, so that every module run of one backup finds the same directory.
    """
    if os.path.isdir(DEFAULT_RUNTIME_DIR) and os.access(DEFAULT_RUNTIME_DIR, os.W_OK | os.X_OK):
        return DEFAULT_RUNTIME_DIR
    if os.access("/run", os.W_OK | os.X_OK) and not os.path.exists(DEFAULT_RUNTIME_DIR):
        return DEFAULT_RUNTIME_DIR
    return "/tmp/consistent-backup-%d" % os.getuid()
