# -*- coding: utf-8 -*-
# Copyright: contributors to consistent.backup
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Fixtures for integration tests: real tmpfs mounts; the tests run as root."""

from __future__ import annotations

import os
import typing as t

import pytest

from helpers import Tmpfs


@pytest.fixture
def tmpfs_factory(tmp_path):
    made: t.List[Tmpfs] = []

    def make(name: str = "backup", size: str = "64m", options: str = "") -> Tmpfs:
        mount = Tmpfs(str(tmp_path / name)).mount(size, options)
        made.append(mount)
        return mount

    yield make
    for mount in made:
        mount.umount()


@pytest.fixture(scope="session", autouse=True)
def _requires_root():
    if os.geteuid() != 0:
        pytest.skip("integration tests mount tmpfs and run PostgreSQL as another user: run them as root")
