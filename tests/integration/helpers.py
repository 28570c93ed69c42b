# -*- coding: utf-8 -*-
# Copyright: contributors to consistent.backup
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Helpers for integration tests: ansible-playbook runs against local hosts, real tmpfs mounts."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
import typing as t

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VENV_BIN = os.path.join(ROOT, ".venv", "bin")
PYTHON = os.path.join(VENV_BIN, "python")

COLLECTIONS = os.path.join(ROOT, ".build", "collections")
FAKEDB = os.path.join(ROOT, "tests", "integration", "files", "fakedb.py")
RECORDER_DIR = os.path.join(ROOT, "tests", "integration", "files", "callback_plugins")


def first_port() -> int:
    """Where this test process starts looking for a free PostgreSQL port: scripts/test.sh runs the integration tests
    in two pytest-xdist workers (gw0, gw1), and each searches its own range, so two never pick one port at once."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    # CONSISTENT_BACKUP_TEST_PORT_BASE moves the whole range, so two test sessions (two checkouts) can run side by side.
    base = int(os.environ.get("CONSISTENT_BACKUP_TEST_PORT_BASE", "25432"))
    return base + 200 * int(worker[2:] or 0)


def ansible_env(extra: t.Optional[t.Dict[str, str]] = None) -> t.Dict[str, str]:
    env = dict(os.environ)
    env.update({
        "ANSIBLE_COLLECTIONS_PATH": COLLECTIONS,
        "ANSIBLE_CONFIG": os.path.join(ROOT, "ansible.cfg"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_FORCE_COLOR": "0",
        "ANSIBLE_SHOW_CUSTOM_STATS": "1",
        "ANSIBLE_LOCALHOST_WARNING": "0",
        "ANSIBLE_INVENTORY_UNPARSED_WARNING": "0",
        "PATH": VENV_BIN + os.pathsep + env.get("PATH", ""),
    })
    env.update(extra or {})
    return env


class PlaybookRun:
    def __init__(self, proc: subprocess.CompletedProcess, results: t.Optional[t.List[t.Dict[str, t.Any]]] = None) -> None:
        self.rc = proc.returncode
        self.out = proc.stdout + proc.stderr
        # Every task result, in order, as files/callback_plugins/record_results.py recorded it.
        self.results = results or []

    def registered(self, name: str, host: t.Optional[str] = None) -> t.Dict[str, t.Any]:
        """The last result a task registered as ``name`` (on ``host``): the value the playbook itself went on with."""
        found = [entry["result"] for entry in self.results
                 if entry["register"] == name and host in (None, entry["host"])]
        assert found, "no task registered %s; the run recorded: %s" % (name, sorted({e["register"] or "-" for e in self.results}))
        return found[-1]

    def failed(self) -> t.List[t.Dict[str, t.Any]]:
        """The results of the tasks that failed (rescued or not; not those with ignore_errors), in order."""
        return [entry["result"] for entry in self.results if entry["status"] == "failed"]

    def failure_messages(self) -> t.List[str]:
        return [str(result.get("msg", "")) for result in self.failed()]

    def stats(self, name: str) -> t.Dict[str, t.Any]:
        """What the run published with set_stats under ``name`` (what AWX shows), merged over the hosts."""
        published: t.Dict[str, t.Any] = {}
        for entry in self.results:
            data = (entry["result"].get("ansible_stats") or {}).get("data") or {}
            published.update(data.get(name) or {})
        return published

    def fact(self, name: str, host: t.Optional[str] = None) -> t.Any:
        """The last value a task set for the fact ``name`` (set_fact) on ``host``."""
        found = [entry["result"]["ansible_facts"][name] for entry in self.results
                 if name in (entry["result"].get("ansible_facts") or {}) and host in (None, entry["host"])]
        assert found, "no task set the fact %s" % name
        return found[-1]

    def __repr__(self) -> str:
        failures = [line for line in self.out.splitlines() if "fatal:" in line or "FAILED!" in line or "ERROR" in line]
        return "PlaybookRun(rc=%d)\n%s\n--- tail ---\n%s" % (self.rc, "\n".join(failures)[-4000:], self.out[-3000:])


def write_inventory(path: str, hosts: t.Dict[str, t.Dict[str, t.Any]]) -> str:
    """A YAML inventory of local hosts (each runs modules with this venv's python)."""
    inventory = {"all": {"hosts": {}}}
    for name, host_vars in hosts.items():
        merged = {"ansible_connection": "local", "ansible_python_interpreter": PYTHON}
        merged.update(host_vars)
        inventory["all"]["hosts"][name] = merged
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(inventory, handle)  # JSON is YAML
    return path


def run_playbook(playbook: str, inventory: str, extra_vars: t.Optional[t.Dict[str, t.Any]] = None,
                 check: bool = False, env: t.Optional[t.Dict[str, str]] = None, timeout: int = 600) -> PlaybookRun:
    cmd = [os.path.join(VENV_BIN, "ansible-playbook"), "-i", inventory, os.path.join(ROOT, "playbooks", playbook)]
    if extra_vars:
        cmd += ["-e", json.dumps(extra_vars)]
    if check:
        cmd.append("--check")
    results_file = tempfile.NamedTemporaryFile(prefix="playbook-results-", suffix=".jsonl", delete=False)
    results_file.close()
    recorder = {"ANSIBLE_CALLBACK_PLUGINS": RECORDER_DIR, "ANSIBLE_CALLBACKS_ENABLED": "record_results",
                "CONSISTENT_BACKUP_TEST_RESULTS": results_file.name}
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=ansible_env(dict(recorder, **(env or {}))), capture_output=True, text=True,
                              timeout=timeout, check=False, stdin=subprocess.DEVNULL)
        with open(results_file.name, encoding="utf-8") as handle:
            results = [json.loads(line) for line in handle if line.strip()]
    finally:
        os.unlink(results_file.name)
    return PlaybookRun(proc, results)


