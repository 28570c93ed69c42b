# -*- coding: utf-8 -*-
# Copyright: contributors to consistent.backup
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

# This doc fragment is PRIVATE to consistent.backup: it may change at any time. Do not use it from other
# collections or standalone modules.

from __future__ import annotations


class ModuleDocFragment:
    """The ``pre_window`` option of every module that quiesces a database in pre.

    The rules behind it live in plugins/module_utils/_guard.py (PreWindow, run_pre): one mechanism that every
    engine's pre goes through.
    """

    DOCUMENTATION = r'''
options:
  pre_window:
    description:
      - Run this call as pre, under this run's on-host guard (M(consistent.backup.backup_guard)), so that pre cannot
        outrun the guard. Leave out to run without a guard.
      - Before it quiesces, the call refuses when the guard has fired, belongs to another run or is gone. While it
        runs, and only within O(pre_window.timeout), it renews the guard's lease (pre is progress too). At
        O(pre_window.timeout) it is stopped (a command's whole process group is killed) and the attempt fails.
      - After the call it checks the guard again; when the guard fired meanwhile (it ran post while pre was still
        quiescing), it releases what it quiesced (runs post), tells the guard, and fails. The guard waits for that
        word until the bound has passed, and runs post once more if it does not come.
    type: dict
    suboptions:
      guard_dir:
        description: The guard's directory (M(consistent.backup.backup_guard)'s RV(consistent.backup.backup_guard#module:guard_dir)).
        type: path
        required: true
      run_id:
        description: This run's identity (C(backup_run_id)); the guard must be this run's.
        type: str
        required: true
      timeout:
        description: The bound, in seconds, of this call (the job variable C(backup_pre_timeout)); at least 1.
        type: int
        required: true
'''
