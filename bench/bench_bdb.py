# -*- coding: utf-8 -*-
# Copyright: contributors to consistent.backup
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Benchmark: playbooks/backup.yml (bdb engine, hot mode, with its recovery proof) vs db_hotbackup, same
environment, same disk, same run.

    .venv/bin/python bench/bench_bdb.py [--mib 1024] [--rounds 3] [--dir /var/tmp/consistent-bench-bdb] [--fs xfs]
                                        [--write-docs]

The environment: four databases (btree with 4, 8 and 16 KiB pages, hash with 4 KiB pages) of incompressible
1000-byte records, about --mib MiB in all, made with the berkeleydb binding; then checkpointed and its old logs
removed, as a long-running environment would look. Ours: the whole ``ansible-playbook playbooks/backup.yml``
(media check, set lock, guard, checkpoint, page-aligned copy with SHA-256 and manifest, then the proof: the set laid
out again - a reflink clone where the filesystem allows it - and checked against the manifest, ``db_recover -c`` and
``db_verify`` of every database, report, COMPLETE), timed from outside. The peer doing the same work
(``db_hotbackup_proof``): ``db5.3_hotbackup -h ENV -b TARGET && sync -f TARGET && db5.3_verify`` of every database
in TARGET, one per core as ours (db_hotbackup copies the data files and logs, then runs catastrophic recovery in
the target itself); plain ``db5.3_hotbackup -h ENV -b TARGET`` is the second line. Rounds alternate, page cache
warm for both.

``--fs xfs``: the destination (sets, the proof's scratch copy, db_hotbackup's target) is a real XFS filesystem with
reflink on a loop device in ``--dir`` (scripts/xfsloop.py; root, xfsprogs), the environment stays on ``--dir``'s
filesystem. The default, ``--fs dir``, puts both in ``--dir``.

Measured in the same run, to show where the floor of the job lies (the target, ratio <= 1.0, is below it here):
- ``floor_job``: the same playbook, without the proof, on a tiny environment (one 4 KiB-page database of a few
  hundred KiB): what the job costs before it copies anything (media check, preflight, guard, set, checkpoint, two
  copies, post, close: Ansible module tasks);
- ``db_verify`` alone: the proof's db_verify seconds of every database (one per core), from report.json;
- ``db_hotbackup_synced``: ``db_hotbackup`` followed by ``sync -f TARGET``, a reference with the durability the job
  gives its set (the set is synced before the manifest vouches for it). The headline ratio (``ratio_equal_work``) is
  against ``db_hotbackup_proof``, the peer doing the same work (issue 16); ``ratio`` stays against plain db_hotbackup.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import time
import typing as t

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "scripts"))
from backup_job import VENV_BIN, alternating_rounds, run_backup_job  # noqa: E402  pylint: disable=wrong-import-position
from xfsloop import XfsLoop, unavailable  # noqa: E402  pylint: disable=wrong-import-position

# name, access method, page size, share of the bytes
DATABASES = (("parts.db", "btree", 4096, 0.25), ("locations.db", "btree", 8192, 0.35),
             ("history.db", "btree", 16384, 0.25), ("index.db", "hash", 4096, 0.15))


def make_environment(home: str, mib: int, databases: t.Sequence[t.Tuple[str, str, int, float]] = DATABASES) -> int:
    from berkeleydb import db  # pylint: disable=import-outside-toplevel
    os.makedirs(os.path.join(home, "data"))
    os.makedirs(os.path.join(home, "logs"))
    with open(os.path.join(home, "DB_CONFIG"), "w", encoding="utf-8") as handle:
        handle.write("set_data_dir data\nset_lg_dir logs\nset_lg_max 10485760\nset_cachesize 0 268435456 1\n")
    env = db.DBEnv()
    env.open(home, db.DB_CREATE | db.DB_INIT_TXN | db.DB_INIT_LOG | db.DB_INIT_LOCK | db.DB_INIT_MPOOL | db.DB_RECOVER)
    env.set_flags(db.DB_TXN_NOSYNC, 1)
    rng = random.Random(7)
    payload = os.urandom(1 << 20)
    for name, method, page, share in databases:
        handle = db.DB(env)
        handle.set_pagesize(page)
        txn = env.txn_begin()
        handle.open(name, dbtype=db.DB_BTREE if method == "btree" else db.DB_HASH, flags=db.DB_CREATE, txn=txn)
        txn.commit()
        records = int(mib * share * (1 << 20) / 1000)
        for start in range(0, records, 2000):
            txn = env.txn_begin()
            for number in range(start, min(records, start + 2000)):
                offset = rng.randrange(0, len(payload) - 1000)
                handle.put(b"%010d" % number, payload[offset:offset + 1000], txn=txn)
            txn.commit()
        handle.close()
        env.txn_checkpoint(0, 0, db.DB_FORCE)
    env.txn_checkpoint(0, 0, db.DB_FORCE)
    for path in env.log_archive(db.DB_ARCH_ABS):
        os.unlink(path)
    env.close()
    return sum(os.path.getsize(os.path.join(home, "data", name)) for name, *_rest in databases)


