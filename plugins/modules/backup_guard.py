#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: contributors to consistent.backup
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
module: backup_guard
short_description: Arm an on-host guard that runs post when the controller's post does not come; one backup per database
version_added: 0.1.0
description:
  - The playbook's C(always) section is the controller's promise that post runs; it is void when C(ansible-playbook)
    is killed (an AWX cancel sends SIGTERM), the host becomes unreachable or the controller machine dies. This
    module makes the database host keep the same promise.
  - O(state=armed), run just before pre, takes the database lock and starts a detached guard process on the host
    holding the engine's post (O(post)) and two bounds. The copy renews a lease (the file RV(lease_file), through
    M(consistent.backup.aligned_copy)'s O(consistent.backup.aligned_copy#module:lease_file)) while it makes progress;
    when nobody renewed it for O(lease_seconds), or when O(max_quiesce) seconds have passed since arming, the guard
    runs post itself with the job's retries and records what it did. The operator does not have to guess how long
    the copy takes; O(max_quiesce) is the hard maximum.
  - Pre cannot outrun the guard. Each engine's pre runs its quiescing call in the guard's pre window (the
    C(pre_window) option of M(consistent.backup.backup_command), M(consistent.backup.btrieve_continuous) and
    M(consistent.backup.pg_backup_session)). The call is bounded (C(backup_pre_timeout)), renews the lease while it
    runs within that bound, and checks the guard before and after it quiesces. If the guard fired meanwhile, pre
    releases what it quiesced and fails. A guard that fired while pre's call ran stays (state
    C(fired_waiting_for_pre)) until pre says it ended or pre's bound has passed, and then runs post once more unless
    pre released the database itself.
  - O(state=disarmed), run after the controller's post, stops the guard without running post.
  - The guard's record is kept in C(<runtime_dir>/guards/<key>/state.json) (directory 0700, files 0600). The next
    O(state=armed) for the same database reports it in RV(previous) and moves it to C(history/); a check-mode run
    reports it without moving it. O(state=status) only reads.
  - One backup per database at a time on a host. A second run while another run's guard is alive fails at once,
    naming that run, and does not disturb it. A guard whose process is provably gone (this host, and the process
    does not exist or the host rebooted) is taken over - its post is run first, then this run's guard is armed -
    and the takeover is reported in RV(took_over).
  - A run never takes another run's quiesced state as its own pre. When the earlier guard's post failed (the
    database may still be quiesced by that run), O(state=armed) runs this run's O(post) first and fails when that
    fails too; RV(released_previous) says what it did.
