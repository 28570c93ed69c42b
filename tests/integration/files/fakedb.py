# -*- coding: utf-8 -*-
# Copyright: contributors to consistent.backup
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A stand-in operator command for the files engine tests: records every call and fails on demand.

    fakedb.py STATE_DIR pre|post

STATE_DIR/calls.log gets one line per call ("pre fail", "pre ok", "post ok already-open", ...).
STATE_DIR/fail-pre and STATE_DIR/fail-post hold how many of the next calls of that action fail.
STATE_DIR/sleep-pre and STATE_DIR/sleep-post hold seconds the action takes (a slow database).
STATE_DIR/state is "open" or "quiesced"; post succeeds when the database is already open (idempotent),
as the guard requires of any post command.
"""

from __future__ import annotations

import os
import sys
import time


def main() -> int:
    state_dir, action = sys.argv[1], sys.argv[2]
    state_file = os.path.join(state_dir, "state")
    fail_file = os.path.join(state_dir, "fail-" + action)
    failures_left = 0
    if os.path.exists(fail_file):
        with open(fail_file, encoding="utf-8") as handle:
            failures_left = int(handle.read().strip() or 0)
    sleep_file = os.path.join(state_dir, "sleep-" + action)
    if os.path.exists(sleep_file):
        with open(sleep_file, encoding="utf-8") as handle:
            time.sleep(float(handle.read().strip() or 0))
    state = "open"
    if os.path.exists(state_file):
        with open(state_file, encoding="utf-8") as handle:
            state = handle.read().strip()
    if failures_left > 0:
        with open(fail_file, "w", encoding="utf-8") as handle:
            handle.write(str(failures_left - 1))
        outcome = "fail"
    elif action == "pre":
        state, outcome = "quiesced", "ok"
    else:
        outcome = "ok already-open" if state == "open" else "ok"
        state = "open"
    with open(os.path.join(state_dir, "calls.log"), "a", encoding="utf-8") as handle:
        handle.write("%s %s\n" % (action, outcome))
    with open(state_file, "w", encoding="utf-8") as handle:
        handle.write(state)
    if outcome == "fail":
        sys.stderr.write("fakedb: %s failed on demand (%d more failures queued)\n" % (action, failures_left - 1))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
