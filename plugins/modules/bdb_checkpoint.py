#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: contributors to consistent.backup
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
---
module: bdb_checkpoint
short_description: Checkpoint a Berkeley DB environment and describe what a backup of it must copy
version_added: 0.2.0
description:
  - Checkpoints a transactional Berkeley DB environment with C(db_checkpoint -1) when log records were written since
    its last checkpoint (C(db_stat -l), "Log bytes written since last checkpoint"), or always with O(force).
  - Returns what a backup needs, read from the environment itself - the checkpoint LSN before and after, the data files,
    all log files, the logs no longer needed for recovery, the page size of each database file and the largest one,
    and the DB_CONFIG directories.
  - The data files are every regular file of the data directories (C(set_data_dir), C(add_data_dir); the home when
    DB_CONFIG names none), plus what C(db_archive -s -a) lists, de-duplicated. C(db_archive -s) lists only databases
    opened during the current logs, so a database untouched since then is still copied. Region files (C(__db.*)),
    logs and C(DB_CONFIG) are not data files.
  - The page size of each database file is read from its header (bytes 12-24 - magic, version, page size), in little
    and then big endian, so a set copied between machines of either byte order is read the same way.
  - The utilities are found as C(db5.3_X), then C(db_X) on the PATH (or with O(utility_prefix), or in O(bindir)), and
    always run with C(LC_ALL=C).
  - With O(backup_dest) it also returns RV(previous_set), the newest C(COMPLETE) set of this environment (and of
    O(set_host)) there (the base an incremental backup builds on), and with O(plan) the backup's RV(plan) - full or
    incremental, decided before pre with the whole chain resolved.
  - With O(archive_set) it removes, after the checkpoint, exactly the logs C(db_archive -a) says are no longer needed
    AND that the given C(COMPLETE), verified set holds with the same size and SHA-256 - never C(db_archive -d).
  - "Refuses with a message that says what to do: a home that is not an environment, an environment without
    transactions or logging (no log files), missing utilities, permission denied."
options:
  home:
    description:
      - The environment's home directory (the one given to C(DB_ENV->open), holding C(DB_CONFIG) and C(__db.*)).
    type: path
    required: true
  force:
    description:
      - Write a checkpoint even when nothing was logged since the last one.
    type: bool
    default: false
  backup_dest:
    description:
      - A backup destination root; when given, RV(previous_set) describes the newest C(COMPLETE) set of this environment
        in it. Read-only.
    type: path
  set_host:
    description:
      - With O(backup_dest), only sets of this host (recorded in the set's C(set.json) when it was opened - the job
        variable C(backup_host), by default the inventory hostname) are candidates for RV(previous_set), so two hosts
        with the same home on one destination never build on each other's sets. Leave out to consider every host.
    type: str
  plan:
    description:
      - With O(backup_dest), decide the backup's mode before pre and return it as RV(plan). An incremental builds on
        RV(previous_set); it becomes a full set, with the reason in C(full_reason) of RV(plan), when that set's chain is
        broken (a set of it gone, not C(COMPLETE), or of another host or environment), when the logs from that set's
        last log on are not all in the environment, every O(plan.full_every) runs, and after a bulk load.
      - An incremental with no set to build on is refused (take a full set first).
    type: dict
    suboptions:
      backup_id:
        description: This backup's id (the base set of a full set is itself).
        type: str
        required: true
      mode:
        description: The requested mode (the job variable C(backup_bdb_mode)).
        type: str
        choices: [hot, offline, incremental]
        required: true
      full_every:
        description: A full set every this many runs (C(backup_bdb_full_every)); at least 1.
        type: int
        default: 7
      bulk_loaded:
        description: A bulk (non-logged) load ran since the last set (C(backup_bdb_bulk_loaded)); forces a full set.
        type: bool
        default: false
  archive_set:
    description:
      - Path of a C(COMPLETE) set of this environment whose C(report.json) records a passed verification. After the
        checkpoint, the archivable logs that this set holds with the same size and SHA-256 are removed from the
        environment; the others are kept and listed in RV(kept_logs) with the reason.
    type: path
extends_documentation_fragment:
  - consistent.backup._bdb
  - consistent.backup._job
  - consistent.backup._attributes
  - consistent.backup._attributes.actiongroup_all_job