options:
  state:
    description: C(armed) before pre, C(disarmed) after the controller's post, C(status) to read what is recorded.
    type: str
    choices: [armed, disarmed, status]
    default: armed
  engine:
    description: The database engine (C(files), C(postgresql), ...); part of the lock's key.
    type: str
    required: true
  database:
    description:
      - What identifies the database on this host, for the lock (for example the sorted data paths for the files
        engine, C(host:port) for PostgreSQL). Two runs with the same O(engine) and O(database) exclude each other.
    type: str
    required: true
  run_id:
    description: Identity of the run; arming again with the same run while its guard lives is not a change.
    type: str
    required: true
  post:
    description:
      - What the guard does when it has to run post. Exactly one key.
      - C(command) - the operator's post command (argv list, or a string split without a shell); it must succeed
        when the database is already open.
      - C(socket) - one request to a service on a Unix socket on this host, one JSON line each way (the PostgreSQL
        role states its post so, as M(consistent.backup.pg_backup_session) returns it in RV(consistent.backup.pg_backup_session#module:guard_post),
        asking its holder to abort). Members - C(path) (absolute, required), C(request) (a dict, required),
        C(reason_key) (the request member that receives why the guard runs post), C(success) (the answer's members
        that mean success, default C({})), C(absent_ok) (nobody listening on C(path) means the service already ended,
        which is success - post is idempotent; default V(false)), C(timeout) (seconds to wait for the answer, default
        10), C(exit_wait) (seconds the listening process, known from the socket itself, may take to exit after the
        request; one that does not answer within C(timeout) is sent SIGTERM; default 0, not waited for),
        C(answer_field) (the dotted member of the answer the record quotes) and C(what) (how the record describes
        the post). Any other member is refused.
      - C(none) - nothing to undo.
      - Required with O(state=armed).
    type: dict
  post_secret_argv:
    description:
      - Arguments appended to a C(command) post's argv only when the guard runs it, for a secured engine's login
        (Btrieve - C(-UID<name> -PWD<word> -DB<name>); a secured engine refuses C(butil -endbu) without it).
      - The guard keeps them in its process's memory only (the guard is a fork of this module; they are not on its
        command line nor in any file); its C(state.json), its history and every result show them nowhere, and the post's
        output is masked for them (C(********)).
      - A dead guard's post, taken over by the next run, runs with the next run's O(post_secret_argv).
    type: list
    elements: str
    default: []
  lease_seconds:
    description:
      - The guard runs post when the lease was not renewed for this many seconds. Pre's quiescing call (within its
        bound) and the copy renew it at least once a second while they make progress; between tasks nothing renews
        it, so it must be longer than the retry delay plus a task's start-up. C(0) turns the lease off (only
        O(max_quiesce) bounds the run).
    type: int
    default: 120
  max_quiesce:
    description: The hard maximum, in seconds, that the database may stay out of its normal state (C(backup_max_quiesce)); at least 1.
    type: int
    default: 21600
  retries:
    description: Attempts of post when the guard runs it (the job's C(backup_retries)); at least 1.
    type: int
    default: 3
  retry_delay:
    description: Seconds between those attempts.
    type: int
    default: 5
  post_timeout:
    description: Seconds one attempt of a post command may take before it is killed; at least 1.
    type: int
    default: 600
  runtime_dir:
    description:
      - Directory for the guards; defaults to C(/run/consistent-backup) as root, else C(/tmp/consistent-backup-<uid>).
    type: path
  open_set:
    description:
      - With O(state=armed) and O(job), also open the job's backup set in the same call, owned by the guard just armed
        (what M(consistent.backup.backup_set) O(consistent.backup.backup_set#module:state=open) does - the set's lock
        names the guard's process, C(set.json) says whose set it is). One call instead of two on the job's critical path.
      - When the set cannot be opened (a C(COMPLETE) set, another run's live lock), the guard just armed is disarmed
        before the module fails, so nothing stays armed for a run that never reaches pre.
    type: dict
    suboptions:
      engine:
        description: The engine, recorded in C(set.json) and the report.
        type: str
        required: true
      host:
        description: The host whose set this is (the job variable C(backup_host)).
        type: str
      database:
        description: The engine's database key, recorded in C(set.json). Defaults to O(database).
        type: str
      stale_lock_after:
        description: Seconds after which another run's lock is taken as abandoned (unset - never).
        type: int
extends_documentation_fragment:
  - consistent.backup._attributes
  - consistent.backup._attributes.actiongroup_all_job
  - consistent.backup._set.identity
  - consistent.backup._job
attributes:
  check_mode:
    support: full
    details: In check mode nothing is started or written; O(state=armed) reports what an earlier guard did, whether
      another run holds the database (a failure, as it would be for real) and what post the guard would hold.
  diff_mode:
    support: none
  idempotent:
    support: full
    details: Arming again with the same O(run_id) while its guard lives, or disarming a guard that is gone, is not a change.
notes:
  - The guard is a process on the database host, so it also fires when the controller cannot reach the host any more.
  - When the guard has fired, a copy still running fails at once (its data is not consistent), a pre not yet
    quiescing refuses to, and the controller's post still runs (post is idempotent).
seealso:
  - module: consistent.backup.aligned_copy
  - module: consistent.backup.pg_backup_session
author: consistent.backup developers (@consistent-backup)
'''

EXAMPLES = r'''
- name: Arm the guard just before pre (files engine)
  consistent.backup.backup_guard:
    state: armed
    engine: files
    database: /srv/appdb/data
    backup_id: db1-20261122T0200Z
    run_id: "{{ backup_run_id }}"
    post:
      command: [/usr/local/sbin/appdb, resume-writes]
    lease_seconds: 120
    max_quiesce: 3600
  register: backup_guard

- name: Disarm it after the controller's post
  consistent.backup.backup_guard:
    state: disarmed
    engine: files
    database: /srv/appdb/data
    run_id: "{{ backup_run_id }}"
'''

RETURN = r'''
set:
  description:
    - With O(open_set), the opened set as M(consistent.backup.backup_set) returns it - C(set_path), C(lock),
      C(identity), C(broke_stale_lock), C(changed).
  returned: when open_set is given with state armed
  type: dict
guard_dir:
  description: The guard's directory on the host.
  returned: always
  type: str
  sample: /run/consistent-backup/guards/files-3f1c0a9e2b7d4c5a6e8f
lease_file:
  description: The file the copy renews (pass it to aligned_copy's O(consistent.backup.aligned_copy#module:lease_file)).
  returned: when state is armed
  type: str
pid:
  description: The guard process.
  returned: when state is armed and not in check mode
  type: int
post_what:
  description: What the guard will do if it has to run post.
  returned: when state is armed
  type: str
  sample: run /usr/local/sbin/appdb resume-writes
previous:
  description:
    - What the guard of an earlier run did that nobody has reported yet (it ran post because the controller's post
      did not come) - run, backup, when, why, and each post attempt with its return code and output tails.
  returned: when state is armed or status
  type: dict
released_previous:
  description:
    - When the earlier run's guard had run post and that post failed, the result of this run's O(post), run before
      arming - C({ok, attempts, what}).
  returned: when state is armed and the earlier guard's post had failed
  type: dict
took_over:
  description: An earlier run's guard that was dead; its post was run before this run's guard was armed.
  returned: when state is armed
  type: dict
fired:
  description:
    - When disarming, the record of this run's guard if it had already run post (the lease ran out). When it fired
      while pre's call ran, also C(pre_running), C(pre_end) (how pre ended) and C(post_again_ok) (the post it ran once
      more, if it had to).
  returned: when state is disarmed
  type: dict
disarmed:
  description: Whether the guard exited on the disarm request.
  returned: when state is disarmed
  type: bool
current:
  description: The recorded guard (state, run, times).
  returned: when state is status
  type: dict
'''

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.consistent.backup.plugins.module_utils._options import check_options
from ansible_collections.consistent.backup.plugins.module_utils._guard import (
    GuardDir,
    GuardError,
    arm,
    describe_record,
    disarm,
    status,
)
from ansible_collections.consistent.backup.plugins.module_utils._backup_set import (
    BackupSetError, job_argument_spec, medium_error_message, open_or_plan)
from ansible_collections.consistent.backup.plugins.module_utils._layout import backup_id_problem


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            state=dict(type='str', default='armed', choices=['armed', 'disarmed', 'status']),
            engine=dict(type='str', required=True),
            database=dict(type='str', required=True),
            backup_id=dict(type='str'),
            run_id=dict(type='str', required=True),
            post=dict(type='dict'),
            post_secret_argv=dict(type='list', elements='str', default=[], no_log=True),
            lease_seconds=dict(type='int', default=120),
            max_quiesce=dict(type='int', default=21600),
            retries=dict(type='int', default=3),
            retry_delay=dict(type='int', default=5),
            post_timeout=dict(type='int', default=600),
            runtime_dir=dict(type='path'),
            open_set=dict(type='dict', options=dict(engine=dict(type='str', required=True), host=dict(type='str'),
                                                    database=dict(type='str'), stale_lock_after=dict(type='int'))),
            **job_argument_spec()
        ),
        required_if=[('state', 'armed', ('post', 'backup_id'))],
        supports_check_mode=True,
    )
    # A guard needs at least one attempt of post and a bound on quiescing and on each post; 0 turns the lease off.
    check_options(module, minimum=dict(max_quiesce=1, retries=1, post_timeout=1),
                  units=dict(lease_seconds="seconds", max_quiesce="seconds", retry_delay="seconds", post_timeout="seconds"))
    params = module.params
    if params['state'] == 'armed':
        problem = backup_id_problem(params['backup_id'])
        if problem:
            module.fail_json(msg=problem, retryable=False)
        if params['lease_seconds'] and params['lease_seconds'] <= params['retry_delay']:
            module.fail_json(msg='lease_seconds (%d) must be longer than retry_delay (%d): between two attempts nothing renews '
                             'the lease, so the guard would run post while the run waits; raise backup_guard_lease'
                             % (params['lease_seconds'], params['retry_delay']), retryable=False)
    gdir = GuardDir(params['runtime_dir'], params['engine'], params['database'])
    try:
        if params['state'] == 'armed':
            spec = {key: params[key] for key in ('backup_id', 'run_id', 'post', 'lease_seconds', 'max_quiesce', 'retries',
                                                 'retry_delay', 'post_timeout')}
            result = arm(gdir, spec, module.check_mode, params['post_secret_argv'])
            for record in (result.get('took_over'), result.get('previous')):
                if record and record.get('state'):
                    module.warn(describe_record(record))
            if params['open_set']:
                result['set'] = open_guarded_set(module, gdir, result)
            module.exit_json(**result)
        if params['state'] == 'disarmed':
            result = disarm(gdir, params['run_id'], module.check_mode)
            if result.get('fired'):
                module.warn(describe_record(result['fired']))
            module.exit_json(**result)
        module.exit_json(**status(gdir))
    except GuardError as exc:
        module.fail_json(msg=str(exc), retryable=exc.retryable, **exc.facts)
    except OSError as exc:
        module.fail_json(msg='guard for database %s in %s: %s (%s); check that the runtime directory is a local, writable '
                         'directory of this user' % (params['database'], gdir.path, exc.strerror or exc,
                                                     getattr(exc, 'filename', None) or gdir.path), retryable=False)


def open_guarded_set(module: AnsibleModule, gdir: GuardDir, armed: dict) -> dict:
    """The job's set, opened and owned by the guard just armed; a refusal disarms that guard first."""
    params, job, opening = module.params, module.params['job'], module.params['open_set']
    if not job:
        disarm(gdir, params['run_id'], module.check_mode)
        module.fail_json(msg='open_set needs job (dest, backup_id, run_id), the set to open; backup.yml sets it with '
                         'module_defaults', retryable=False)
    try:
        opened = open_or_plan(job['dest'], job['backup_id'], job['run_id'], opening['stale_lock_after'], armed.get('pid'),
                              opening['engine'], opening['host'], opening['database'] or params['database'],
                              module.check_mode)
    except (BackupSetError, OSError) as exc:
        disarmed = disarm(gdir, params['run_id'], module.check_mode)
        reason = str(exc) if isinstance(exc, BackupSetError) else medium_error_message(job['dest'], exc, job['backup_id'])
        module.fail_json(msg='%s. The guard armed for it was disarmed (%s)' % (
            reason, 'it had not fired' if not disarmed.get('fired') else describe_record(disarmed['fired'])),
            retryable=False, guard_disarmed=disarmed)
    warning = opened.pop('warning', None)
    if warning:
        module.warn(warning)
    return opened


if __name__ == '__main__':
    main()
