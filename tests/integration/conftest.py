# -*- coding: utf-8 -*-
# Copyright: contributors to consistent.backup
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Fixtures for integration tests: real tmpfs mounts, real PostgreSQL clusters, the files engine's stand-in
database; the tests run as root."""

from __future__ import annotations

import os
import sys
import typing as t

import pytest

from helpers import ROOT, Tmpfs, first_port

sys.path.insert(0, os.path.join(ROOT, "scripts"))
from pgcluster import Cluster, free_port  # noqa: E402  pylint: disable=wrong-import-position
from xfsloop import XfsLoop, unavailable  # noqa: E402  pylint: disable=wrong-import-position

CLUSTERS = "/var/tmp/consistent-backup/tests"


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


@pytest.fixture
def xfs_reflink(tmp_path):
    """A real XFS filesystem with reflink on a loop device (a 600 MiB sparse file), unmounted and detached at the end,
    whatever the test did."""
    reason = unavailable()
    if reason:
        pytest.skip("no XFS reflink filesystem: " + reason)
    made = XfsLoop(str(tmp_path / "xfs.img"), str(tmp_path / "xfs")).mount()
    try:
        yield made
    finally:
        made.umount()


@pytest.fixture(scope="session", autouse=True)
def _requires_root():
    if os.geteuid() != 0:
        pytest.skip("integration tests mount tmpfs and run PostgreSQL as another user: run them as root")


@pytest.fixture
def cluster(request):
    """A fresh cluster of the requested version with WAL archiving, pgbench data, stopped and removed at the end."""
    version = request.param if hasattr(request, "param") else 18
    port = free_port(first_port())
    while os.path.exists(os.path.join(CLUSTERS, "pg%d-%d" % (version, port))):  # another run's cluster
        port = free_port(port + 1)
    made = Cluster(version, os.path.join(CLUSTERS, "pg%d-%d" % (version, port)), port)
    made.init(archive=True)
    made.start()
    made.pgbench(["-i", "-q", "-s", "5"])
    yield made
    made.destroy()


@pytest.fixture
def media(tmpfs_factory):
    return tmpfs_factory("backup", size="1g")


@pytest.fixture
def fakedb(tmp_path):
    """A small database directory and the state of its operator commands (tests/integration/files/fakedb.py)."""
    state = tmp_path / "fakedb-state"
    state.mkdir()
    data = tmp_path / "db"
    data.mkdir()
    (data / "table.dat").write_bytes(os.urandom(300_000))

    class FakeDb:
        state_dir = str(state)
        data_dir = str(data)
        runtime_dir = str(state / "run")

        def calls(self):
            log = state / "calls.log"
            return log.read_text().split("\n")[:-1] if log.exists() else []

        def db_state(self):
            path = state / "state"
            return path.read_text() if path.exists() else "open"

        def fail_next(self, action, times):
            (state / ("fail-" + action)).write_text(str(times))

        def sleep(self, action, seconds):
            (state / ("sleep-" + action)).write_text(str(seconds))

    return FakeDb()