attributes:
  check_mode:
    support: full
    details: >-
      Reports whether a checkpoint is due and what would be archived, and writes nothing, not even the environment's
      shared-memory region files (C(__db.*)) - the utilities read through a shadow home of symlinks without the
      region files, so they do not join the environment; whether a checkpoint is due is then read from the last log
      file (records still in a live writer's log buffer are not seen until they are flushed).
  diff_mode:
    support: none
    details: The LSNs before and after describe the change.
  idempotent:
    support: full
    details: A second run without writes in between finds no log bytes since the checkpoint and returns changed=false.
notes:
  - Run it as the environment's owner (C(become_user)); the utilities join the environment's regions.
seealso:
  - module: consistent.backup.bdb_verify
  - module: consistent.backup.aligned_copy
author: consistent.backup developers (@consistent-backup)
'''

EXAMPLES = r'''
- name: Checkpoint the environment and learn what to copy
  consistent.backup.bdb_checkpoint:
    home: /srv/inventory
  register: bdb

- name: Copy its data files, page-aligned (logs follow in a second phase)
  consistent.backup.aligned_copy:
    dest: /backup
    backup_id: "{{ backup_id }}"
    engine: bdb
    block_size: "{{ bdb.block_size }}"
    sources: "{{ bdb.data_files | map('regex_replace', '^(.*)$', '/srv/inventory/\\1') | list }}"

- name: Is a checkpoint due? (writes nothing)
  consistent.backup.bdb_checkpoint:
    home: /srv/inventory
    utility_prefix: db_
  check_mode: true
  register: due

- name: Remove the logs that a verified set holds
  consistent.backup.bdb_checkpoint:
    home: /srv/inventory
    archive_set: /backup/db1-20261122T020000Z
'''

RETURN = r'''
home:
  description: The environment's home, normalised.
  returned: success
  type: str
  sample: /srv/inventory
checkpoint_due:
  description: Whether log records were written since the last checkpoint (or none was ever written).
  returned: success
  type: bool
  sample: true
checkpoint_lsn_before:
  description: The last checkpoint LSN (C(file/offset)) before this call; null when the environment never had one.
  returned: success
  type: str
  sample: 9/1221
checkpoint_lsn_after:
  description: The last checkpoint LSN after this call (in check mode the same as before).
  returned: success
  type: str
  sample: 9/1313
log_bytes_since_checkpoint:
  description: Log bytes written since the last checkpoint, before this call (null when unknown).
  returned: success
  type: int
  sample: 509565
data_files:
  description:
    - The data files to copy (every file of the data directories and db_archive -s), relative to the home; a file of
      a data directory outside the home by its absolute path.
  returned: success
  type: list
  elements: str
  sample: [data/locations.db, data/parts.db]
unlisted_data_files:
  description: Data files that db_archive -s does not list (not opened during the current logs), copied all the same.
  returned: success
  type: list
  elements: str
  sample: [data/history.db]
log_files:
  description: Every log file, in log order (after the checkpoint), relative to the home (absolute outside it).
  returned: success
  type: list
  elements: str
  sample: [logs/log.0000000008, logs/log.0000000009]
archivable_logs:
  description: The logs no longer needed for normal recovery (db_archive -a), relative to the home (absolute outside it).
  returned: success
  type: list
  elements: str
  sample: [logs/log.0000000008]
page_sizes:
  description: The page size of each database file, read from its header.
  returned: success
  type: dict
  sample: {data/parts.db: 4096, data/locations.db: 8192}
block_size:
  description: The largest page size (the copy's block size); 4096 when there is no database file yet.
  returned: success
  type: int
  sample: 8192
data_dirs:
  description: The data directories (DB_CONFIG set_data_dir, add_data_dir), relative to the home, or absolute outside it.
  returned: success
  type: list
  elements: str
  sample: [data]
log_dir:
  description: The log directory (DB_CONFIG set_lg_dir), relative to the home, or absolute outside it.
  returned: success
  type: str
  sample: logs
config_file:
  description: C(DB_CONFIG) when the home has one, else null.
  returned: success
  type: str
  sample: DB_CONFIG
copy_sources:
  description:
    - Each file of O(home) to copy (DB_CONFIG, data files, logs) by its name in RV(data_files), RV(log_files) and
      RV(config_file) - C(path), where it is, and C(dest), where it goes in a set (C(env/<path relative to the home>),
      or C(env/_outside_home/<absolute path>) for a directory outside the home) - as aligned_copy sources.
  returned: success
  type: dict
  sample: {data/parts.db: {path: /srv/inventory/data/parts.db, dest: env/data/parts.db},
           /srv/db-logs/log.0000000009: {path: /srv/db-logs/log.0000000009, dest: env/_outside_home/srv/db-logs/log.0000000009}}
utilities:
  description: The utilities used, by name.
  returned: success
  type: dict
  sample: {checkpoint: /usr/bin/db5.3_checkpoint, stat: /usr/bin/db5.3_stat}
plan:
  description:
    - With O(plan), the backup's mode, decided before pre - C(requested_mode), C(mode) (hot, offline or incremental),
      C(full_reason) (why a requested incremental is a full set, else null), C(previous_set) (the set an incremental
      builds on), C(base_set) (its full set), C(runs_since_full), C(incremental_from) (the number of the first log an
      incremental copies) and C(chain) (the sets it builds on, the full set first).
  returned: when plan is given
  type: dict
  sample: {requested_mode: incremental, mode: incremental, full_reason: null, previous_set: db1-a, base_set: db1-a,
           runs_since_full: 1, incremental_from: 9, chain: [db1-a]}
previous_set:
  description:
    - With O(backup_dest), the newest C(COMPLETE) set of this environment (its recorded facts - backup_id, mode,
      base_set, runs_since_full, checkpoint_lsn, first_log, last_log - and whether its verification passed), else null.
  returned: success
  type: dict
  sample: {backup_id: db1-20261122T020000Z, mode: hot, last_log: log.0000000009, runs_since_full: 0, verified: true}
archived_logs:
  description: With O(archive_set), the logs removed (in check mode, the logs that would be removed).
  returned: success
  type: list
  elements: str
  sample: [logs/log.0000000001]
kept_logs:
  description: With O(archive_set), archivable logs kept, each with why.
  returned: success
  type: list
  elements: dict
  sample: [{log: logs/log.0000000002, why: not in the set}]
retryable:
  description: Whether running the same task again may succeed (false for refusals a retry cannot fix).
  returned: failure
  type: bool
  sample: false
'''

import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.consistent.backup.plugins.module_utils._options import check_options
from ansible_collections.consistent.backup.plugins.module_utils._backup_set import PhaseLedger, job_ledger
from ansible_collections.consistent.backup.plugins.module_utils._bdb import (
    BdbError, archivable_in_set, module_environment, plan_backup, previous_set, utility_argument_spec)


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            home=dict(type='path', required=True),
            force=dict(type='bool', default=False),
            backup_dest=dict(type='path'),
            archive_set=dict(type='path'),
            set_host=dict(type='str'),
            plan=dict(type='dict', options=dict(
                backup_id=dict(type='str', required=True),
                mode=dict(type='str', required=True, choices=['hot', 'offline', 'incremental']),
                full_every=dict(type='int', default=7),
                bulk_loaded=dict(type='bool', default=False))),
            **utility_argument_spec()
        ),
        supports_check_mode=True,
    )
    PhaseLedger(module, job_ledger(module), facts=lambda result: {
        'checkpoint_lsn_before': result.get('checkpoint_lsn_before'), 'checkpoint_lsn_after': result.get('checkpoint_lsn_after')})
    check_options(module, minimum={"plan.full_every": 1})  # a full set every 0 runs means nothing
    try:
        env = module_environment(module, module.params['home'])
        env.check()
        if module.check_mode:
            with env.reading_aside():  # not even the region files are written
                before = env.describe()
        else:
            before = env.describe()
        do_checkpoint = module.params['force'] or before['checkpoint_due']
        if do_checkpoint and not module.check_mode:
            env.checkpoint()
            after = env.describe()
        else:
            after = before
        result = dict(after)
        result.update(checkpoint_due=before['checkpoint_due'], log_bytes_since_checkpoint=before['log_bytes_since_checkpoint'],
                      checkpoint_lsn_before=before['checkpoint_lsn'], checkpoint_lsn_after=result.pop('checkpoint_lsn'),
                      utilities=env.utilities, previous_set=None)
        changed = bool(do_checkpoint) if module.check_mode else after['checkpoint_lsn'] != before['checkpoint_lsn']
        if module.params['backup_dest']:
            result['previous_set'] = previous_set(module.params['backup_dest'], env.home, module.params['set_host'])
            plan = module.params['plan']
            if plan:
                result['plan'] = plan_backup(module.params['backup_dest'], env.home, module.params['set_host'],
                                             plan['backup_id'], plan['mode'], plan['full_every'], plan['bulk_loaded'],
                                             before['log_files'], result['previous_set'])
        if module.params['archive_set']:
            remove, kept = archivable_in_set(after, module.params['archive_set'])
            if remove and not module.check_mode:
                for rel in remove:
                    os.unlink(os.path.join(env.home, rel))
            result.update(archived_logs=remove, kept_logs=kept)
            changed = changed or bool(remove)
    except BdbError as exc:
        module.fail_json(msg=str(exc), retryable=exc.retryable, **exc.facts)
    except PermissionError as exc:
        module.fail_json(msg='environment %s: permission denied (%s); run as the environment\'s owner (become_user)'
                         % (module.params['home'], exc), retryable=False)
    module.exit_json(changed=changed, **result)


if __name__ == '__main__':
    main()
