# -*- coding: utf-8 -*-
# Copyright: contributors to consistent.backup
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

# This doc fragment is PRIVATE to consistent.backup: it may change at any time. Do not use it from other
# collections or standalone modules.

from __future__ import annotations


class ModuleDocFragment:
    """Where the Berkeley DB utilities are (plugins/module_utils/_bdb.py find_utilities), for every bdb module."""

    DOCUMENTATION = r'''
options:
  utility_prefix:
    description:
      - Name prefix of the Berkeley DB utilities, for example V(db5.3_) or V(db_). Default - try V(db5.3_), then V(db_).
    type: str
  bindir:
    description:
      - Directory of the utilities (with O(utility_prefix) or the default prefixes), instead of the PATH.
    type: path
'''