def ours(home: str, dest: str, backup_id: str, inventory: str, verify: bool = True) -> dict:
    extra = {"backup_engine": "bdb", "backup_dest": dest, "backup_id": backup_id, "backup_retry_delay": 1,
             "backup_media_require_mountpoint": False, "backup_bdb_home": home, "backup_bdb_read_size": "4MiB",
             "backup_bdb_verify": verify}
    wall, report = run_backup_job(inventory, extra)
    assert report["complete"] and report["bdb"]["verification"]["ok"] is (True if verify else None), report
    phases = report["phases"]
    verification = report["bdb"]["verification"] if verify else {}
    seconds = verification.get("seconds") or {}
    layout = verification.get("layout") or {}
    return {"wall": wall, "copy": phases["copy"]["seconds"], "verify": phases["verify"]["seconds"] if verify else 0.0,
            "layout": seconds.get("layout") or 0.0, "db_verify": seconds.get("db_verify") or 0.0,
            "cloned_share": (layout.get("bytes_cloned") or 0) / report["bytes"] if verify else 0.0, "bytes": report["bytes"]}


def peer(home: str, target: str, synced: bool = False, verified: bool = False) -> dict:
    """db_hotbackup (its own catastrophic recovery in the target), with ``synced`` then ``sync -f``, with ``verified``
    then db_verify of every database in the target, one per core at a time as the proof runs them."""
    start = time.monotonic()
    subprocess.run(["db5.3_hotbackup", "-h", home, "-b", target], check=True, capture_output=True)
    if synced or verified:
        subprocess.run(["sync", "-f", target], check=True)
    verify_seconds = 0.0
    if verified:
        began = time.monotonic()
        names = sorted(name for name, *_rest in DATABASES if os.path.exists(os.path.join(target, name)))
        assert len(names) == len(DATABASES), os.listdir(target)
        pending = list(names)
        running = []  # type: t.List[subprocess.Popen]
        while pending or running:
            while pending and len(running) < (os.cpu_count() or 1):
                running.append(subprocess.Popen(["db5.3_verify", "-h", target, pending.pop(0)], stdout=subprocess.DEVNULL,
                                                stderr=subprocess.PIPE))
            done = running.pop(0)
            _out, err = done.communicate()
            assert done.returncode == 0, err
        verify_seconds = time.monotonic() - began
    return {"wall": time.monotonic() - start, "db_verify": verify_seconds}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", default="/var/tmp/consistent-bench-bdb")
    parser.add_argument("--fs", choices=("dir", "xfs"), default="dir",
                        help="xfs: the destination on an XFS reflink loop mount in --dir (root, xfsprogs)")
    parser.add_argument("--write-docs", action="store_true", help="write docs/performance-bdb.png")
    args = parser.parse_args()
    if os.path.exists(args.dir):
        shutil.rmtree(args.dir)
    os.makedirs(args.dir)
    home, dest = os.path.join(args.dir, "env"), os.path.join(args.dir, "dest")
    tiny_home = os.path.join(args.dir, "tiny-env")
    xfs = None
    if args.fs == "xfs":
        if unavailable():
            raise SystemExit("--fs xfs: " + unavailable())
        # room for a set, its proof's scratch copy (were it not cloned) and db_hotbackup's target: about 1.6 x --mib each
        xfs = XfsLoop(os.path.join(args.dir, "xfs.img"), dest, size_mib=max(1024, 6 * args.mib)).mount()
    else:
        os.makedirs(dest)
    inventory = os.path.join(args.dir, "inventory.json")
    with open(inventory, "w", encoding="utf-8") as handle:
        json.dump({"all": {"hosts": {"bench": {"ansible_connection": "local",
                                               "ansible_python_interpreter": os.path.join(VENV_BIN, "python")}}}}, handle)
    try:
        print("making a %d MiB environment ..." % args.mib, flush=True)
        started = time.monotonic()
        data_bytes = make_environment(home, args.mib)
        make_environment(tiny_home, 1, databases=(("parts.db", "btree", 4096, 0.25),))
        print("environment: %.2f GiB of databases in %.0f s" % (data_bytes / 2 ** 30, time.monotonic() - started), flush=True)

        def backup(verify: bool) -> t.Callable[[int], t.Dict[str, float]]:
            def run(round_no: int) -> t.Dict[str, float]:
                backup_id = "bench%d%s" % (round_no, "" if verify else "n")
                figures = ours(home, dest, backup_id, inventory, verify=verify)
                shutil.rmtree(os.path.join(dest, backup_id))
                return figures
            return run

        def floor_job(round_no: int) -> t.Dict[str, float]:
            backup_id = "bench%dtiny" % round_no
            figures = ours(tiny_home, dest, backup_id, inventory, verify=False)
            shutil.rmtree(os.path.join(dest, backup_id))
            return figures

        def hotbackup(synced: bool, verified: bool = False) -> t.Callable[[int], t.Dict[str, float]]:
            def run(_round_no: int) -> t.Dict[str, float]:
                target = os.path.join(dest, "hotbackup")
                figures = peer(home, target, synced=synced, verified=verified)
                shutil.rmtree(target)
                return figures
            return run

        results = alternating_rounds(args.rounds, {"ours": backup(True), "db_hotbackup_proof": hotbackup(True, True),
                                                   "ours_without_proof": backup(False),
                                                   "db_hotbackup": hotbackup(False), "floor_job": floor_job,
                                                   "db_hotbackup_synced": hotbackup(True)})

        def median(name: str, figure: str = "wall") -> float:
            return statistics.median(r[figure] for r in results[name])
        ours_wall, peer_wall, bare_wall = median("ours"), median("db_hotbackup"), median("ours_without_proof")
        proof_wall = median("db_hotbackup_proof")
        summary = {
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "machine": "%s, %d cores" % (platform.platform(), os.cpu_count()),
            "fs": args.fs, "command": " ".join(sys.argv),
            "data_bytes": data_bytes, "set_bytes": results["ours"][0]["bytes"], "rounds": args.rounds,
            "ours_wall_median": round(ours_wall, 3), "db_hotbackup_proof_wall_median": round(proof_wall, 3),
            "ratio_equal_work": round(ours_wall / proof_wall, 3),
            "db_hotbackup_wall_median": round(peer_wall, 3),
            "ratio": round(ours_wall / peer_wall, 3),
            "layout_median": round(median("ours", "layout"), 3), "cloned_share": results["ours"][0]["cloned_share"],
            "db_hotbackup_proof_db_verify_median": round(median("db_hotbackup_proof", "db_verify"), 3),
            "ours_without_proof_wall_median": round(bare_wall, 3), "ratio_without_proof": round(bare_wall / peer_wall, 3),
            "copy_median": round(median("ours", "copy"), 3),
            "verify_median": round(median("ours", "verify"), 3),
            "floor": {"job_on_a_tiny_environment": round(median("floor_job"), 3),
                      "db_verify_alone": round(median("ours", "db_verify"), 3),
                      "db_hotbackup_synced": round(median("db_hotbackup_synced"), 3)},
            "results": results,
        }
        print("\nmedian wall (%s): backup.yml %.2f s (copy %.2f s, verification %.2f s, of which the layout %.2f s, %.0f%% of "
              "the bytes cloned), db_hotbackup + sync -f + db_verify %.2f s, ratio for equal work %.3f; "
              "without the proof %.2f s, db_hotbackup %.2f s, ratio %.3f, without the proof %.3f"
              % (args.fs, ours_wall, summary["copy_median"], summary["verify_median"], summary["layout_median"],
                 100 * summary["cloned_share"], proof_wall, ours_wall / proof_wall, bare_wall, peer_wall, ours_wall / peer_wall,
                 bare_wall / peer_wall))
        floor = summary["floor"]
        print("floor, same run: the job on a tiny environment %.2f s (%.2f x db_hotbackup), db_verify of every database alone "
              "%.2f s (%.2f x); db_hotbackup + sync -f %.2f s (ratio against it %.3f)"
              % (floor["job_on_a_tiny_environment"], floor["job_on_a_tiny_environment"] / peer_wall, floor["db_verify_alone"],
                 floor["db_verify_alone"] / peer_wall, floor["db_hotbackup_synced"], ours_wall / floor["db_hotbackup_synced"]))
        os.makedirs(os.path.join(ROOT, "bench", "results"), exist_ok=True)
        with open(os.path.join(ROOT, "bench", "results", "bdb-%s.json" % time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())),
                  "w", encoding="utf-8") as handle:
            json.dump(summary, handle, indent=2)
        if args.write_docs:
            write_chart(summary)
    finally:
        if xfs is not None:
            xfs.umount()
        shutil.rmtree(args.dir, ignore_errors=True)
    return 0


