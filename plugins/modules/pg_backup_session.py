#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: contributors to consistent.backup
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
---
module: pg_backup_session
short_description: Start and stop a PostgreSQL non-exclusive (low-level) backup held open by a detached process
version_added: 0.1.0
description:
  - A PostgreSQL non-exclusive backup belongs to the database session that started it; when that connection closes
    before the stop, the server aborts the backup. An Ansible task ends when its module returns, so
    O(state=started) runs a preflight, then forks a detached holder process that opens the one connection,
    calls C(pg_backup_start) (C(pg_start_backup) before PostgreSQL 15) and keeps the session open until a later
    O(state=stopped) task asks it, over a Unix socket in a private directory, to stop the backup.
  - O(state=stopped) calls C(pg_backup_stop) without waiting for the archive (C(pg_stop_backup) before 15) so the server leaves
    backup mode at once, then waits, bounded by O(archive_timeout), until the WAL segment holding the stop LSN is
    archived. It reads the segment's archive status file (C(pg_wal/archive_status/<segment>.ready) or C(.done)) when
    the role may (superuser, or EXECUTE on C(pg_stat_file) or C(pg_ls_archive_statusdir), which C(pg_monitor) has);
    otherwise it compares segment names in C(pg_stat_archiver.last_archived_wal) by timeline and segment number,
    ignoring C(.backup) and C(.history) files (see RV(archive_check)). It writes C(backup_label) and C(tablespace_map) byte-exact as the server returned
    them into the backup set and/or a label store, and PostgreSQL's own C(backup_manifest) next to the copy of the data
    directory, so that C(pg_verifybackup) can verify the copy.
  - A holder that is gone before the stop (killed, O(max_duration) reached, connection lost) means the server ended
    backup mode; O(state=stopped) then fails and says the copied files are not a usable backup.
  - The preflight refuses a standby, C(wal_level=minimal), a role that may not run the backup functions, a connection
    through a transaction pooler, and (with O(require_archiving)) missing or failing WAL archiving.
  - Supports PostgreSQL 12 and later (tested with 15 and 18).
