# -*- coding: utf-8 -*-
# Copyright: contributors to consistent.backup
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A timing callback for the benchmarks: every task's start and end on every host, written as JSON lines to the file
named by CONSISTENT_BACKUP_TASK_TIMES (bench/bench_fixed_cost.py --where reads them: where a tiny job's seconds go)."""

from __future__ import annotations

import json
import os
import time

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = r'''
name: task_timer
type: aggregate
short_description: Write each task's start and end times per host (consistent.backup benchmarks)
description:
  - Writes one JSON line per task result to the file named by the environment variable CONSISTENT_BACKUP_TASK_TIMES.
'''


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "task_timer"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self) -> None:
        super().__init__()
        self.path = os.environ.get("CONSISTENT_BACKUP_TASK_TIMES")
        self.started = {}

    def _record(self, result, status: str) -> None:
        if not self.path:
            return
        task = result._task  # pylint: disable=protected-access
        host = result._host.get_name()  # pylint: disable=protected-access
        start = self.started.get(task._uuid, time.monotonic())  # pylint: disable=protected-access
        line = {"task": task.get_name(), "action": task.action, "host": host, "status": status,
                "start": start, "end": time.monotonic()}
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(line) + "\n")

    def v2_playbook_on_task_start(self, task, is_conditional) -> None:
        self.started[task._uuid] = time.monotonic()  # pylint: disable=protected-access

    def v2_playbook_on_handler_task_start(self, task) -> None:
        self.started[task._uuid] = time.monotonic()  # pylint: disable=protected-access

    def v2_runner_on_ok(self, result) -> None:
        self._record(result, "ok")

    def v2_runner_on_failed(self, result, ignore_errors=False) -> None:
        self._record(result, "failed")

    def v2_runner_on_skipped(self, result) -> None:
        self._record(result, "skipped")
