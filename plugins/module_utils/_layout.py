# -*- coding: utf-8 -*-
# Copyright: contributors to consistent.backup
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""The backup set's names, defined once: the backup id rule, the set path, the host's runtime directory.

This is a private module_utils file of consistent.backup: it is not part of the collection's
public API and may change without notice.
"""

from __future__ import annotations

import os
import re

# One rule for every module: the id is a directory name, a PostgreSQL backup label and a key in the catalog,
# so it may hold neither a '/', a space nor a newline, and must not hide as a dot file.
BACKUP_ID_RULE = "1-128 characters from letters, digits and . _ : @ + - not starting with '.'"
_BACKUP_ID_RE = re.compile(r"^(?!\.)[A-Za-z0-9._:@+-]{1,128}\Z")

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


def default_runtime_dir() -> str:
    """/run/consistent-backup when we may create it (root), else /tmp/consistent-backup-<uid>.

    Deterministic, so that every module run of one backup finds the same directory.
    """
    if os.path.isdir(DEFAULT_RUNTIME_DIR) and os.access(DEFAULT_RUNTIME_DIR, os.W_OK | os.X_OK):
        return DEFAULT_RUNTIME_DIR
    if os.access("/run", os.W_OK | os.X_OK) and not os.path.exists(DEFAULT_RUNTIME_DIR):
        return DEFAULT_RUNTIME_DIR
    return "/tmp/consistent-backup-%d" % os.getuid()
