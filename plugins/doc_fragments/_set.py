# -*- coding: utf-8 -*-
# Copyright: contributors to consistent.backup
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

# This doc fragment is PRIVATE to consistent.backup: it may change at any time. Do not use it from other
# collections or standalone modules.

from __future__ import annotations

# Each option is written once and composed into the fragments below; the rules behind them live in
# plugins/module_utils/_layout.py (set_path, the backup id rule). A module adds what is its own
# (required, default, a longer description) under the same option name.
_DEST = r'''
  dest:
    description:
      - Absolute path of the backup destination root (the job variable C(backup_dest)). The set is the directory
        C(<dest>/<backup_id>/); a relative path is refused.
    type: path
'''

_BACKUP_ID = r'''
  backup_id:
    description:
      - The backup's identity; the name of its set directory under the destination (and, for PostgreSQL, its
        backup label).
      - "1 to 128 characters from letters, digits and C(. _ : @ + -), not starting with C(.) (the collection's one
        backup id rule). An id that breaks it is refused at once, in check mode too, with RV(retryable=false)."
    type: str
'''

_RUN_ID = r'''
  run_id:
    description:
      - The identity of the job run this call belongs to (the playbooks pass C(backup_run_id), one per host and run).
        It tells this run's records (lock, recorded file list, session, guard) from those an earlier run left.
    type: str
'''


class ModuleDocFragment:
    """The options that name a backup set and the run that writes it."""

    # dest, backup_id and run_id: for modules that write into the set.
    DOCUMENTATION = 'options:' + _DEST + _BACKUP_ID + _RUN_ID

    # backup_id and run_id: for modules that act for a backup without writing the set's directory themselves.
    IDENTITY = 'options:' + _BACKUP_ID + _RUN_ID

    # backup_id only.
    BACKUP_ID = 'options:' + _BACKUP_ID
