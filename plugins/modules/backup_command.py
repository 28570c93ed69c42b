#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: contributors to consistent.backup
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
module: backup_command
short_description: Run an operator's pre or post command and record the attempt in the backup set's phase ledger
version_added: 0.1.0
description:
  - Runs one command without a shell (an argv list, or a string split like a command line), with C(LANG=C), and
    records the attempt - start, end, result, return code and the tails of stderr and stdout - in the set's phase
    ledger (O(job) and O(phase)), so C(report.json) shows every attempt of a retried phase with its reason.
  - A failure says which command failed, its return code and the end of its stderr, which usually holds the reason.
  - An empty O(argv) runs nothing and records a successful attempt (an engine whose pre or post has nothing to do).
options:
  argv:
    description:
      - The command. A list is passed as argv; a string is split like a command line (quotes respected, no shell).
      - Empty runs nothing.
    type: raw
    required: true
  timeout:
    description:
      - Seconds the command may take before it is killed (and the attempt fails). C(0) waits for ever.
      - With O(pre_window), O(pre_window.timeout) is the bound instead.
    type: int
    default: 0
extends_documentation_fragment:
  - consistent.backup._attributes
  - consistent.backup._attributes.actiongroup_all_job
  - consistent.backup._pre_window
  - consistent.backup._job
attributes:
  check_mode:
    support: full
    details: In check mode the command is not run; RV(cmd) and C(msg) say what would run.
  diff_mode:
    support: none
  idempotent:
    support: none
    details: An operator command is run each time; its own effect decides (a post command must succeed when the
      database is already open).
seealso:
  - module: consistent.backup.backup_set
author: consistent.backup developers (@consistent-backup)
'''

EXAMPLES = r'''
- name: Run the operator's pre command under the guard, bounded, and record the attempt
  consistent.backup.backup_command:
    argv: [/usr/local/sbin/appdb, suspend-writes]
    pre_window:
      guard_dir: "{{ backup_guard.guard_dir }}"
      run_id: "{{ backup_run_id }}"
      timeout: 300
    job: {dest: /backup, backup_id: db1-20261122T0200Z, run_id: "{{ backup_run_id }}"}  # module_defaults in backup.yml
    phase: pre
  register: pre
  retries: 2
  until: pre is succeeded
'''

RETURN = r'''
cmd:
  description: The argv that was run (or would be, in check mode).
  returned: always
  type: list
  elements: str
rc:
  description: The return code (C(-9) when killed after O(timeout) or at O(pre_window.timeout)).
  returned: when the command ran
  type: int
stdout:
  description: Standard output.
  returned: when the command ran
  type: str
stderr:
  description: Standard error.
  returned: when the command ran
  type: str
seconds:
  description: How long the command took.
  returned: when the command ran
  type: float
'''

import os
import shlex
import subprocess
import time

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.consistent.backup.plugins.module_utils._options import check_options
from ansible_collections.consistent.backup.plugins.module_utils._backup_set import PhaseLedger, job_argument_spec, job_ledger
from ansible_collections.consistent.backup.plugins.module_utils._fsutil import output_tail
from ansible_collections.consistent.backup.plugins.module_utils._guard import PRE_WINDOW_ARGSPEC, PRE_WINDOW_MINIMUM, GuardError, pre_window, run_pre


def _argv(raw) -> list:
    if raw is None or raw == "":
        return []
    if isinstance(raw, str):
        return shlex.split(raw)
    if isinstance(raw, (list, tuple)):
        return [str(part) for part in raw]
    raise ValueError("argv must be a list of strings or a command line string; found %r" % (raw,))


def _fail_to_start(module: AnsibleModule, phase: str, argv: list, exc: OSError) -> None:
    """The command could not be started at all (missing, or not executable): a retry cannot help."""
    if isinstance(exc, FileNotFoundError):
        module.fail_json(msg='%s command %s was not found (%s); check the path in the job variables' % (phase, argv[0], exc),
                         cmd=argv, rc=127, retryable=False)
    if isinstance(exc, PermissionError):
        module.fail_json(msg='%s command %s cannot be run (%s); make it executable for this user' % (phase, argv[0], exc),
                         cmd=argv, rc=126, retryable=False)
    raise exc


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            argv=dict(type='raw', required=True),
            timeout=dict(type='int', default=0),
            pre_window=PRE_WINDOW_ARGSPEC,
            **job_argument_spec()
        ),
        supports_check_mode=True,
    )
    PhaseLedger(module, job_ledger(module))
    check_options(module, minimum=PRE_WINDOW_MINIMUM, units={"timeout": "seconds", "pre_window.timeout": "seconds"})
    try:
        argv = _argv(module.params['argv'])
    except ValueError as exc:
        module.fail_json(msg=str(exc), retryable=False)
    phase = module.params['phase'] or 'the'
    shown = ' '.join(shlex.quote(part) for part in argv)
    try:
        window = pre_window(module.params['pre_window'], '%s command %s' % (phase, shown))
    except GuardError as exc:
        module.fail_json(msg=str(exc), retryable=False)
    if not argv:
        module.exit_json(changed=False, cmd=[], msg='no %s command: nothing to run' % phase)
    if module.check_mode:
        module.exit_json(changed=True, cmd=argv, msg='would run %s' % shown)
    env = dict(os.environ, LANG='C', LC_ALL='C')
    began = time.monotonic()
    if window is not None:
        # Pre under the guard (plugins/module_utils/_guard.py, PreWindow): bounded, renewing the lease, released
        # and failed when the guard fired meanwhile.
        try:
            rc, stdout, stderr = run_pre(window, lambda pre: pre.run_command(argv, env))
        except OSError as exc:
            _fail_to_start(module, phase, argv, exc)
        except GuardError as exc:
            module.fail_json(msg=str(exc), cmd=argv, rc=-9 if exc.facts.get('pre_timed_out') else None, retryable=False,
                             **exc.facts)
        _finish(module, phase, argv, rc, stdout, stderr, round(time.monotonic() - began, 3))
    try:
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False,
                              timeout=module.params['timeout'] or None, env=env)
    except OSError as exc:
        _fail_to_start(module, phase, argv, exc)
    except subprocess.TimeoutExpired as exc:
        module.fail_json(msg='%s command %s was killed after %d s; raise the timeout or find out why it hangs'
                         % (phase, ' '.join(argv), module.params['timeout']), cmd=argv, rc=-9,
                         stdout=(exc.stdout or b'').decode('utf-8', 'replace'), stderr=(exc.stderr or b'').decode('utf-8', 'replace'))
    _finish(module, phase, argv, proc.returncode, proc.stdout.decode('utf-8', 'replace'), proc.stderr.decode('utf-8', 'replace'),
            round(time.monotonic() - began, 3))


def _finish(module: AnsibleModule, phase: str, argv: list, rc: int, stdout: str, stderr: str, seconds: float) -> None:
    if rc != 0:
        reason = output_tail(stderr) or output_tail(stdout) or 'no output'
        shown = ' '.join(shlex.quote(part) for part in argv)
        module.fail_json(msg='%s command %s exited with %d: %s' % (phase, shown, rc, reason),
                         cmd=argv, rc=rc, stdout=stdout, stderr=stderr, seconds=seconds)
    module.exit_json(changed=True, cmd=argv, rc=0, stdout=stdout, stderr=stderr, seconds=seconds)


if __name__ == '__main__':
    main()
