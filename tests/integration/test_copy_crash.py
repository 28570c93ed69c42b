# -*- coding: utf-8 -*-
# Copyright: contributors to consistent.backup
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""aligned_copy killed in the middle of a many-file copy (SIGKILL of the module's processes, as the OOM killer or a
reboot would): no COMPLETE and no manifest are left, and the next run with the same backup id and run id resumes from
the killed run's journal without writing the files it made durable again; the result verifies file by file."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import json

from helpers import ROOT, VENV_BIN, ansible_env, load_json, module_processes, pid_alive, run_playbook, wait_until, write_inventory

FILES = 16000
PLAYBOOK = """
- name: The copy step of a backup
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Copy the tree
      consistent.backup.aligned_copy:
        dest: "{{ copy_dest }}"
        backup_id: many-1
        run_id: run-1
        sources: [{path: "{{ copy_source }}", dest: tree}]
      register: copied

    - name: Keep the result for the test
      ansible.builtin.copy:
        content: "{{ copied | to_json }}"
        dest: "{{ result_file }}"
        mode: "0600"
"""


def make_tree(root: str) -> None:
    """FILES files of 8 to 64 KiB in 40 directories, like the relation files of a database."""
    for number in range(FILES):
        directory = os.path.join(root, "d%02d" % (number % 40))
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, "%06d" % number), "wb") as handle:
            handle.write(hashlib.sha256(b"%d" % number).digest() * (256 * (number % 8 + 1)))


def journal_lines(set_path: str) -> int:
    try:
        with open(os.path.join(set_path, ".copy-journal"), "rb") as handle:
            return handle.read().count(b"\n")
    except FileNotFoundError:
        return 0


def journaled(set_path: str) -> dict:
    entries = {}
    with open(os.path.join(set_path, ".copy-journal"), "rb") as handle:
        for line in handle.read().splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            entries[entry["path"]] = entry
    return entries


def test_a_killed_many_file_copy_resumes_without_rewriting_what_it_made_durable_and_verifies(tmp_path):
    source, dest = str(tmp_path / "db"), str(tmp_path / "backup")
    make_tree(source)
    os.makedirs(dest)
    set_path = os.path.join(dest, "many-1")
    playbook = tmp_path / "copy.yml"
    playbook.write_text(PLAYBOOK)
    inventory = write_inventory(str(tmp_path / "inventory.yml"), {"localhost": {}})
    extra = {"copy_dest": dest, "copy_source": source, "result_file": str(tmp_path / "result.json")}

    with open(str(tmp_path / "killed.log"), "w", encoding="utf-8") as log:
        controller = subprocess.Popen([os.path.join(VENV_BIN, "ansible-playbook"), "-i", inventory, str(playbook), "-e", json.dumps(extra)],
                                      cwd=ROOT, env=ansible_env(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        wait_until(lambda: journal_lines(set_path) > 0 or controller.poll() is not None, 120, "the copy's first journal entries")
        assert controller.poll() is None, "the copy ended before it could be killed in the middle"
        pids = module_processes("aligned_copy", controller.pid)
        assert pids
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not any(pid_alive(pid) for pid in pids), 30, "the killed module")
        assert controller.wait(timeout=120) != 0
    finally:
        if controller.poll() is None:
            controller.kill()
            controller.wait()

    assert not os.path.exists(os.path.join(set_path, "COMPLETE"))
    assert not os.path.exists(os.path.join(set_path, "manifest.json"))
    done = journaled(set_path)
    assert 0 < len(done) < FILES
    before = dict((rel, os.stat(os.path.join(set_path, "data", rel))) for rel in done)

    run = run_playbook(str(playbook), inventory, extra)
    assert run.rc == 0, run
    result = load_json(str(tmp_path / "result.json"))
    assert result["plan"]["resumed"] is True
    assert result["files"] == FILES
    assert result["skipped_identical"] >= len(done)
    assert result["copied"] == FILES - result["skipped_identical"]
    for rel, was in before.items():
        now = os.stat(os.path.join(set_path, "data", rel))
        assert (now.st_ino, now.st_mtime_ns, now.st_ctime_ns) == (was.st_ino, was.st_mtime_ns, was.st_ctime_ns), rel

    manifest = load_json(os.path.join(set_path, "manifest.json"))
    listed = dict((e["path"], e) for e in manifest["files"] if e["type"] == "file")
    on_medium = {}
    for directory, _dirs, names in os.walk(os.path.join(set_path, "data")):
        for name in names:
            path = os.path.join(directory, name)
            with open(path, "rb") as handle:
                content = handle.read()
            on_medium[os.path.relpath(path, os.path.join(set_path, "data"))] = (len(content), hashlib.sha256(content).hexdigest())
    assert on_medium == dict((rel, (e["size"], e["sha256"])) for rel, e in listed.items())
    assert len(on_medium) == FILES
    assert sorted(os.listdir(set_path)) == ["data", "manifest.json"]
