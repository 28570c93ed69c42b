# -*- coding: utf-8 -*-
# Copyright: contributors to consistent.backup
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

# This doc fragment is PRIVATE to consistent.backup: it may change at any time. Do not use it from other
# collections or standalone modules.

from __future__ import annotations


class ModuleDocFragment:
    """The base descriptions of the attributes every module of the collection documents.

    A module adds only what is its own (``support`` and ``details``); ansible-doc merges the two.
    """

    DOCUMENTATION = r'''
options: {}
notes:
  - Every option is checked before anything runs, in check mode too (plugins/module_utils/_options.py) - a path must be
    absolute, a number 0 or more (or the lowest value its description gives), a string non-empty and one line; a
    failure names the option and is not retried.
attributes:
  check_mode:
    description: Can run in C(check_mode) and return changed status prediction without modifying target.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in C(check_mode)), when in diff mode.
  idempotent:
    description:
      - When run twice in a row outside check mode, with the same arguments, the second invocation indicates no change.
      - This assumes that the system controlled/queried by the module has not changed in a relevant way.
'''

    # Together with DOCUMENTATION: every module of the collection is in the action group all (meta/runtime.yml).
    ACTIONGROUP_ALL = r'''
options: {}
attributes:
  action_group:
    description: Use C(group/consistent.backup.all) in C(module_defaults) to set defaults for this module.
    support: full
    membership:
      - consistent.backup.all
'''

    # The modules that also take the job handle (doc_fragments/_job.py).
    ACTIONGROUP_ALL_JOB = r'''
options: {}
attributes:
  action_group:
    description:
      - Use C(group/consistent.backup.all) in C(module_defaults) to set defaults for this module.
      - Use C(group/consistent.backup.job) to set O(job) for every module that works inside a set, as C(playbooks/backup.yml)
        does.
    support: full
    membership:
      - consistent.backup.all
      - consistent.backup.job
'''
