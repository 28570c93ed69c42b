#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: contributors to consistent.backup
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
module: btrieve_continuous
short_description: Put Btrieve / Pervasive.SQL / Actian Zen files into continuous operation and out again with butil
version_added: 0.1.0
description:
  - B(started) runs C(butil -startbu @LIST) so that every listed file goes into continuous operation at one instant
    (all or nothing). From then on the engine writes each file's changes to a delta file beside it (same base name,
    extension C(.^^^)) and leaves the data file as it was, so a copy of the data files is a snapshot of the whole
    database at the start. The module writes the list file (fully qualified paths, CR/LF) itself.
  - Before it calls butil it checks that every file exists, is a regular file and is local (not on a network
    filesystem - the database must reside completely on a single server), that no two files share a base name in one
    directory (they would share one delta), and that no stale delta is left by an interrupted continuous operation
    (O(stale_deltas)).
  - When the files are in continuous operation started by another run (O(run_id) differs - a dead run's, since the
    guard lets one run at a time near the database), B(started) ends it first (C(-endbu), waiting for the roll-in),
    then starts its own; it never takes another run's start as its own, whose snapshot would miss every write made
    since. That is reported in RV(ended_earlier).
  - With O(pre_window), B(started) is pre under the run's guard. It is bounded, renews the guard's lease, and is
    released (C(-endbu)) and failed when the guard fired while it ran.
  - B(stopped) runs C(butil -endbu @LIST), which rolls each delta back into its file and deletes it, and waits until
    the deltas are gone (at most O(timeout) seconds), reporting progress, how long the files were in continuous operation
    and how long the roll-in took. It ends only what this module started (its record in O(state_dir)); when nothing is
    in continuous operation it is ok and not changed.
  - B(restored) puts the files of a COMPLETE backup set back (O(backup_dest), O(backup_id)) under O(restore_root),
    only when no file is in continuous operation and no delta exists, after the whole set passed the restore gate
    (every manifest path relative and normalised, one of the files the set records in its facts, a regular file in the
    set, no setuid, setgid or device, every recorded file present with its size and SHA-256). Only the recorded files
    are written, with the manifest's read and write permission bits only, each under a temporary name until all are
    written and checked; a failure before then removes what was written.
  - butil is called with the documented command line only (C(-startbu @LIST), C(-endbu @LIST), C(-stat FILE)); the
    module reads exit codes and status numbers, never whole message texts, and turns them into a message that says what
    happened and what to do.