def write_chart(summary: dict) -> None:
    import matplotlib  # pylint: disable=import-outside-toplevel
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
    names = ["backup.yml\n(copy + proof)", "db_hotbackup\n+ sync -f\n+ db_verify", "backup.yml\n(no proof)",
             "backup.yml,\ntiny env\n(no proof)", "db_hotbackup", "db_hotbackup\n+ sync -f"]
    walls = [[r["wall"] for r in summary["results"][name]]
             for name in ("ours", "db_hotbackup_proof", "ours_without_proof", "floor_job", "db_hotbackup", "db_hotbackup_synced")]
    medians = [statistics.median(w) for w in walls]
    fig, axis = plt.subplots(figsize=(8, 3.8))
    axis.bar(names, medians, yerr=[[m - min(w) for m, w in zip(medians, walls)], [max(w) - m for m, w in zip(medians, walls)]],
             capsize=6, color=["#3572a5", "#777777", "#7fa7cf", "#b9cfe6", "#999999", "#bbbbbb"])
    axis.set_ylabel("seconds (median, min-max)")
    axis.set_title("Berkeley DB 5.3, %.2f GiB environment: ratio %.2f for equal work"
                   % (summary["data_bytes"] / 2 ** 30, summary["ratio_equal_work"]))
    fig.tight_layout()
    fig.savefig(os.path.join(ROOT, "docs", "performance-bdb.png"), dpi=100)


if __name__ == "__main__":
    sys.exit(main())
