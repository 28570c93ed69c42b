#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: contributors to consistent.backup
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
module: backup_set
short_description: Open, lock and close a backup set; write report.json and the COMPLETE marker
version_added: 0.1.0
description:
  - Manages the life of one backup set C(<backup_dest>/<backup_id>/) on a disk medium.
  - O(state=open) creates the set directory and takes its C(LOCK) (created exclusively), so two runs never write
    one set. A set already marked C(COMPLETE) is refused. It records whose set it is in C(set.json) (engine, host,
    database, run id), before pre, so that even a set that never closes says whose it is.
  - Each attempt of pre, copy and post is recorded in the set's phase ledger C(phases.jsonl) by the module that makes
    it (M(consistent.backup.backup_command), M(consistent.backup.pg_backup_session), M(consistent.backup.aligned_copy),
    given their C(ledger) option), with a line when the attempt starts and one when it ends. O(state=closed) reads
    this run's attempts back - per phase the first start, the last end, the number of attempts, the last result and
    every failed attempt's message - so C(report.json) has the same shape for every engine. An attempt that started
    and never said how it ended (its module crashed or was killed) is a failed attempt.
  - O(state=closed) writes C(report.json) (phases with start and end times, attempts, results, C(quiesce_seconds),
    bytes, verdict) and then, only when the verdict is a success and the set's C(manifest.json) and every file in
    O(require) are present, writes C(COMPLETE) last. The lock is released in every case.
  - O(state=released) only drops this run's lock (for example after an interrupted run that will not write a report).
  - The module never deletes backup data.
