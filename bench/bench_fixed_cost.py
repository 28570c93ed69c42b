# -*- coding: utf-8 -*-
# Copyright: contributors to consistent.backup
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Benchmark: the backup job's fixed cost against Ansible's own floor, measured in one run, alternating.

    .venv/bin/python bench/bench_fixed_cost.py [--rounds 5] [--hosts 16] [--dir /var/tmp/consistent-bench-fixed]
                                               [--where]

- ``files_job`` vs ``ping8``: playbooks/backup.yml, files engine, one 64 KiB file, on one local host, against a
  playbook of 8 ``ansible.builtin.ping`` tasks on the same host;
- ``files_job_16`` vs ``ping8_16``: the same on ``--hosts`` local hosts with forks equal to the hosts (each host backs
  up its own file, so each has its own database and guard);
- ``bdb_job``: playbooks/backup.yml, bdb engine, a tiny environment, without the proof (its fixed cost).
Each runs once per round, the order reversed every other round (bench/backup_job.alternating_rounds); medians and
the ratios job / ping are printed. ``--where`` also runs the tiny files job once with a timing callback
(bench/callback_plugins/task_timer.py) and prints each task's seconds, module tasks and controller-side tasks apart.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
import typing as t

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from backup_job import VENV_BIN, alternating_rounds  # noqa: E402  pylint: disable=wrong-import-position

PING8 = [{"name": "eight pings", "hosts": "all", "gather_facts": False,
          "tasks": [{"name": "ping %d" % number, "ansible.builtin.ping": {}} for number in range(8)]}]


def write_inventory(path: str, hosts: int, base: str) -> str:
    members = {}
    for number in range(hosts):
        name = "bench%02d" % number
        source = os.path.join(base, "src", name)
        os.makedirs(source, exist_ok=True)
        with open(os.path.join(source, "table.dat"), "wb") as handle:
            handle.write(os.urandom(64 * 1024))
        members[name] = {"ansible_connection": "local", "ansible_python_interpreter": os.path.join(VENV_BIN, "python"),
                         "backup_files_paths": [source]}
    with open(path, "w", encoding="utf-8") as handle:
        json.dump({"all": {"hosts": members}}, handle)
    return path


def playbook(path: str, inventory: str, extra: t.Optional[t.Dict[str, t.Any]] = None, forks: int = 5,
             env: t.Optional[t.Dict[str, str]] = None) -> float:
    environ = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=os.path.join(ROOT, ".build", "collections"),
                   ANSIBLE_CONFIG=os.path.join(ROOT, "ansible.cfg"), **(env or {}))
    argv = [os.path.join(VENV_BIN, "ansible-playbook"), "-i", inventory, "-f", str(forks), path]
    if extra:
        argv += ["-e", json.dumps(extra)]
    start = time.monotonic()
    proc = subprocess.run(argv, cwd=ROOT, env=environ, capture_output=True, text=True, check=False)
    wall = time.monotonic() - start
    if proc.returncode != 0:
        raise SystemExit("%s failed:\n%s%s" % (path, proc.stdout[-4000:], proc.stderr[-2000:]))
    return wall


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--hosts", type=int, default=16)
    parser.add_argument("--dir", default="/var/tmp/consistent-bench-fixed")
    parser.add_argument("--where", action="store_true", help="print where a tiny files job's seconds go")
    args = parser.parse_args()
    if os.path.exists(args.dir):
        shutil.rmtree(args.dir)
    dest, run_dir = os.path.join(args.dir, "dest"), os.path.join(args.dir, "run")
    os.makedirs(dest)
    one = write_inventory(os.path.join(args.dir, "one.json"), 1, args.dir)
    many = write_inventory(os.path.join(args.dir, "many.json"), args.hosts, args.dir)
    ping8 = os.path.join(args.dir, "ping8.yml")
    with open(ping8, "w", encoding="utf-8") as handle:
        json.dump(PING8, handle)
    backup = os.path.join(ROOT, "playbooks", "backup.yml")
    job = {"backup_engine": "files", "backup_dest": dest, "backup_retry_delay": 0,
           "backup_media_require_mountpoint": False, "backup_runtime_dir": run_dir}
    tiny_home = os.path.join(args.dir, "tiny-env")
    subprocess.run([os.path.join(VENV_BIN, "python"), os.path.join(ROOT, "tests", "integration", "files", "bdb_inventory.py"),
                    "create", tiny_home, "65536", "data", "logs"], check=True)
    bdb = {"backup_engine": "bdb", "backup_dest": dest, "backup_retry_delay": 0, "backup_media_require_mountpoint": False,
           "backup_runtime_dir": run_dir, "backup_bdb_home": tiny_home, "backup_bdb_verify": False}

    def fresh(figure: t.Callable[[], float]) -> t.Callable[[int], t.Dict[str, float]]:
        def run(_round_no: int) -> t.Dict[str, float]:
            wall = figure()
            for name in os.listdir(dest):
                shutil.rmtree(os.path.join(dest, name))
            return {"wall": wall}
        return run

    if args.where:
        times = os.path.join(args.dir, "times.jsonl")
        playbook(backup, one, dict(job, backup_id="where"), env={
            "ANSIBLE_CALLBACK_PLUGINS": os.path.join(HERE, "callback_plugins"), "ANSIBLE_CALLBACKS_ENABLED": "task_timer",
            "CONSISTENT_BACKUP_TASK_TIMES": times})
        with open(times, encoding="utf-8") as handle:
            rows = [json.loads(line) for line in handle]
        modules = [row for row in rows if row["action"].startswith("consistent.backup.") and row["status"] != "skipped"]
        print("where a tiny files job's seconds go (one run):")
        for row in rows:
            print("  %6.3f s  %-8s %-40s %s" % (row["end"] - row["start"], row["status"], row["action"], row["task"]))
        print("  %d tasks reported, %d module tasks of this collection ran: %.3f s; the rest %.3f s" % (
            len(rows), len(modules), sum(r["end"] - r["start"] for r in modules),
            sum(r["end"] - r["start"] for r in rows if r not in modules)))
        shutil.rmtree(os.path.join(dest, "where"))

    runners = {
        "files_job": fresh(lambda: playbook(backup, one, job)),
        "ping8": fresh(lambda: playbook(ping8, one)),
        "files_job_%d" % args.hosts: fresh(lambda: playbook(backup, many, job, forks=args.hosts)),
        "ping8_%d" % args.hosts: fresh(lambda: playbook(ping8, many, forks=args.hosts)),
        "bdb_job": fresh(lambda: playbook(backup, one, bdb)),
    }
    results = alternating_rounds(args.rounds, runners)
    medians = {name: statistics.median(row["wall"] for row in rows) for name, rows in results.items()}
    for name, median in medians.items():
        print("median %-14s %.3f s" % (name, median))
    print("ratio files_job / ping8: %.2f" % (medians["files_job"] / medians["ping8"]))
    many_ratio = medians["files_job_%d" % args.hosts] / medians["ping8_%d" % args.hosts]
    print("ratio files_job_%d / ping8_%d: %.2f" % (args.hosts, args.hosts, many_ratio))
    print("ratio bdb_job / ping8: %.2f" % (medians["bdb_job"] / medians["ping8"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
