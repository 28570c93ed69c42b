# -*- coding: utf-8 -*-
# Copyright: contributors to consistent.backup
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Test double: records every task result as a JSON line, so integration tests assert on the values a playbook
registered (or set as facts) instead of searching its output for words a task name may contain.

Enabled by tests/integration/helpers.py:run_playbook (ANSIBLE_CALLBACKS_ENABLED=record_results) with the file in
CONSISTENT_BACKUP_TEST_RESULTS; without that variable it records nothing. Built on ansible-core's CallbackBase
(the v2_runner_on_* hooks documented in ansible/plugins/callback/__init__.py).
"""

from __future__ import annotations

import json
import os

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = r'''
name: record_results
type: notification
short_description: Record task results as JSON lines (consistent.backup's integration tests only)
description:
  - Appends one JSON object per task result (host, task, register, status, result) to the file named by
    C(CONSISTENT_BACKUP_TEST_RESULTS).
requirements:
  - enabled through C(callbacks_enabled)
'''


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "notification"
    CALLBACK_NAME = "record_results"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self) -> None:
        super().__init__()
        self.path = os.environ.get("CONSISTENT_BACKUP_TEST_RESULTS")

    def _record(self, result, status: str) -> None:
        if not self.path:
            return
        entry = {"host": result._host.get_name(), "task": result._task.get_name(), "register": result._task.register,
                 "status": status, "result": result._result}
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(entry, default=str) + "\n")

    def v2_runner_on_ok(self, result) -> None:
        self._record(result, "ok")

    def v2_runner_on_failed(self, result, ignore_errors=False) -> None:
        self._record(result, "ignored" if ignore_errors else "failed")

    def v2_runner_on_skipped(self, result) -> None:
        self._record(result, "skipped")

    def v2_runner_on_unreachable(self, result) -> None:
        self._record(result, "unreachable")
