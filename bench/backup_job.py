# -*- coding: utf-8 -*-
# Copyright: contributors to consistent.backup
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The engine benchmarks' one way of running the job: ``ansible-playbook playbooks/backup.yml`` from this checkout,
timed from outside, and the set's report.json read back."""

from __future__ import annotations

import json
import os
import subprocess
import time
import typing as t

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
VENV_BIN = os.path.join(ROOT, ".venv", "bin")


def run_backup_job(inventory: str, extra: t.Dict[str, t.Any]) -> t.Tuple[float, t.Dict[str, t.Any]]:
    """The job's wall seconds and its report.json; a failed job stops the benchmark with the playbook's output."""
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=os.path.join(ROOT, ".build", "collections"),
               ANSIBLE_CONFIG=os.path.join(ROOT, "ansible.cfg"))
    start = time.monotonic()
    proc = subprocess.run([os.path.join(VENV_BIN, "ansible-playbook"), "-i", inventory, os.path.join(ROOT, "playbooks", "backup.yml"),
                           "-e", json.dumps(extra)], cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    wall = time.monotonic() - start
    if proc.returncode != 0:
        raise SystemExit("backup.yml failed:\n" + proc.stdout[-4000:] + proc.stderr[-2000:])
    with open(os.path.join(extra["backup_dest"], extra["backup_id"], "report.json"), encoding="utf-8") as handle:
        return wall, json.load(handle)


def alternating_rounds(rounds: int, runners: t.Dict[str, t.Callable[[int], t.Dict[str, float]]]) -> t.Dict[str, t.List[t.Dict[str, float]]]:
    """Each runner once per round, the order reversed every other round (so neither side always runs on a cache
    the other warmed), after a sync; each round's figures printed as they come."""
    results: t.Dict[str, t.List[t.Dict[str, float]]] = {name: [] for name in runners}
    width = max(len(name) for name in runners)
    for round_no in range(rounds):
        order = list(runners) if round_no % 2 == 0 else list(reversed(list(runners)))
        for name in order:
            subprocess.run(["sync"], check=True)
            figures = runners[name](round_no)
            results[name].append(figures)
            print("round %d %-*s %s" % (round_no + 1, width, name,
                                        " ".join("%s=%.3f" % kv for kv in figures.items() if kv[0] != "bytes")), flush=True)
    return results
