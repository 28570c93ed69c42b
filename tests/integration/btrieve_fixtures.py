# -*- coding: utf-8 -*-
# Copyright: contributors to consistent.backup
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The Btrieve tests' engine (tests/integration/files/butil.py, the butil emulator) and the article's inventory
application: a part file whose records hold each part's total quantity, and a location file whose records hold the
quantity of each part in each location, written without transactions - the total first, then the location."""

from __future__ import annotations

import importlib.util
import json
import os
import random
import struct
import threading
import time
import typing as t

from helpers import PYTHON, ROOT

EMULATOR = os.path.join(ROOT, "tests", "integration", "files", "butil.py")
RECORD = 16  # bytes per record; the value is the first 8 bytes (little-endian)


def _load_emulator() -> t.Any:
    spec = importlib.util.spec_from_file_location("butil_emulator", EMULATOR)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Engine:
    """One emulated engine: its state directory and a ``butil`` that uses it (a wrapper script, so the guard's
    detached post finds the same engine without inheriting anything)."""

    def __init__(self, base: str) -> None:
        self.home = os.path.join(base, "engine")
        os.makedirs(self.home, exist_ok=True)
        bindir = os.path.join(base, "bin")
        os.makedirs(bindir, exist_ok=True)
        self.butil = os.path.join(bindir, "butil")
        with open(self.butil, "w", encoding="utf-8") as handle:
            handle.write("#!/bin/sh\nBUTIL_EMULATOR_HOME='%s' exec '%s' '%s' \"$@\"\n" % (self.home, PYTHON, EMULATOR))
        os.chmod(self.butil, 0o755)
        self.state_dir = os.path.join(base, "run", "btrieve")
        self._emulator = _load_emulator()

    def _env(self) -> t.Any:
        os.environ["BUTIL_EMULATOR_HOME"] = self.home
        return self._emulator

    def switch(self, name: str, value: str = "") -> None:
        with open(os.path.join(self.home, name), "w", encoding="utf-8") as handle:
            handle.write(value)

    def clear(self, name: str) -> None:
        if os.path.exists(os.path.join(self.home, name)):
            os.unlink(os.path.join(self.home, name))

    def calls(self) -> t.List[t.Dict[str, t.Any]]:
        path = os.path.join(self.home, "calls.log")
        if not os.path.exists(path):
            return []
        with open(path, encoding="utf-8") as handle:
            return [json.loads(line) for line in handle if line.strip()]

    def commands(self) -> t.List[str]:
        """Each butil call's command (-startbu, -endbu, -stat), in order."""
        return [call["argv"][0].lower() for call in self.calls()]

    def continuous(self) -> t.List[str]:
        """The files the engine has in continuous operation."""
        return sorted(self._env().load_state()["continuous"])

    def write(self, path: str, offset: int, data: bytes) -> str:
        return self._env().engine_write(path, offset, data)

    def read(self, path: str, offset: int, length: int) -> bytes:
        return self._env().engine_read(path, offset, length)

    def startbu(self, *paths: str, login: t.Sequence[str] = ()) -> None:
        """Put files into continuous operation as another client would (butil's own command line, with ``login`` on a
        secured engine)."""
        listing = os.path.join(self.home, "other-client.lst")
        with open(listing, "wb") as handle:
            handle.write("".join(path + "\r\n" for path in paths).encode("utf-8"))
        assert self._env().main(["-startbu", "@" + listing] + list(login)) == 0

    def endbu_all(self) -> None:
        assert self._env().main(["-endbu", "-A"]) == 0

    def crash(self) -> None:
        self._env().main(["emu-crash"])


def delta(path: str) -> str:
    return os.path.splitext(path)[0] + ".^^^"


