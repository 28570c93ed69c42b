# -*- coding: utf-8 -*-
# Copyright: contributors to consistent.backup
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""aligned_copy in check mode, the preflight the roles run before pre, against a real small tmpfs: the plan's bytes
to write plus the free space margin are compared with the medium's free space, and nothing is written."""

from __future__ import annotations

import os
import typing as t

import pytest

from helpers import Tmpfs, load_json, run_playbook, write_inventory

KIB = 1024
MIB = 1024 * 1024


@pytest.fixture
def medium(tmp_path):
    """A real 1 MiB tmpfs: the backup medium."""
    tmpfs = Tmpfs(str(tmp_path / "medium")).mount(size="1m")
    try:
        yield tmpfs.path
    finally:
        tmpfs.umount()


def source_of(tmp_path, size: int) -> str:
    path = tmp_path / "db"
    path.mkdir()
    (path / "table.dat").write_bytes(os.urandom(size))
    return str(path)


PLAYBOOK = """
- name: aligned_copy as the roles run it before pre
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Preflight of the copy
      consistent.backup.aligned_copy:
        dest: "{{ copy_dest }}"
        backup_id: b1
        sources: [{path: "{{ copy_source }}"}]
        free_space_margin: "{{ copy_margin | default(omit) }}"
      register: preflight
      ignore_errors: true

    - name: Keep the result for the test
      ansible.builtin.copy:
        content: "{{ preflight | to_json }}"
        dest: "{{ result_file }}"
        mode: "0600"
      check_mode: false
"""


def aligned_copy_check(tmp_path, dest: str, source: str, margin: t.Optional[int] = None) -> dict:
    """Run the module once through ansible-playbook --check; return its registered result."""
    playbook = tmp_path / "preflight.yml"
    playbook.write_text(PLAYBOOK)
    inventory = write_inventory(str(tmp_path / "inventory.yml"), {"localhost": {}})
    extra = {"copy_dest": dest, "copy_source": source, "result_file": str(tmp_path / "result.json")}
    if margin is not None:
        extra["copy_margin"] = margin
    run = run_playbook(str(playbook), inventory, extra, check=True)
    assert run.rc == 0, run
    return load_json(str(tmp_path / "result.json"))


def free_bytes(path: str) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def test_check_mode_refuses_a_plan_larger_than_the_medium_and_says_needed_and_free(tmp_path, medium):
    source = source_of(tmp_path, 2 * MIB)
    free = free_bytes(medium)
    result = aligned_copy_check(tmp_path, medium, source)
    assert result["failed"] is True
    assert result["retryable"] is False
    assert result["msg"].startswith(
        "not enough free space on %s (dest) for the copy: it needs 2.2 MiB (2097152 bytes to write + 10%% free_space_margin for "
        "growth = 2306868 bytes) but the filesystem has 1.0 MiB (%d bytes) free" % (medium, free))
    assert os.listdir(medium) == []


def test_check_mode_refuses_a_plan_that_fits_only_without_the_margin_and_names_the_margin(tmp_path, medium):
    source = source_of(tmp_path, 1000 * KIB)
    result = aligned_copy_check(tmp_path, medium, source)
    assert result["failed"] is True
    assert "1024000 bytes to write + 10% free_space_margin for growth = 1126400 bytes" in result["msg"]
    assert "lower free_space_margin if the sources cannot grow during the copy" in result["msg"]
    assert os.listdir(medium) == []


def test_check_mode_accepts_a_plan_that_fits_with_the_margin_and_reports_the_figures(tmp_path, medium):
    source = source_of(tmp_path, 1000 * KIB)
    result = aligned_copy_check(tmp_path, medium, source, margin=0)
    assert result.get("failed") is not True, result.get("msg")
    assert result["changed"] is True
    assert (result["plan"]["free_needed"], result["plan"]["free_required"]) == (1000 * KIB, 1000 * KIB)
    assert result["plan"]["free_available"] == free_bytes(medium)
    assert os.listdir(medium) == []