class Tmpfs:
    """A real tmpfs mounted for one test (the tests run as root)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.mounted = False

    def mount(self, size: str = "64m", options: str = "") -> "Tmpfs":
        os.makedirs(self.path, exist_ok=True)
        opts = "size=%s,mode=0755" % size + ("," + options if options else "")
        subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "consistent-test", self.path], check=True)
        self.mounted = True
        return self

    def remount(self, options: str) -> None:
        subprocess.run(["mount", "-o", "remount," + options, self.path], check=True)

    def umount(self) -> None:
        if self.mounted:
            subprocess.run(["umount", "-l", self.path], check=False)
            self.mounted = False


def load_json(path: str) -> t.Any:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def wait_until(predicate: t.Callable[[], t.Any], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError("timed out after %.0f s waiting for %s" % (timeout, what))


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for its reaper counts as gone)."""
    try:
        with open("/proc/%d/stat" % pid, "rb") as handle:
            return handle.read().rsplit(b")", 1)[1].split()[0] not in (b"Z", b"X")
    except OSError:
        return False


def _parents() -> t.Dict[int, int]:
    """{pid: parent pid} of every live process (from /proc/<pid>/stat; the command name may hold spaces and parens)."""
    parents = {}
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open("/proc/%s/stat" % pid, "rb") as handle:
                    parents[int(pid)] = int(handle.read().rsplit(b")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    return parents


def module_processes(module: str, controller: int) -> t.List[int]:
    """Pids of live processes running ``module`` (its AnsiballZ wrapper) below the test's own ``controller`` process:
    the integration tests run in two workers, and a test must never signal the other worker's modules."""
    return processes_below(("AnsiballZ_%s" % module).encode(), controller)


def processes_below(needle: bytes, controller: int) -> t.List[int]:
    """Pids of live processes below ``controller`` whose command line holds ``needle`` (a module, a pre command)."""
    parents = _parents()
    found = []
    for pid in parents:
        ancestor = parents.get(pid)
        while ancestor and ancestor != controller:
            ancestor = parents.get(ancestor)
        if ancestor != controller:
            continue
        try:
            with open("/proc/%d/cmdline" % pid, "rb") as handle:
                if needle in handle.read() and pid_alive(pid):
                    found.append(pid)
        except OSError:
            pass
    return found


def fill_files(directory: str, files: int, mib: int) -> None:
    """``files`` files of ``mib`` MiB of incompressible data each (table00.dat, ...), sorted in copy order."""
    block = os.urandom(1024 * 1024)
    for number in range(files):
        with open(os.path.join(directory, "table%02d.dat" % number), "wb") as handle:
            for _mib in range(mib):
                handle.write(block)


def big_source(tmpfs_factory: t.Callable[..., "Tmpfs"], files: int = 12, mib: int = 96) -> "Tmpfs":
    """A copy source that takes a second or more: ``files`` x ``mib`` MiB of incompressible data on a real tmpfs."""
    source = tmpfs_factory("source", size="%dm" % (files * mib + 64))
    fill_files(source.path, files, mib)
    return source


def start_playbook(playbook: str, inventory_path: str, extra_vars: t.Dict[str, t.Any], log_path: str,
                   env: t.Optional[t.Dict[str, str]] = None) -> subprocess.Popen:
    """ansible-playbook in the background, in a session of its own (so a test can kill the controller alone)."""
    cmd = [os.path.join(VENV_BIN, "ansible-playbook"), "-i", inventory_path, os.path.join(ROOT, "playbooks", playbook),
           "-e", json.dumps(extra_vars)]
    with open(log_path, "w", encoding="utf-8") as log:
        return subprocess.Popen(cmd, cwd=ROOT, env=ansible_env(env), stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)


def inventory(tmp_path: t.Any, **host_vars: t.Any) -> str:
    """One local host, db1."""
    return write_inventory(str(tmp_path / "inventory.yml"), {"db1": host_vars})


def pg_job(cluster: t.Any, media_path: str, backup_id: str, **more: t.Any) -> t.Dict[str, t.Any]:
    """backup.yml's variables for a backup of ``cluster`` (scripts/pgcluster.py) to ``media_path``."""
    values = {
        "backup_engine": "postgresql",
        "backup_dest": media_path,
        "backup_id": backup_id,
        "backup_retry_delay": 0,
        "backup_postgresql_host": cluster.run_dir,
        "backup_postgresql_port": cluster.port,
        "backup_postgresql_user": "postgres",
        "backup_postgresql_runtime_dir": os.path.join(cluster.base_dir, "holders"),
        "backup_postgresql_archive_timeout": 60,
    }
    values.update(more)
    return values