options:
  dest:
    description:
      - Absolute path of the backup destination root (the job variable C(backup_dest)); the set is the directory
        C(<dest>/<backup_id>/). It must already exist (the media role checks it).
      - Defaults to O(job.dest); one of the two is required (so are O(backup_id) and O(run_id), or O(job)).
    type: path
  backup_id:
    description:
      - Defaults to O(job.backup_id).
    type: str
  run_id:
    description:
      - The identity of the job run that owns the set (the playbooks pass C(backup_run_id), one per host and run).
        Opening again with the same O(run_id) is not a change; O(state=closed) reads this run's attempts from the ledger.
      - Defaults to O(job.run_id).
    type: str
  state:
    description: What to do with the set.
    type: str
    choices: [open, closed, released]
    default: open
  engine:
    description: The database engine, recorded in the set's C(set.json) and in the report.
    type: str
    default: files
  host:
    description:
      - For O(state=open), the host whose set this is (the job variable C(backup_host), by default the inventory
        hostname), recorded in the set's C(set.json). The set reader's C(latest) and the Berkeley DB incremental's
        previous set are chosen among the sets of one host. Defaults to this machine's FQDN.
    type: str
  database:
    description:
      - For O(state=open), the database the engine declared (its key - a PostgreSQL data directory, a Berkeley DB home,
        the Btrieve files), recorded in the set's C(set.json), so that C(latest) is chosen among the sets of one
        database.
    type: str
  guard:
    description: For O(state=closed), the result of M(consistent.backup.backup_guard) O(consistent.backup.backup_guard#module:state=armed), for the report.
    type: dict
    default: {}
  guard_disarmed:
    description: For O(state=closed), the result of M(consistent.backup.backup_guard) O(consistent.backup.backup_guard#module:state=disarmed).
    type: dict
    default: {}
  disarm:
    description:
      - For O(state=closed), disarm this run's on-host guard first (what M(consistent.backup.backup_guard)
        O(consistent.backup.backup_guard#module:state=disarmed) does), and record the result as O(guard_disarmed) - one
        call instead of two after post. Not done when O(guard_disarmed) already holds a disarm's result.
    type: dict
    suboptions:
      engine:
        description: The guard's engine (as armed).
        type: str
        required: true
      database:
        description: The guard's database (as armed).
        type: str
        required: true
      runtime_dir:
        description: The guards' directory (as armed).
        type: path
  would:
    description:
      - For O(state=closed) in check mode, what the engine says pre, copy and post would do (its declaration), for
        RV(readiness).
    type: dict
    default: {}
  require:
    description:
      - For O(state=closed), files (relative to the set) that must exist before C(COMPLETE) is written,
        besides C(manifest.json); for example C(backup_label) for PostgreSQL.
    type: list
    elements: str
    default: []
  require_phases:
    description:
      - For O(state=closed), ledger phases besides pre, copy and post that must have an attempt that ended (ok or
        failed) before C(COMPLETE) may be written; for example C(verify), the Berkeley DB engine's proof.
      - A phase without an ended attempt (its module crashed before it could record one, or it never ran) fails the
        verdict with V(phases NAME did not run to the end).
    type: list
    elements: str
    default: []
  extra:
    description: For O(state=closed), more facts to record at the top level of C(report.json) (for example the start LSN).
    type: dict
    default: {}
  stale_lock_after:
    description:
      - Seconds after which another run's lock is taken as abandoned and replaced (reported in RV(broke_stale_lock)).
      - Leave unset to never break a lock by age. A lock whose owner (O(owner_pid) of that run) is provably gone is
        taken over whatever this says; a lock whose owner may still live is never broken silently.
    type: int
  owner_pid:
    description:
      - For O(state=open), the process that owns this run on the host, the run's guard (M(consistent.backup.backup_guard)'s
        RV(consistent.backup.backup_guard#module:pid)). The lock records it with the host, boot id and process start
        time; when that process is provably gone (same host, process gone or host rebooted), a later run takes the
        lock over and reports it in RV(broke_stale_lock). At least 1.
    type: int
extends_documentation_fragment:
  - consistent.backup._attributes
  - consistent.backup._attributes.actiongroup_all_job
  - consistent.backup._set
  - consistent.backup._job
attributes:
  check_mode:
    support: full
    details: In check mode O(state=open) reports whether the set could be opened (lock, C(COMPLETE)) and
      O(state=closed) returns the report it would write; nothing is created or written.
  diff_mode:
    support: none
    details: The set's files are reports and markers, not configuration; there is nothing useful to diff.
  idempotent:
    support: full
    details: Opening a set this run already holds is not a change; closing writes the report of what happened.
notes:
  - C(quiesce_seconds) is the time from the start of pre to the end of post, the database's time out of its
    normal state.
seealso:
  - module: consistent.backup.aligned_copy
author: consistent.backup developers (@consistent-backup)
'''

EXAMPLES = r'''
- name: Open the backup set and lock it for this run
  consistent.backup.backup_set:
    dest: /backup
    backup_id: db1-20261121T0200Z
    run_id: "{{ backup_run_id }}"
    state: open

- name: Write the report; COMPLETE only when every phase succeeded and the manifest is there
  consistent.backup.backup_set:
    dest: /backup
    backup_id: db1-20261121T0200Z
    run_id: "{{ backup_run_id }}"
    state: closed
    engine: postgresql
    require: [backup_label]
'''

RETURN = r'''
guard_disarmed:
  description: For O(state=closed), the disarm's result (O(disarm), or O(guard_disarmed) as given).
  returned: when state is closed
  type: dict
set_path:
  description: The set directory.
  returned: always
  type: str
  sample: /backup/db1-20261121T0200Z
lock:
  description: The lock this run holds (O(state=open)) or found.
  returned: when state is open
  type: dict
broke_stale_lock:
  description:
    - The abandoned lock that was taken over, with C(taken_over_because) (its owner is provably gone, or it is older
      than O(stale_lock_after)).
  returned: when state is open
  type: dict
identity:
  description: The set's C(set.json) (engine, host, database, run id), as written at open (null in check mode).
  returned: when state is open
  type: dict
  sample: {format: 1, backup_id: db1-20261121T0200Z, engine: bdb, host: db1, database: /srv/env, run_id: db1-1}
report:
  description: The report written to C(report.json) (or, in check mode, the one that would be).
  returned: when state is closed
  type: dict
verdict:
  description: C(success), C(failed), or C(ready) in check mode.
  returned: when state is closed
  type: str
  sample: success
complete:
  description: Whether C(COMPLETE) was written.
  returned: when state is closed
  type: bool
quiesce_seconds:
  description: Seconds from the start of pre to the end of post.
  returned: when state is closed
  type: float
  sample: 4.21
released:
  description: Whether this run's lock was removed.
  returned: when state is closed or released
  type: bool
summary:
  description: The run in a few facts (backup id, verdict, bytes, files, quiesce seconds, set, failure), for set_stats.
  returned: when state is closed
  type: dict
failure_message:
  description: The verdict of a failed run in one sentence, naming the set and report.json.
  returned: when state is closed
  type: str
readiness:
  description: In check mode, what the run would do, one line per step.
  returned: when state is closed in check mode
  type: list
  elements: str
'''


import json

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.consistent.backup.plugins.module_utils._guard import GuardDir, GuardError, describe_record, disarm
from ansible_collections.consistent.backup.plugins.module_utils._options import check_options
from ansible_collections.consistent.backup.plugins.module_utils._backup_set import (
    BackupSetError,
    build_report,
    close_set,
    guard_section,
    apply_job_defaults,
    job_argument_spec,
    medium_error_message,
    open_or_plan,
    read_lock,
    read_manifest,
    release_lock,
    set_path,
)


def summary(report: dict, path: str) -> dict:
    return {'backup_id': report['backup_id'], 'verdict': report['verdict'], 'bytes': report['bytes'], 'files': report['files'],
            'quiesce_seconds': report['quiesce_seconds'], 'set': path, 'failure': report['failure']}


def failure_message(report: dict, path: str) -> str:
    if report['verdict'] != 'failed':
        return ''
    return ('backup %s of %s FAILED and is not marked COMPLETE: %s. Details are in %s/report.json.'
            % (report['backup_id'], report['host'], report['failure'], path))


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            dest=dict(type='path'),
            backup_id=dict(type='str'),
            run_id=dict(type='str'),
            state=dict(type='str', default='open', choices=['open', 'closed', 'released']),
            engine=dict(type='str', default='files'),
            host=dict(type='str'),
            database=dict(type='str'),
            require=dict(type='list', elements='str', default=[]),
            require_phases=dict(type='list', elements='str', default=[]),
            extra=dict(type='dict', default={}),
            guard=dict(type='dict', default={}),
            guard_disarmed=dict(type='dict', default={}),
            would=dict(type='dict', default={}),
            stale_lock_after=dict(type='int'),
            owner_pid=dict(type='int'),
            disarm=dict(type='dict', options=dict(engine=dict(type='str', required=True),
                                                  database=dict(type='str', required=True), runtime_dir=dict(type='path'))),
            **job_argument_spec()
        ),
        required_one_of=[('dest', 'job'), ('backup_id', 'job'), ('run_id', 'job')],
        supports_check_mode=True,
    )
    # no process has pid 0
    check_options(module, minimum=dict(owner_pid=1), units=dict(stale_lock_after="seconds"))
    params = module.params
    apply_job_defaults(module)  # the job handle's set and run, unless the call names its own
    path = None
    try:
        path = set_path(params['dest'], params['backup_id'])
        if params['state'] == 'open':
            result = open_or_plan(params['dest'], params['backup_id'], params['run_id'], params['stale_lock_after'],
                                  params['owner_pid'], params['engine'], params['host'], params['database'], module.check_mode)
            warning = result.pop('warning', None)
            if warning:
                module.warn(warning)
            module.exit_json(**result)
        if params['state'] == 'released':
            released = False if module.check_mode else release_lock(path, params['run_id'])
            module.exit_json(changed=released, set_path=path, released=released)
        if params['disarm'] and not params['guard_disarmed']:
            params['guard_disarmed'] = disarm(GuardDir(params['disarm']['runtime_dir'], params['disarm']['engine'],
                                                       params['disarm']['database']), params['run_id'], module.check_mode)
            if params['guard_disarmed'].get('fired'):
                module.warn(describe_record(params['guard_disarmed']['fired']))
        guard = guard_section(params['guard'], params['guard_disarmed'])
        if module.check_mode:
            manifest, _problem = read_manifest(path)
            report = build_report(params['backup_id'], params['engine'], {}, manifest, None, check_mode=True)
            report['guard'] = guard
            readiness = ['the medium %s passed its checks; set %s could be opened' % (params['dest'], path),
                         'the guard would hold: %s' % (params['guard'].get('post_what') or 'nothing')]
            readiness += ['%s would: %s' % (name, what) for name, what in params['would'].items()]
            if guard['previous']:
                readiness.append('an earlier guard: %s' % json.dumps(guard['previous'], sort_keys=True))
            if guard['took_over']:
                readiness.append('a dead guard would be taken over: %s' % json.dumps(guard['took_over'], sort_keys=True))
            module.exit_json(changed=False, set_path=path, report=report, verdict=report['verdict'], complete=False,
                             quiesce_seconds=report['quiesce_seconds'], released=False, readiness=readiness,
                             summary=summary(report, path), failure_message=failure_message(report, path),
                             guard_disarmed=params['guard_disarmed'])
        held_before = read_lock(path)
        report = close_set(path, params['backup_id'], params['run_id'], params['engine'], {},
                           None, params['require'], dict(params['extra'], guard=guard),
                           require_phases=params['require_phases'])
        module.exit_json(changed=True, set_path=path, report=report, verdict=report['verdict'],
                         complete=report['complete'], quiesce_seconds=report['quiesce_seconds'],
                         released=bool(held_before and held_before.get('run_id') == params['run_id']),
                         summary=summary(report, path), failure_message=failure_message(report, path),
                         guard_disarmed=params['guard_disarmed'])
    except GuardError as exc:
        module.fail_json(msg=str(exc), retryable=exc.retryable)
    except BackupSetError as exc:
        held = read_lock(path) if params['state'] == 'open' and path else None
        module.fail_json(msg=str(exc), **({'set_path': path, 'lock': held} if held else {}))
    except OSError as exc:
        module.fail_json(msg=medium_error_message(params['dest'], exc, params['backup_id']))


if __name__ == '__main__':
    main()
