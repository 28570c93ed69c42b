# -*- coding: utf-8 -*-
# Copyright: contributors to consistent.backup
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The guarded playbook with the btrieve engine against the butil emulator (tests/integration/files/butil.py): the
set is a snapshot of every file at STARTBU although the application wrote during the copy, the writes are in the live
files after ENDBU, and the faults of issue 9 (refusals before butil, retries, engine down, slow roll-in, stale deltas,
the controller killed, check mode)."""

from __future__ import annotations

import json
import os

import pytest

from btrieve_fixtures import Engine, Inventory, Writer, btrieve_job, delta
from helpers import inventory, load_json, run_playbook


@pytest.fixture
def engine(tmp_path):
    return Engine(str(tmp_path))


@pytest.fixture
def shop(tmp_path, engine):
    """The article's inventory application with some stock already booked (consistent: totals = sums)."""
    made = Inventory(str(tmp_path / "zen" / "inventory"), engine)
    made.fill()
    return made


def set_file(media_path, backup_id, path):
    return os.path.join(media_path, backup_id, "data", path.lstrip("/"))


def ledger(media_path, backup_id):
    """The ended attempts (each attempt's start line, result "started", left out)."""
    with open(os.path.join(media_path, backup_id, "phases.jsonl"), encoding="utf-8") as handle:
        return [record for record in map(json.loads, handle) if record["result"] != "started"]


def test_the_set_is_a_snapshot_at_startbu_and_the_writes_during_the_copy_reach_the_live_files(tmp_path, engine, shop, media):
    writer = Writer(shop)
    writer.start()
    try:
        run = run_playbook("backup.yml", inventory(tmp_path), btrieve_job(engine, media.path, "snap", shop.files))
    finally:
        writer.stop.set()
        writer.join(30)
    assert writer.error is None, writer.error
    assert run.rc == 0, run
    assert os.path.exists(os.path.join(media.path, "snap", "COMPLETE"))

    # The application wrote while the files were in continuous operation, and during the copy itself: to the deltas.
    copy = [attempt for attempt in ledger(media.path, "snap") if attempt["phase"] == "copy"][-1]
    to_deltas = [write for write in shop.writes if write["went"] == "delta"]
    during_copy = [write for write in to_deltas if copy["start"] <= write["at"] <= copy["end"]]
    assert len(to_deltas) >= 10, len(to_deltas)
    assert during_copy, "no write during the copy (%.3f-%.3f)" % (copy["start"], copy["end"])

    # The set: both files exactly as they were at STARTBU, so every total equals its sum of locations.
    totals, quantities = shop.read_files(set_file(media.path, "snap", shop.parts_file), set_file(media.path, "snap", shop.locations_file))
    assert (totals, quantities) == writer.before
    assert totals == [sum(row) for row in quantities]

    # After ENDBU the deltas are rolled in: the live files hold every write, and no delta is left.
    assert (totals, quantities) != shop.model_state()
    assert shop.read_files(shop.parts_file, shop.locations_file) == shop.model_state()
    assert not any(os.path.exists(delta(path)) for path in shop.files)
    assert engine.continuous() == []

    # The report: how long the start took, how long the files were in continuous operation, how long the roll-in took.
    report = run.fact("btrieve_report")
    assert float(report["start_seconds"]) >= 0
    assert float(report["continuous_seconds"]) >= copy["end"] - copy["start"]
    assert float(report["rollin_seconds"]) >= 0
    assert engine.commands() == ["-startbu", "-endbu"]
    written = load_json(os.path.join(media.path, "snap", "report.json"))
    assert written["quiesce_source"] == "engine" and written["quiesce_seconds"] >= float(report["continuous_seconds"])
    assert written["continuous_files"] == shop.files and written["files"] == 2
    manifest = load_json(os.path.join(media.path, "snap", "manifest.json"))
    assert manifest["engine"] == "btrieve" and manifest["block_size"] == 4096
    assert manifest["facts"]["files"] == shop.files