options:
  state:
    description:
      - V(started) runs the preflight and starts the backup in a new holder process; the module returns once the
        server has started the backup (or failed to).
      - V(stopped) stops the backup, waits for its WAL to be archived and writes the label files.
      - V(aborted) ends a running backup without a label; the holder closes its connection and the server leaves
        backup mode.
      - V(status) reports the session of O(backup_id), or all sessions in O(runtime_dir) when O(backup_id) is not set.
    type: str
    choices: [started, stopped, aborted, status]
    default: status
  backup_id:
    description:
      - The backup's identity and its PostgreSQL backup label. Also names the session directory, the label store
        directory and (by convention) the backup set C(<backup_dest>/<backup_id>). Required for V(started),
        V(stopped) and V(aborted).
      - "The collection's one backup id rule applies (1 to 128 characters from letters, digits and C(. _ : @ + -), not
        starting with C(.)); an id that breaks it is refused at once, in check mode too, with RV(retryable=false)."
      - With the default O(runtime_dir) the holder's socket path C(<runtime_dir>/<backup_id>/holder.sock) must fit the
        107 bytes of a Unix socket path; V(started) refuses a longer one and says how long the id may be.
  run_id:
    description:
      - The identity of the job run that owns the session (the playbooks pass C(backup_run_id)). V(started) records it
        in the session; V(started) refuses a running session of the same O(backup_id) recorded for another run.
      - V(stopped) and V(aborted) of a session recorded for another run (for example an earlier backup that used the
        same O(backup_id), when this run's pre was refused) change nothing, write no file, succeed and say so in RV(msg).
      - Not set means any session of O(backup_id) is this run's (the behaviour without run ids).
    type: str
  login_db:
    description: Database to connect to (any database will do). Not set means libpq's default (C(PGDATABASE)).
  connect_params:
    description:
      - Further libpq connection parameters, for example C(sslmode), C(service), C(connect_timeout), C(keepalives_idle).
        The named options take precedence.
      - The holder adds TCP keepalives (C(keepalives=1), C(keepalives_idle=30), C(keepalives_interval=10),
        C(keepalives_count=6)) and C(connect_timeout=10) unless given here, and always sets C(application_name) to
        C(consistent.backup:<backup_id>).
  fast:
    description: Request an immediate checkpoint at the start (V(false) spreads it over C(checkpoint_completion_target)).
    type: bool
    default: true
  max_duration:
    description:
      - Seconds the holder keeps the backup open at most. When they pass, it closes its connection (the server aborts
        the backup) and records the session as C(expired); a later O(state=stopped) fails. At least 1.
    type: int
    default: 21600
  keepalive_interval:
    description:
      - Seconds between the holder's C(SELECT pg_backend_pid()) statements, which keep the session from looking idle
        and prove it still talks to the same backend (a pooler moving the session aborts the backup). At least 1.
    type: int
    default: 10
  archive_timeout:
    description:
      - Seconds O(state=stopped) waits for the WAL segment holding the stop LSN to be archived. When it passes, the
        task fails naming the segment and no label is written.
    type: int
    default: 300
  wait_for_archive:
    description:
      - Wait for the backup's last WAL segment to be archived before writing the label. Skipped (with a warning)
        when the server's C(archive_mode) is off.
    type: bool
    default: true
  require_archiving:
    description:
      - The preflight of V(started) demands C(archive_mode) on or always, C(archive_command) or C(archive_library) set,
        and C(pg_stat_archiver) not failing (its last failure is not newer than its last success).
      - With V(false) these findings are warnings.
    type: bool
    default: true
  set_path:
    description:
      - The backup set directory C(<backup_dest>/<backup_id>); it must exist at O(state=stopped).
      - O(state=stopped) writes C(backup_label) (and C(tablespace_map) when the server returned one with content, like
        C(pg_basebackup)) atomically into O(set_path) and into C(<set_path>/data/<data_prefix>/), then writes
        PostgreSQL's C(backup_manifest) into C(<set_path>/data/<data_prefix>/) from the entries of the set's
        C(manifest.json) under C(<data_prefix>/) plus the label files.
      - Defaults to the set of O(job) (C(<job.dest>/<job.backup_id>)).
    type: path
  data_prefix:
    description: Directory under C(<set_path>/data/) that holds the copy of the data directory.
    type: str
    default: pgdata
  label_dest:
    description:
      - A label store. O(state=stopped) writes C(<label_dest>/<backup_id>/backup_label), C(tablespace_map) (when
        there is one) and C(label.json) (stop and start LSN, timeline, stop WAL file, system identifier, O(set_path)).
      - For a split backup where other software copies the files, this may be the only place the label goes.
    type: path
  runtime_dir:
    description:
      - Directory of the session directories C(<runtime_dir>/<backup_id>/) (mode 0700) holding the holder's Unix
        socket and C(state.json).
      - Default C(/run/consistent-backup), or C(/tmp/consistent-backup-<uid>) when C(/run) is not writable. All tasks of
        one backup must use the same value.
    type: path
extends_documentation_fragment:
  - consistent.backup._attributes
  - consistent.backup._attributes.actiongroup_all_job
  - consistent.backup._set.identity
  - consistent.backup._pre_window
  - consistent.backup._postgres
  - consistent.backup._job
attributes:
  check_mode:
    support: full
    details:
      - V(started) connects and runs the read-only preflight, V(stopped) and V(aborted) read the session state; none of
        them starts a holder, stops or aborts a backup or writes a file. RV(queries) lists what would run.
  diff_mode:
    support: none
    details: The module starts and stops a server-side backup; there is no file content to show a difference of.
  idempotent:
    support: full
    details:
      - V(started) with the O(backup_id) of a running session returns its facts unchanged; V(stopped) of a stopped
        session returns the stored result (rewriting only label files that are missing or different); V(stopped) and
        V(aborted) with no session, or with a session of another O(run_id), are ok and not changed.
requirements:
  - psycopg 3 (C(psycopg)) on the managed host, for V(started).
notes:
  - The holder is a detached process (double fork, C(setsid)) owned by the remote user; it survives the end of the task
    and of the SSH connection, but not a reboot. Use the same host, remote user and O(runtime_dir) for all tasks of one
    backup.
  - The holder's session sets C(idle_session_timeout=0) (14+), C(idle_in_transaction_session_timeout=0),
    C(statement_timeout=0) and C(max_parallel_workers_per_gather=0), runs in autocommit (never idle in a
    transaction) and checks every O(keepalive_interval) seconds that its backend is unchanged.
  - Standbys are refused for now.
  - O(set_path) C(backup_manifest) lists regular files only; tablespace contents are verified when the copy keeps
    them under C(pg_tblspc/<oid>/) of the data directory copy.
seealso:
  - name: PostgreSQL low-level base backup API
    description: The non-exclusive backup the module drives.
    link: https://www.postgresql.org/docs/current/continuous-archiving.html#BACKUP-LOWLEVEL-BASE-BACKUP
  - name: pg_verifybackup
    description: Verifies the copy against the backup_manifest this module writes.
    link: https://www.postgresql.org/docs/current/app-pgverifybackup.html
author: consistent.backup developers (@consistent-backup)
'''

EXAMPLES = r'''
- name: Start the backup (connection from PGHOST/PGPORT/PGUSER); one attempt for what a retry cannot fix
  consistent.backup.pg_backup_session:
    state: started
    backup_id: "{{ backup_id }}"
    run_id: "{{ backup_run_id }}"
  register: pg_start
  retries: 2
  delay: 5
  until: pg_start is succeeded or not (pg_start.retryable | default(true))

- name: Copy the data directory here, pg_control last (consistent.backup.aligned_copy)
  ansible.builtin.debug:
    msg: "copy {{ pg_start.data_directory }} from {{ pg_start.start_lsn }}"

- name: Stop the backup, store the label in the set and write backup_manifest (nothing when another run owns the session)
  consistent.backup.pg_backup_session:
    state: stopped
    backup_id: "{{ backup_id }}"
    run_id: "{{ backup_run_id }}"
    set_path: "{{ backup_dest }}/{{ backup_id }}"
  register: pg_stop

- name: Split backup - another tool copies the files, the label goes to a label store
  consistent.backup.pg_backup_session:
    state: stopped
    backup_id: "{{ backup_id }}"
    label_dest: /var/lib/consistent-backup/labels

- name: Give up a backup without a label (in a rescue block)
  consistent.backup.pg_backup_session:
    state: aborted
    backup_id: "{{ backup_id }}"

- name: Start against an explicit server with a password from the vault
  consistent.backup.pg_backup_session:
    state: started
    backup_id: nightly-20240501
    login_host: db1.example.com
    port: 5432
    login_user: backup
    login_password: "{{ vault_pg_backup_password }}"
    login_db: postgres
    connect_params:
      sslmode: verify-full
    max_duration: 7200
'''

RETURN = r'''
start_lsn:
  description: LSN where the backup starts (the redo point of its checkpoint), as PostgreSQL prints it.
  returned: state is started or stopped
  type: str
  sample: 0/2000028
timeline:
  description: Timeline the backup runs on.
  returned: state is started or stopped
  type: int
  sample: 1
backend_pid:
  description: Process id of the server backend that holds the backup.
  returned: state is started
  type: int
  sample: 4242
holder_pid:
  description: Process id of the detached holder process on the managed host.
  returned: state is started
  type: int
  sample: 4240
server_version_num:
  description: The server's C(server_version_num).
  returned: state is started
  type: int
  sample: 180000
postmaster_start_time:
  description: When the server started (ISO 8601 UTC); the stop checks it is unchanged.
  returned: state is started
  type: str
  sample: "2024-05-01T01:59:12.123456Z"
system_identifier:
  description: The cluster's system identifier (from C(pg_control_system)), unsigned.
  returned: state is started
  type: int
  sample: 7364785239567891234
data_directory:
  description: The server's data directory (null when the role may not read it).
  returned: state is started
  type: str
  sample: /var/lib/postgresql/15/main
tablespaces:
  description: User tablespaces (C(pg_tablespace) with a location).
  returned: state is started
  type: list
  elements: dict
  contains:
    oid:
      description: Tablespace OID (the name of its link in C(pg_tblspc)).
      type: int
    name:
      description: Tablespace name.
      type: str
    location:
      description: Directory of the tablespace (C(pg_tablespace_location)).
      type: str
  sample: [{oid: 16390, name: fast, location: /srv/pg/fast}]
page_size:
  description: The server's block size (C(block_size)) in bytes; copy in multiples of it.
  returned: state is started
  type: int
  sample: 8192
wal_segment_size:
  description: WAL segment size in bytes.
  returned: state is started
  type: int
  sample: 16777216
preflight:
  description:
    - Findings of the preflight (empty when an already running session was found). Keys include
      C(server_version_num), C(in_recovery), C(wal_level), C(archive_mode), C(archive_command), C(archive_library),
      C(archiver) (the C(pg_stat_archiver) row), C(superuser), C(privileges), C(current_user), C(warnings), C(errors)
      and C(retryable) (false when an error needs an operator, true when only a failing archiver refused the start).
  returned: state is started
  type: dict
  sample: {wal_level: replica, archive_mode: "on", warnings: [], errors: []}
started_at:
  description: When the holder started (ISO 8601 UTC).
  returned: state is started
  type: str
  sample: "2024-05-01T02:00:00Z"
backup_start_epoch:
  description: Epoch seconds just before the start function was called; the database's quiesce window opens here.
  returned: state is started
  type: float
  sample: 1795251581.123
expires_at:
  description: When the holder gives up the backup (O(max_duration) after the start).
  returned: state is started
  type: str
  sample: "2024-05-01T08:00:00Z"
queries:
  description: The SQL statements run (or, in check mode, that would run), parameters shown as literals.
  returned: state is started, stopped or aborted
  type: list
  elements: str
  sample: ["SELECT pg_catalog.pg_backup_start('nightly-20240501', true)::text"]
lsn:
  description: Stop LSN returned by the stop function.
  returned: state is stopped
  type: str
  sample: 0/2000100
labelfile:
  description: Contents of C(backup_label) as returned by the server.
  returned: state is stopped
  type: str
  sample: "START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\n..."
spcmapfile:
  description: Contents of C(tablespace_map) as returned by the server (empty without tablespaces).
  returned: state is stopped
  type: str
  sample: ""
stop_walfile:
  description: WAL segment holding the stop LSN (C(pg_walfile_name) of RV(lsn)), the last segment the backup needs.
  returned: state is stopped
  type: str
  sample: "000000010000000000000002"
archived:
  description: Whether RV(stop_walfile) was seen archived before the label was written.
  returned: state is stopped
  type: bool
  sample: true
archive_check:
  description:
    - How RV(archived) was decided. V(archive_status) - the segment's C(.ready)/C(.done) file in
      C(pg_wal/archive_status) was read (exact). V(pg_stat_archiver) - the role may not read that directory, so a
      segment on the stop segment's timeline or a later one with a segment number at least the stop segment's had to
      appear in C(last_archived_wal). Null when archiving was not waited for.
  returned: state is stopped
  type: str
  sample: archive_status
session_run_id:
  description: The O(run_id) recorded in the session (null when the session was started without one).
  returned: state is started; state is stopped when a session exists; state is aborted of another run's session
  type: str
  sample: db1-20240501T020000123456Z-48213
retryable:
  description:
    - On failure, whether another attempt may succeed. V(false) for what a retry cannot fix - an invalid option or
      O(backup_id), a backup id already used or owned by another run, missing privileges or psycopg, archiving not
      configured, a standby, a backup the server already ended. Connection refused, a busy holder or a failing
      archiver stay V(true).
    - "Roles retry with C(until: step is succeeded or not (step.retryable | default(true)))."
  returned: failure
  type: bool
  sample: false
label_paths:
  description: Files written by the stop (C(backup_label), C(tablespace_map), C(label.json)), whether new or already identical.
  returned: state is stopped
  type: list
  elements: str
  sample: [/backup/b1/backup_label, /backup/b1/data/pgdata/backup_label]
backup_manifest:
  description: Path of the PostgreSQL C(backup_manifest) written for the copy, or null when none was written.
  returned: state is stopped
  type: str
  sample: /backup/b1/data/pgdata/backup_manifest
stop_seconds:
  description: Seconds the stop took, archive wait included.
  returned: state is stopped
  type: float
  sample: 0.42
backup_stop_epoch:
  description: Epoch seconds when the stop function returned (the server left backup mode); the quiesce window closes here.
  returned: state is stopped
  type: float
  sample: 1795251590.456
backup_mode_seconds:
  description: Seconds the stop function itself took (the server was in backup mode until it returned), archive wait excluded.
  returned: state is stopped
  type: float
  sample: 0.05
running:
  description: Whether the session (any session, without O(backup_id)) is running with a live holder.
  returned: state is status
  type: bool
  sample: true
state:
  description:
    - The session's C(state.json) (empty when there is none); its C(state) is one of C(starting), C(running),
      C(stopping), C(stopped), C(aborted), C(expired), C(failed), and C(reason) says why a session ended.
  returned: state is status or aborted
  type: dict
  sample: {backup_id: b1, state: running, holder_pid: 4240, backend_pid: 4242}
sessions:
  description: Every session in O(runtime_dir) with C(backup_id), C(state), C(running), C(holder_pid), C(started_at).
  returned: state is status and backup_id is not set
  type: list
  elements: dict
  sample: [{backup_id: b1, state: running, running: true, holder_pid: 4240, started_at: "2024-05-01T02:00:00Z"}]
runtime_dir:
  description: The session directory used.
  returned: state is started
  type: str
  sample: /run/consistent-backup/b1
guard_post:
  description:
    - The post the on-host guard holds for this session, for M(consistent.backup.backup_guard)'s
      O(consistent.backup.backup_guard#module:post) (the PostgreSQL role declares it as its post). It is the generic
      C(socket) kind - ask the holder on C(<runtime_dir>/<backup_id>/holder.sock) to abort (it closes its connection,
      so the server leaves backup mode) and wait for it to exit (SIGTERM when it does not answer); nobody listening
      there means the holder is gone and the server already left backup mode for it, which is success.
    - Also returned in check mode, so a read-only preflight can declare it before anything starts.
  returned: state is started
  type: dict
  sample:
    socket:
      path: /run/consistent-backup/b1/holder.sock
      request: {cmd: abort}
      reason_key: reason
      success: {ok: true}
      absent_ok: true
      timeout: 10.0
      exit_wait: 15.0
      answer_field: state.state
      what: end the PostgreSQL backup session b1 (its holder closes the connection; the server leaves backup mode)
msg:
  description: What happened, or what would happen in check mode.
  returned: sometimes
  type: str
  sample: no PostgreSQL backup session b1 was running (no /run/consistent-backup/b1); nothing to do for state=stopped
'''

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.consistent.backup.plugins.module_utils._options import check_options
from ansible_collections.consistent.backup.plugins.module_utils._backup_set import PhaseLedger, job_argument_spec, job_ledger, job_set_path
from ansible_collections.consistent.backup.plugins.module_utils._guard import PRE_WINDOW_ARGSPEC, PRE_WINDOW_MINIMUM, GuardError, pre_window, run_pre

from ansible_collections.consistent.backup.plugins.module_utils._pg_session import PgBackupSession
from ansible_collections.consistent.backup.plugins.module_utils._pg_sql import (
    PSYCOPG_IMPORT_ERROR,
    SessionError,
    connection_argument_spec,
    validate_backup_id,
)


def ledger_facts(result: dict) -> dict:
    """When the database left and re-entered its normal state, as the holder measured it."""
    facts = {}
    if result.get('backup_start_epoch') is not None:
        facts['quiesce_start'] = result['backup_start_epoch']
    if result.get('backup_stop_epoch') is not None:
        facts['quiesce_end'] = result['backup_stop_epoch']
    return facts


def main() -> None:
    argument_spec = connection_argument_spec()
    argument_spec.update(
        state=dict(type='str', default='status', choices=['started', 'stopped', 'aborted', 'status']),
        backup_id=dict(type='str'),
        run_id=dict(type='str'),
        fast=dict(type='bool', default=True),
        max_duration=dict(type='int', default=21600),
        keepalive_interval=dict(type='int', default=10),
        archive_timeout=dict(type='int', default=300),
        wait_for_archive=dict(type='bool', default=True),
        require_archiving=dict(type='bool', default=True),
        set_path=dict(type='path'),
        data_prefix=dict(type='str', default='pgdata'),
        label_dest=dict(type='path'),
        runtime_dir=dict(type='path'),
        pre_window=PRE_WINDOW_ARGSPEC,
        **job_argument_spec()
    )
    module = AnsibleModule(
        argument_spec=argument_spec,
        required_if=[
            ('state', 'started', ['backup_id']),
            ('state', 'stopped', ['backup_id']),
            ('state', 'aborted', ['backup_id']),
        ],
        supports_check_mode=True,
    )
    PhaseLedger(module, job_ledger(module), ledger_facts)
    # A port counts from 1; the holder's bound and its check interval are at least a second (0 would end the backup at once).
    check_options(module, minimum=dict(PRE_WINDOW_MINIMUM, login_port=1, max_duration=1, keepalive_interval=1),
                  units={"max_duration": "seconds", "keepalive_interval": "seconds", "archive_timeout": "seconds",
                         "pre_window.timeout": "seconds"})
    params = module.params
    # The job handle's set, unless the call names one (a split backup has neither: its label store is the record).
    params['set_path'] = params['set_path'] or job_set_path(module)
    # Wrong input is refused before anything is touched, in check mode too, and never retried.
    if params['backup_id'] is not None:
        try:
            validate_backup_id(params['backup_id'])
        except SessionError as exc:
            module.fail_json(msg=exc.msg, retryable=False)
    if '/' in params['data_prefix'].strip('/') or params['data_prefix'].strip('/') in ('', '.', '..'):
        module.fail_json(msg="data_prefix must be one directory name under <set_path>/data/, such as pgdata; found %r"
                         % params['data_prefix'], retryable=False)

    session = PgBackupSession(params, module.check_mode, module.warn)
    operations = {
        'started': session.started,
        'stopped': session.stopped,
        'aborted': session.aborted,
        'status': session.status,
    }
    try:
        window = pre_window(params['pre_window'], 'PostgreSQL backup start of %s' % params['backup_id']) \
            if params['state'] == 'started' and not module.check_mode else None
        if window is not None:
            # Pre under the run's guard (plugins/module_utils/_guard.py, PreWindow): bounded, renewing the lease; when
            # the guard fired meanwhile, the guard's post (end this session) releases it and the attempt fails.
            session.start_timeout = window.remaining
            result = run_pre(window, lambda pre: operations['started']())
        else:
            result = operations[params['state']]()
    except GuardError as exc:
        module.fail_json(msg=str(exc), retryable=False, **exc.facts)
    except SessionError as exc:
        if exc.facts.get('missing_psycopg'):
            module.fail_json(msg=missing_required_lib('psycopg (psycopg 3)'), exception=PSYCOPG_IMPORT_ERROR, retryable=False)
        module.fail_json(msg=exc.msg, retryable=exc.retryable, **exc.facts)
    module.exit_json(**result)


if __name__ == '__main__':
    main()
