# -*- coding: utf-8 -*-
# Copyright: contributors to consistent.backup
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

# This doc fragment is PRIVATE to consistent.backup: it may change at any time. Do not use it from other
# collections or standalone modules.

from __future__ import annotations


class ModuleDocFragment:
    """The job handle: the one option that says which set and which run a module works for, and the phase.

    The rules behind it live in plugins/module_utils/_backup_set.py (JOB_ARGUMENT_SPEC, job_ledger) and
    plugins/module_utils/_layout.py (set_path). playbooks/backup.yml sets O(job) once for every module of the action
    group C(consistent.backup.job) with C(module_defaults); a role task names only its O(phase).
    """

    DOCUMENTATION = r'''
options:
  job:
    description:
      - The backup job this call belongs to. C(playbooks/backup.yml) sets it with C(module_defaults) for the action
        group C(consistent.backup.job), so a role task does not repeat it. The set is C(<dest>/<backup_id>/), derived in
        one place (the collection's set layout).
      - With O(phase), this attempt is recorded in the set's phase ledger (C(phases.jsonl), a line when it starts and
        one when it ends; see M(consistent.backup.backup_set)). Not recorded in check mode.
    type: dict
    suboptions:
      dest:
        description: Absolute path of the backup destination root (the job variable C(backup_dest)).
        type: path
        required: true
      backup_id:
        description: The backup's identity, the set's directory name (the collection's one backup id rule).
        type: str
        required: true
      run_id:
        description: The identity of the job run (the job variable C(backup_run_id)), one per host and run.
        type: str
        required: true
  phase:
    description:
      - The phase this call is an attempt of, recorded with O(job) in the set's phase ledger. Without O(job) nothing
        is recorded.
    type: str
    choices: [media, pre, copy, post, verify, readback]
'''