class Inventory:
    """PART.MKD: part i's total at record i. LOC.MKD: part i's quantity in location j at record i * locations + j."""

    def __init__(self, directory: str, engine: Engine, parts: int = 8, locations: int = 4, mib: int = 32) -> None:
        os.makedirs(directory, exist_ok=True)
        self.parts_file = os.path.join(directory, "PART.MKD")
        self.locations_file = os.path.join(directory, "LOC.MKD")
        self.files = [self.parts_file, self.locations_file]
        self.engine = engine
        self.parts, self.locations = parts, locations
        for path in self.files:
            with open(path, "wb") as handle:
                handle.truncate(mib * 1024 * 1024)  # room (sparse) so that the copy takes a moment
        self.model = {(part, location): 0 for part in range(parts) for location in range(locations)}
        self.writes: t.List[t.Dict[str, t.Any]] = []

    @staticmethod
    def _value(raw: bytes) -> int:
        return struct.unpack("<q", raw[:8])[0]

    def add(self, part: int, location: int, quantity: int, pause: float = 0.0) -> None:
        """The application's non-transactional update: the part's total, then the location's quantity."""
        total = self._value(self.engine.read(self.parts_file, part * RECORD, 8)) + quantity
        went = self.engine.write(self.parts_file, part * RECORD, struct.pack("<q", total))
        self.writes.append({"at": time.time(), "file": "part", "went": went})
        if pause:
            time.sleep(pause)
        offset = (part * self.locations + location) * RECORD
        held = self._value(self.engine.read(self.locations_file, offset, 8)) + quantity
        went = self.engine.write(self.locations_file, offset, struct.pack("<q", held))
        self.writes.append({"at": time.time(), "file": "location", "went": went})
        self.model[(part, location)] += quantity

    def fill(self, updates: int = 40) -> None:
        rng = random.Random(9)
        for _update in range(updates):
            self.add(rng.randrange(self.parts), rng.randrange(self.locations), rng.randrange(1, 50))

    def read_files(self, parts_file: str, locations_file: str) -> t.Tuple[t.List[int], t.List[t.List[int]]]:
        """(totals, quantities per location) as two files hold them on disk (not through the engine)."""
        with open(parts_file, "rb") as handle:
            parts = handle.read(self.parts * RECORD)
        with open(locations_file, "rb") as handle:
            locations = handle.read(self.parts * self.locations * RECORD)
        totals = [self._value(parts[i * RECORD:(i + 1) * RECORD]) for i in range(self.parts)]
        quantities = [[self._value(locations[(i * self.locations + j) * RECORD:][:RECORD]) for j in range(self.locations)]
                      for i in range(self.parts)]
        return totals, quantities

    def model_state(self) -> t.Tuple[t.List[int], t.List[t.List[int]]]:
        quantities = [[self.model[(i, j)] for j in range(self.locations)] for i in range(self.parts)]
        return [sum(row) for row in quantities], quantities


class Writer(threading.Thread):
    """The application at work: from the moment the files are in continuous operation, one update after another
    (total, short pause, location) until stopped. Idle before the start, as the article advises around each operation."""

    def __init__(self, inventory: Inventory, pause: float = 0.003) -> None:
        super().__init__(daemon=True)
        self.inventory = inventory
        self.pause = pause
        self.stop = threading.Event()
        self.before: t.Optional[t.Tuple[t.List[int], t.List[t.List[int]]]] = None
        self.error: t.Optional[BaseException] = None

    def run(self) -> None:
        try:
            rng = random.Random(17)
            while not self.stop.is_set() and not set(self.inventory.files) <= set(self.inventory.engine.continuous()):
                time.sleep(0.005)
            self.before = self.inventory.model_state()
            while not self.stop.is_set():
                self.inventory.add(rng.randrange(self.inventory.parts), rng.randrange(self.inventory.locations),
                                   rng.randrange(1, 50), self.pause)
        except BaseException as exc:  # pylint: disable=broad-except
            self.error = exc


def btrieve_job(engine: Engine, media_path: str, backup_id: str, files: t.Sequence[str], **more: t.Any) -> t.Dict[str, t.Any]:
    """backup.yml's variables for a backup of ``files`` through ``engine``."""
    values = {
        "backup_engine": "btrieve",
        "backup_dest": media_path,
        "backup_id": backup_id,
        "backup_retry_delay": 0,
        "backup_btrieve_files": list(files),
        "backup_btrieve_butil": engine.butil,
        "backup_btrieve_timeout": 30,
        "backup_runtime_dir": os.path.dirname(engine.state_dir),
    }
    values.update(more)
    return values
