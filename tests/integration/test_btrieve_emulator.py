# -*- coding: utf-8 -*-
# Copyright: contributors to consistent.backup
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The butil emulator does what its sources say (each case names the row of ../shared/reference/butil.md or the
article it follows), through its own command line as the module calls it."""

from __future__ import annotations

import os
import subprocess

import pytest

from btrieve_fixtures import Engine, delta


@pytest.fixture
def engine(tmp_path):
    return Engine(str(tmp_path))


def butil(engine, *args):
    proc = subprocess.run([engine.butil] + list(args), capture_output=True, text=True, check=False)
    return proc.returncode, proc.stdout


def data(tmp_path, *names):
    paths = []
    for name in names:
        path = tmp_path / name
        path.write_bytes(b"\0" * 4096)
        paths.append(str(path))
    return paths


def listing(tmp_path, paths):
    path = tmp_path / "list.txt"
    path.write_bytes("".join(p + "\r\n" for p in paths).encode())
    return "@" + str(path)


def test_success_prints_the_banner_butil_139_and_completed_and_makes_the_deltas(tmp_path, engine):
    files = data(tmp_path, "A.MKD", "B.MKD")
    rc, out = butil(engine, "-STARTBU", listing(tmp_path, files))  # options are case-insensitive
    assert rc == 0
    lines = out.splitlines()
    assert lines[0].startswith("Btrieve Maintenance Utility") and lines[2].startswith("BUTIL-139:")
    assert lines[-1] == "The command completed successfully."
    assert all(os.path.exists(delta(path)) for path in files) and engine.continuous() == sorted(files)


def test_start_is_all_or_nothing_a_missing_file_is_status_12(tmp_path, engine):
    files = data(tmp_path, "A.MKD") + [str(tmp_path / "GONE.MKD")]
    rc, out = butil(engine, "-startbu", listing(tmp_path, files))
    assert rc == 2 and "MicroKernel error = 12" in out
    assert engine.continuous() == [] and not os.path.exists(delta(files[0]))


def test_two_files_with_one_base_name_are_status_85_and_an_already_started_file_status_88(tmp_path, engine):
    header, detail = data(tmp_path, "INVOICE.HDR", "INVOICE.DET")
    rc, out = butil(engine, "-startbu", listing(tmp_path, [header, detail]))
    assert rc == 2 and "MicroKernel error = 85" in out and engine.continuous() == []
    assert butil(engine, "-startbu", header)[0] == 0
    rc, out = butil(engine, "-startbu", header)
    assert rc == 2 and "MicroKernel error = 88" in out


def test_wildcards_are_refused(tmp_path, engine):
    data(tmp_path, "A.MKD")
    rc, _out = butil(engine, "-startbu", str(tmp_path / "*.MKD"))
    assert rc == 3 and engine.continuous() == []


def test_writes_go_to_the_delta_and_endbu_slash_a_rolls_them_in(tmp_path, engine):
    (path,) = data(tmp_path, "A.MKD")
    assert butil(engine, "-startbu", path)[0] == 0
    assert engine.write(path, 8, b"\x07") == "delta"
    assert open(path, "rb").read(16) == b"\0" * 16  # pylint: disable=consider-using-with
    assert engine.read(path, 8, 1) == b"\x07"  # readers see their own writes
    assert butil(engine, "-endbu", "/A")[0] == 0
    assert not os.path.exists(delta(path)) and open(path, "rb").read(9)[8:] == b"\x07"  # pylint: disable=consider-using-with


def test_the_engine_down_and_a_login_failure_have_their_statuses(tmp_path, engine):
    (path,) = data(tmp_path, "A.MKD")
    engine.switch("credentials", "admin:right")
    rc, out = butil(engine, "-startbu", path, "-UIDadmin", "-PWDwrong")
    assert rc == 2 and "MicroKernel error = 170" in out
    assert butil(engine, "-startbu", path, "-UIDadmin", "-PWDright")[0] == 0
    assert "-PWD********" in engine.calls()[-1]["argv"]
    engine.switch("engine-down")
    rc, out = butil(engine, "-endbu", path)
    assert rc == 2 and "MicroKernel error = 20" in out


def test_after_a_crash_the_deltas_stay_the_next_start_fails_and_stat_rolls_them_in(tmp_path, engine):
    (path,) = data(tmp_path, "A.MKD")
    engine.startbu(path)
    engine.write(path, 0, b"\x01")
    engine.crash()
    assert os.path.exists(delta(path)) and engine.continuous() == []
    assert butil(engine, "-startbu", path)[0] == 2
    engine.switch("hold-open-only")
    assert butil(engine, "-stat", path)[0] == 0 and os.path.exists(delta(path))  # newer engines: not by -stat
    engine.clear("hold-open-only")
    assert butil(engine, "-stat", path)[0] == 0 and not os.path.exists(delta(path))
    assert open(path, "rb").read(1) == b"\x01"  # pylint: disable=consider-using-with
