# -*- coding: utf-8 -*-
# Copyright: contributors to consistent.backup
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Helpers for integration tests: ansible-playbook runs against local hosts, real tmpfs mounts."""

from __future__ import annotations

import json
import os
import subprocess
import typing as t

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VENV_BIN = os.path.join(ROOT, ".venv", "bin")
PYTHON = os.path.join(VENV_BIN, "python")
COLLECTIONS = os.path.join(ROOT, ".build", "collections")
FAKEDB = os.path.join(ROOT, "tests", "integration", "files", "fakedb.py")


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
    def __init__(self, proc: subprocess.CompletedProcess) -> None:
        self.rc = proc.returncode
        self.out = proc.stdout + proc.stderr

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
    proc = subprocess.run(cmd, cwd=ROOT, env=ansible_env(env), capture_output=True, text=True, timeout=timeout,
                          check=False, stdin=subprocess.DEVNULL)
    return PlaybookRun(proc)


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
