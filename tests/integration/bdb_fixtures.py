# -*- coding: utf-8 -*-
# Copyright: contributors to consistent.backup
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Fixtures of the Berkeley DB tests: a real transactional environment made with the PyPI berkeleydb binding
(files/bdb_inventory.py: parts and locations, each transaction adding a quantity to both), its writer process, and
backup.yml's variables for it."""

from __future__ import annotations

import glob
import hashlib
import json
import os
import signal
import subprocess
import typing as t

import pytest

from helpers import PYTHON, ROOT, inventory, pid_alive, run_playbook, wait_until

INVENTORY = os.path.join(ROOT, "tests", "integration", "files", "bdb_inventory.py")


class BdbEnv:
    """An environment in ``<base>/env`` and its writer's state in ``<base>/state``."""

    def __init__(self, base: str, data_dir: str = "data", log_dir: str = "logs", log_max: int = 65536) -> None:
        self.home = os.path.join(base, "env")
        self.state = os.path.join(base, "state")
        self.runtime_dir = os.path.join(base, "run")
        self.log_dir = os.path.join(self.home, log_dir)  # log_dir (and data_dir) may be absolute: outside the home
        os.makedirs(self.state)
        subprocess.run([PYTHON, INVENTORY, "create", self.home, str(log_max), data_dir, log_dir], check=True)
        self.writer: t.Optional[subprocess.Popen] = None

    def start_writer(self) -> None:
        self.writer = subprocess.Popen([PYTHON, INVENTORY, "write", self.home, self.state], stdin=subprocess.DEVNULL)
        wait_until(lambda: self.committed() > 0, 30, "the writer's first commit")

    def write(self, upto: int) -> None:
        """Transactions until the ``upto``th, then a clean close."""
        subprocess.run([PYTHON, INVENTORY, "write", self.home, self.state, str(upto)], check=True, timeout=120)

    def fill(self, mib: int) -> None:
        """bulk.db: about ``mib`` MiB of records, written in transactions, its old logs removed (files/bdb_inventory.py)."""
        subprocess.run([PYTHON, INVENTORY, "fill", self.home, str(mib)], check=True, timeout=600)

    def stop_writer(self) -> None:
        if self.writer is not None and self.writer.poll() is None:
            self.writer.send_signal(signal.SIGTERM)
            self.writer.wait(timeout=30)
        self.writer = None

    def committed(self) -> int:
        """The writer's last acknowledged commit (the transaction number)."""
        try:
            with open(os.path.join(self.state, "committed"), "rb") as handle:
                handle.seek(max(0, os.fstat(handle.fileno()).st_size - 64))
                lines = handle.read().split(b"\n")
        except FileNotFoundError:
            return 0
        complete = [line for line in lines[:-1] if line.strip()]
        return int(complete[-1]) if complete else 0

    def command(self, verb: str) -> t.List[str]:
        return [PYTHON, INVENTORY, verb, self.state]

    def writer_paused(self) -> bool:
        return os.path.exists(os.path.join(self.state, "writer-paused"))

    def calls(self) -> t.List[str]:
        log = os.path.join(self.state, "calls.log")
        return open(log, encoding="utf-8").read().split() if os.path.exists(log) else []

    def logs(self) -> t.List[str]:
        return sorted(os.path.basename(path) for path in glob.glob(os.path.join(self.log_dir, "log.*")))


def inventory_state(home: str) -> t.Dict[str, t.Any]:
    """Per part [total, sum over its locations] and the last committed transaction of a (restored) environment."""
    out = subprocess.run([PYTHON, INVENTORY, "check", home], check=True, capture_output=True, text=True, timeout=60).stdout
    return json.loads(out)


def recovered_state(home: str) -> t.Dict[str, t.Any]:
    """Normal recovery (db5.3_recover) of an environment, which must succeed (after log archival: the logs it still
    needs are there), then its inventory_state."""
    recovered = subprocess.run(["db5.3_recover", "-h", home], capture_output=True, text=True, check=False)
    assert recovered.returncode == 0, recovered.stderr
    return inventory_state(home)


def tree_checksums(path: str) -> t.Dict[str, str]:
    """SHA-256 of every file below ``path`` (an environment's __db.* region files included)."""
    sums = {}
    for root, _dirs, files in os.walk(path):
        for name in files:
            full = os.path.join(root, name)
            with open(full, "rb") as handle:
                sums[os.path.relpath(full, path)] = hashlib.sha256(handle.read()).hexdigest()
    return sums


def bdb_job(env: BdbEnv, dest: str, backup_id: str, **more: t.Any) -> t.Dict[str, t.Any]:
    values = {
        "backup_engine": "bdb",
        "backup_dest": dest,
        "backup_id": backup_id,
        "backup_retry_delay": 0,
        "backup_bdb_home": env.home,
        "backup_runtime_dir": env.runtime_dir,
    }
    values.update(more)
    return values


def restore_vars(dest: str, target: str, backup_id: str = "latest") -> t.Dict[str, t.Any]:
    return {"backup_engine": "bdb", "backup_dest": dest, "backup_id": backup_id, "restore_target": target}


@pytest.fixture
def bdb_env(tmp_path):
    made = BdbEnv(str(tmp_path / "bdb"))
    yield made
    made.stop_writer()
    assert made.writer is None or not pid_alive(made.writer.pid)


def run_module(tmp_path: t.Any, module: str, args: t.Dict[str, t.Any], check: bool = False) -> t.Dict[str, t.Any]:
    """One task of ``module`` with ``args`` on the local host, through ansible-playbook; its registered result."""
    playbook = os.path.join(str(tmp_path), "one-%s.yml" % module)
    with open(playbook, "w", encoding="utf-8") as handle:
        json.dump([{"name": "one module", "hosts": "all", "gather_facts": False, "tasks": [
            {"name": "run " + module, "consistent.backup." + module: args, "register": "outcome", "ignore_errors": True}]}],
            handle)
    run = run_playbook(playbook, inventory(tmp_path), check=check)
    return run.registered("outcome")


def strip_logs(set_path: str, keep: t.Callable[[str], bool], record: bool = False) -> t.List[str]:
    """Remove from a set the logs for which keep(name) is false, from data/ and from manifest.json; with ``record``
    also from the engine's record in the manifest's facts (first_log, last_log), as a copy that never had them would
    be; the names removed."""
    manifest_file = os.path.join(set_path, "manifest.json")
    with open(manifest_file, encoding="utf-8") as handle:
        manifest = json.load(handle)
    removed, files, removed_paths = [], [], []
    for entry in manifest["files"]:
        name = os.path.basename(entry["path"])
        if name.startswith("log.") and not keep(name):
            os.unlink(os.path.join(set_path, "data", entry["path"]))
            removed.append(name)
            removed_paths.append(os.path.join(set_path, "data", entry["path"]))
        else:
            files.append(entry)
    manifest["files"] = files
    if record:
        for directory in {os.path.dirname(path) for path in removed_paths}:
            if os.path.isdir(directory) and not os.listdir(directory):
                os.rmdir(directory)  # a copy that never had the logs has no log directory either
        kept = sorted(os.path.basename(entry["path"]) for entry in files if os.path.basename(entry["path"]).startswith("log."))
        manifest["facts"]["bdb"].update(first_log=kept[0] if kept else None, last_log=kept[-1] if kept else None, logs=len(kept))
    with open(manifest_file, "w", encoding="utf-8") as handle:
        json.dump(manifest, handle)
    return removed
