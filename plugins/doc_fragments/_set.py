# -*- coding: utf-8 -*-
# Copyright: contributors to consistent.backup
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

# This doc fragment is PRIVATE to consistent.backup: it may change at any time. Do not use it from other
# collections or standalone modules.

from __future__ import annotations


class ModuleDocFragment:
    """The options that name a backup set and the run that writes it.

    The rules behind them live in plugins/module_utils/_layout.py (set_path, the backup id rule). A module adds what
    is its own (required, default, a longer description) under the same option name. The fragments below are
    literal strings (ansible-test reads them without running Python), so IDENTITY and BACKUP_ID repeat
    DOCUMENTATION's text: change all three together.
    """

    # dest, backup_id and run_id: for modules that write into the set.
    DOCUMENTATION = r'''
options:
  dest:
    description:
      - Absolute path of the backup destination root (the job variable C(backup_dest)). The set is the directory
        C(<dest>/<backup_id>/); a relative path is refused.
    type: path
  backup_id:
    description:
      - The backup's identity; the name of its set directory under the destination (and, for PostgreSQL, its
        backup label).
      - "1 to 128 characters from letters, digits and C(. _ : @ + -), not starting with C(.) (the collection's one
        backup id rule). An id that breaks it is refused at once, in check mode too, and the failure says that a
        retry cannot fix it (C(retryable=false))."
    type: str
  run_id:
    description:
      - The identity of the job run this call belongs to (the playbooks pass C(backup_run_id), one per host and run).
        It tells this run's records (lock, recorded file list, session, guard) from those an earlier run left.
    type: str
'''

    # backup_id and run_id: for modules that act for a backup without writing the set's directory themselves.
    IDENTITY = r'''
options:
  backup_id:
    description:
      - The backup's identity; the name of its set directory under the destination (and, for PostgreSQL, its
        backup label).
      - "1 to 128 characters from letters, digits and C(. _ : @ + -), not starting with C(.) (the collection's one
        backup id rule). An id that breaks it is refused at once, in check mode too, and the failure says that a
        retry cannot fix it (C(retryable=false))."
    type: str
  run_id:
    description:
      - The identity of the job run this call belongs to (the playbooks pass C(backup_run_id), one per host and run).
        It tells this run's records (lock, recorded file list, session, guard) from those an earlier run left.
    type: str
'''

    # backup_id only.
    BACKUP_ID = r'''
options:
  backup_id:
    description:
      - The backup's identity; the name of its set directory under the destination (and, for PostgreSQL, its
        backup label).
      - "1 to 128 characters from letters, digits and C(. _ : @ + -), not starting with C(.) (the collection's one
        backup id rule). An id that breaks it is refused at once, in check mode too, and the failure says that a
        retry cannot fix it (C(retryable=false))."
    type: str
'''

    # set_host and set_database: for modules that pick a set by backup_id=latest (restores, a backup's previous set).
    SELECT = r'''
options:
  set_host:
    description:
      - "With C(backup_id=latest), only sets of this host are candidates (the host recorded in the set's C(set.json) when
        it was opened: the job variable C(backup_host), by default the inventory hostname). A named backup id is
        taken whatever its host."
      - Leave out to consider every host; C(latest) then refuses, naming them, when the destination holds sets of
        more than one host for the engine.
    type: str
  set_database:
    description:
      - With C(backup_id=latest), only sets of this database are candidates (the database key the engine declared
        when the set was opened, recorded in C(set.json)).
      - Leave out to consider every database; C(latest) then refuses, naming them, when the destination holds sets of
        more than one database of this engine and host.
    type: str
'''