options:
  state:
    description:
      - V(started) puts the files into continuous operation; V(stopped) ends it and waits for the roll-in;
        V(restored) puts the files of a backup set back.
    type: str
    choices: [started, stopped, restored]
    default: started
  files:
    description:
      - Absolute paths of the database's data files. Glob patterns are expanded by the module (butil refuses
        wildcards); delta files (C(*.^^^)) never match. Required with V(started) and V(stopped).
    type: list
    elements: str
    default: []
  ddf_dir:
    description:
      - Directory of the data dictionary; its C(.DDF) files are added to O(files) (the data dictionary must be in the
        list too, especially when it changes).
    type: path
  butil:
    description:
      - Path of butil. Default, the first of C(/usr/local/actianzen/bin/butil), C(/usr/local/psql/bin/butil) and
        C(butil) on C(PATH).
    type: path
  user:
    description:
      - Database user (C(-UID)) for a secured engine; every butil call carries the login (C(-startbu), C(-endbu), the
        C(-stat) of a roll-in or a restore), because a secured engine refuses any call without it (status 170/171).
        Empty when the engine has no security.
    type: str
    default: ''
  password:
    description:
      - Its password (C(-PWD)), with O(user). butil takes it only on its command line, so it is visible in the process
        list (C(ps), C(/proc/<pid>/cmdline)) while butil runs; see C(docs/btrieve.md) for what to do about it.
      - Masked (C(********)) in everything the module returns or records, also where butil echoed it.
    type: str
    default: ''
  db:
    description: Database name (C(-DB)), with O(user).
    type: str
    default: ''
  timeout:
    description:
      - Seconds to wait for the deltas to be rolled in after C(-endbu), or after opening each file with O(stale_deltas=rollin).
    type: int
    default: 600
  stale_deltas:
    description:
      - What a delta that this module did not start (left by a crash during continuous operation) does to V(started).
      - V(fail) refuses and explains the two ways out.
      - V(rollin) opens each such file through the engine (C(butil -stat)) so that it rolls its delta in, and waits up
        to O(timeout) seconds until they are gone; newer engines roll in only while a file is held open, and then the
        module fails and says so.
      - V(discard) deletes the deltas, losing every change made since the interrupted start; only with
        O(discard_acknowledged=true), and each delta is copied to O(discard_dir) first.
    type: str
    choices: [fail, rollin, discard]
    default: fail
  discard_acknowledged:
    description: The acknowledgement that O(stale_deltas=discard) loses every change made since the interrupted start.
    type: bool
    default: false
  discard_dir:
    description: Where discarded deltas are kept, under C(<discard_dir>/<UTC time>/<the delta's path>).
    type: path
    default: /var/lib/consistent-backup/btrieve-discarded
  state_dir:
    description:
      - Where the module keeps the list file and its record of what it started (C(<key>.lst), C(<key>.json)). A runtime
        directory, so that a reboot (which ends continuous operation) clears the record.
      - Default C(<runtime dir>/btrieve), the runtime dir being C(/run/consistent-backup) for root.
    type: path
  run_id:
    description:
      - The identity of the job run (the playbook's C(backup_run_id)), kept in the record. V(started) keeps a start
        recorded with the same O(run_id) (a retried pre) and ends one recorded with another.
    type: str
    default: ''
  backup_dest:
    description: With V(restored), the backup destination root that holds the sets.
    type: path
  backup_id:
    description: With V(restored), the set to restore, or V(latest) for the newest COMPLETE set.
    type: str
    default: latest
  restore_root:
    description:
      - With V(restored), the directory the original absolute paths are put under; V(/) puts the files back in place.
    type: path
    default: /
extends_documentation_fragment:
  - consistent.backup._attributes
  - consistent.backup._attributes.actiongroup_all_job
  - consistent.backup._pre_window
  - consistent.backup._set.select
  - consistent.backup._job
attributes:
  check_mode:
    support: full
    details: Nothing is started, ended, rolled in, discarded or written; the checks run and stale deltas are reported.
  diff_mode:
    support: none
  idempotent:
    support: full
    details: V(started) when every file is already in continuous operation started by this module for the same
      O(run_id), and V(stopped) when none is, are ok and not changed.
seealso:
  - module: consistent.backup.aligned_copy
  - module: consistent.backup.backup_guard
author: consistent.backup developers (@consistent-backup)
'''

EXAMPLES = r'''
- name: Put the database into continuous operation
  consistent.backup.btrieve_continuous:
    files: [/srv/zen/inventory/*.MKD]
    ddf_dir: /srv/zen/inventory
    state: started
  register: btrieve_started

- name: End continuous operation and wait for the roll-in
  consistent.backup.btrieve_continuous:
    files: [/srv/zen/inventory/*.MKD]
    ddf_dir: /srv/zen/inventory
    state: stopped
    timeout: 1800

- name: Recover from a crash that left deltas behind, by rolling them in
  consistent.backup.btrieve_continuous:
    files: [/srv/zen/inventory/*.MKD]
    stale_deltas: rollin
'''

RETURN = r'''
files:
  description: The files, globs expanded and DDF files added, in list order.
  returned: with started and stopped
  type: list
  elements: str
list_file:
  description: The list file butil is given (C(@list_file)); the guard's post ends continuous operation with it.
  returned: with started and stopped
  type: str
butil:
  description: The butil that was (or would be) run.
  returned: always
  type: str
commands:
  description: Each butil call with its argv, return code, status numbers, seconds and output (password masked everywhere).
  returned: always
  type: list
  elements: dict
stale_deltas:
  description: Delta files this module did not start (left by an interrupted continuous operation).
  returned: with started and stopped
  type: list
  elements: str
start_seconds:
  description: How long C(butil -startbu) took to return, which is how long rolling the database into continuous operation takes.
  returned: when started
  type: float
started_at:
  description: When continuous operation started (UTC).
  returned: when started
  type: str
quiesce_start:
  description:
    - Epoch seconds just before C(butil -startbu) (or when this module's earlier start began); the database leaves its
      normal state here. Recorded in the set's ledger, so C(report.json) measures the quiesce window from the engine's side.
  returned: when started
  type: float
quiesce_end:
  description: Epoch seconds when the last delta was gone after C(-endbu); the database is back in its normal state.
  returned: when stopped
  type: float
continuous_seconds:
  description: How long the files were in continuous operation, from the start to C(-endbu).
  returned: when stopped
  type: float
rollin_seconds:
  description: From C(-endbu) (or from opening the files, with O(stale_deltas=rollin)) until every delta was gone.
  returned: when stopped or rolled in
  type: float
progress:
  description: While waiting for deltas, one entry per change of the number left, C({seconds, remaining, at}).
  returned: when deltas were waited for
  type: list
  elements: dict
discarded:
  description: With O(stale_deltas=discard), each deleted delta and where its copy was kept, C({delta, kept}).
  returned: when deltas were discarded
  type: list
  elements: dict
rolled_in:
  description: With O(stale_deltas=rollin), the stale deltas that were rolled in.
  returned: when stale deltas were rolled in
  type: list
  elements: str
statuses:
  description: The status numbers butil printed in its last call.
  returned: when butil ran
  type: list
  elements: int
retryable:
  description: On failure, whether a retry can help (the engine down, a file in use, a roll-in not finished yet).
  returned: on failure
  type: bool
ended_earlier:
  description:
    - With V(started), the continuous operation another run had started on these files and this call ended first,
      C({run_id, started_at, files, continuous_seconds, rollin_seconds, quiesce_end}) (C(would) in check mode).
  returned: when another run's continuous operation was found
  type: dict
restored:
  description: With V(restored), C({backup_id, set_path, files, bytes, verified, restore_root}).
  returned: with restored
  type: dict
'''

import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.consistent.backup.plugins.module_utils._options import check_options
from ansible_collections.consistent.backup.plugins.module_utils import _btrieve
from ansible_collections.consistent.backup.plugins.module_utils._backup_set import PhaseLedger, job_argument_spec, job_ledger
from ansible_collections.consistent.backup.plugins.module_utils._guard import PRE_WINDOW_ARGSPEC, PRE_WINDOW_MINIMUM, GuardError, pre_window, run_pre


def ledger_facts(result: dict) -> dict:
    # quiesce_start and quiesce_end make report.json's quiesce_seconds the engine's own window (quiesce_source engine).
    keys = ("start_seconds", "continuous_seconds", "rollin_seconds", "quiesce_start", "quiesce_end")
    return {key: result[key] for key in keys if result.get(key) is not None}


def _started(module: AnsibleModule, butil: _btrieve.Butil, files: list, view: _btrieve.Files) -> dict:
    """Start, as pre under the run's guard when O(pre_window) is given (plugins/module_utils/_guard.py, PreWindow):
    every butil call of the start is bounded by the window, and when the guard fired meanwhile the start is ended."""
    params = module.params
    window = pre_window(params['pre_window'], 'butil -startbu @%s' % view.record.list_file)
    if window is None or module.check_mode:
        return _btrieve.start(view, butil, module.check_mode, params['stale_deltas'], params['discard_acknowledged'],
                              params['discard_dir'], params['timeout'], params['run_id'])
    plain = butil.runner

    def quiesce(pre):
        # butil is a client of the engine: killing it at the bound may not cancel what the engine does, so post (or
        # the guard, at the bound) still ends continuous operation.
        butil.runner = lambda argv: pre.run_command(argv, dict(os.environ, LANG='C', LC_ALL='C'))
        try:
            return _btrieve.start(view, butil, False, params['stale_deltas'], params['discard_acknowledged'],
                                  params['discard_dir'], params['timeout'], params['run_id'])
        finally:
            butil.runner = plain

    def release():
        what = 'butil -endbu @%s and wait for the roll-in' % view.record.list_file
        try:
            ended = _btrieve.stop(_btrieve.look(files, params['state_dir']), butil, False, params['timeout'])
        except _btrieve.BtrieveError as exc:
            return {'ok': False, 'what': what, 'detail': exc.msg}
        return {'ok': True, 'what': what, 'detail': ended.get('msg')}

    return run_pre(window, quiesce, release)


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            state=dict(type='str', default='started', choices=['started', 'stopped', 'restored']),
            files=dict(type='list', elements='str', default=[]),
            ddf_dir=dict(type='path'),
            butil=dict(type='path'),
            user=dict(type='str', default=''),
            password=dict(type='str', default='', no_log=True),
            db=dict(type='str', default=''),
            timeout=dict(type='int', default=600),
            stale_deltas=dict(type='str', default='fail', choices=['fail', 'rollin', 'discard']),
            discard_acknowledged=dict(type='bool', default=False),
            discard_dir=dict(type='path', default='/var/lib/consistent-backup/btrieve-discarded'),
            state_dir=dict(type='path'),
            run_id=dict(type='str', default=''),
            backup_dest=dict(type='path'),
            backup_id=dict(type='str', default='latest'),
            restore_root=dict(type='path', default='/'),
            set_host=dict(type='str'),
            set_database=dict(type='str'),
            pre_window=PRE_WINDOW_ARGSPEC,
            **job_argument_spec()
        ),
        required_if=[('state', 'restored', ['backup_dest'])],
        supports_check_mode=True,
    )
    PhaseLedger(module, job_ledger(module), ledger_facts)
    # user, password, db: '' (the default) is an engine without security; run_id: '' (the default) is no job run, and
    # the btrieve role passes backup_run_id | default('').
    check_options(module, empty_ok=("user", "password", "db", "run_id"), minimum=PRE_WINDOW_MINIMUM,
                  units={"timeout": "seconds", "pre_window.timeout": "seconds"})
    params = module.params
    if (params['password'] or params['db']) and not params['user']:
        module.fail_json(msg='password and db are the login of user, which is empty; set user (backup_btrieve_user) to the '
                         'database user, or leave password and db empty when the engine has no security', retryable=False)
    butil = None
    try:
        path = _btrieve.find_butil(params['butil'], module.get_bin_path)
        butil = _btrieve.Butil(path, lambda argv: module.run_command(argv, environ_update={'LANG': 'C', 'LC_ALL': 'C'}),
                               params['user'], params['password'], params['db'])
        if params['state'] == 'restored':
            result = _btrieve.restore(params['backup_dest'], params['backup_id'], params['restore_root'], butil, module.check_mode,
                                      params['set_host'], params['set_database'])
        else:
            files, problems = _btrieve.expand_files(params['files'], params['ddf_dir'])
            if not files and not problems:
                problems.append('no database file given; set files (backup_btrieve_files) to the absolute paths of the data files')
            if params['state'] == 'started':
                problems += _btrieve.file_problems(files)
            if problems:
                raise _btrieve.BtrieveError('; '.join(problems) + '. Nothing was put into continuous operation.', False,
                                            files=files)
            view = _btrieve.look(files, params['state_dir'])
            if params['state'] == 'started':
                result = _started(module, butil, files, view)
            else:
                result = _btrieve.stop(view, butil, module.check_mode, params['timeout'])
    except _btrieve.BtrieveError as exc:
        module.fail_json(msg=exc.msg, retryable=exc.retryable, butil=butil.path if butil else params['butil'],
                         commands=butil.calls if butil else [], **exc.facts)
    except GuardError as exc:
        module.fail_json(msg=str(exc), retryable=False, butil=butil.path if butil else params['butil'],
                         commands=butil.calls if butil else [], **exc.facts)
    except OSError as exc:
        module.fail_json(msg='%s: %s' % (getattr(exc, 'filename', None) or 'btrieve', exc), retryable=False,
                         commands=butil.calls if butil else [])
    for warning in result.pop('warnings', []) or []:
        module.warn(warning)
    module.exit_json(butil=butil.path, commands=butil.calls, **result)


if __name__ == '__main__':
    main()
