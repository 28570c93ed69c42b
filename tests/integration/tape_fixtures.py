# -*- coding: utf-8 -*-
# Copyright: contributors to consistent.backup
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A tape library for tests: a changer double (files/mtx.py) and a drive double (files/fake_tape.py).

Nothing here is used outside tests/. The modules reach the drive double through the test seam (docs/tape.md): a playbook
run with TAPE_DOUBLE_ENV loads files/tape_seam/sitecustomize.py in each module's process, which swaps _tape's
OPS_FACTORY for the double; unit tests swap it with ``use_tape_double``. The changer double is reached through the
modules' ``mtx`` option.
"""

from __future__ import annotations

import io
import json
import os
import sys
import tarfile
import typing as t

FILES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "files")
if FILES not in sys.path:
    sys.path.insert(0, FILES)

import fake_tape  # noqa: E402  pylint: disable=wrong-import-position

MTX = os.path.join(FILES, "mtx")
TAPEINFO = os.path.join(FILES, "tapeinfo")
FAKE_TAPE = os.path.join(FILES, "fake_tape.py")
TAPE_SEAM = os.path.join(FILES, "tape_seam")
# The environment of a playbook run whose tape modules use the drive double (files/tape_seam/sitecustomize.py).
TAPE_DOUBLE_ENV = {"CONSISTENT_BACKUP_TEST_TAPE_DOUBLE": FAKE_TAPE,
                   "PYTHONPATH": os.pathsep.join(filter(None, [TAPE_SEAM, os.environ.get("PYTHONPATH")]))}


def use_tape_double(monkeypatch: t.Any) -> None:
    """In this process (unit tests), the tape modules' kernel layer is the drive double."""
    from ansible_collections.consistent.backup.plugins.module_utils import _tape  # pylint: disable=import-outside-toplevel
    monkeypatch.setattr(_tape, "OPS_FACTORY", fake_tape.make_ops)


class Library:
    """A changer with slots and one drive; ``drive`` is the drive double's directory (its "device" path)."""

    def __init__(self, root: str, slots: t.Dict[int, t.Optional[str]], loaded: t.Optional[str] = None,
                 loaded_from: t.Optional[int] = None, import_export: t.Sequence[int] = (), **drive_state: t.Any) -> None:
        os.makedirs(root, exist_ok=True)
        self.drive = fake_tape.create(os.path.join(root, "nst0"), loaded=loaded is not None, volume=loaded,
                                      file=0 if loaded else -1, **drive_state)
        self.changer = os.path.join(root, "changer.json")
        self.write({"name": "/dev/sg6", "slots": {str(k): v for k, v in slots.items()}, "import_export": list(import_export),
                    "drives": {"0": {"tag": loaded, "source": loaded_from, "device": self.drive}}})

    def state(self) -> t.Dict[str, t.Any]:
        with open(self.changer, encoding="utf-8") as handle:
            return json.load(handle)

    def write(self, state: t.Dict[str, t.Any]) -> None:
        with open(self.changer, "w", encoding="utf-8") as handle:
            json.dump(state, handle)

    def update(self, **changes: t.Any) -> None:
        self.write(dict(self.state(), **changes))

    def tape(self) -> t.Dict[str, t.Any]:
        return fake_tape.load(self.drive)

    def set_tape(self, **changes: t.Any) -> None:
        fake_tape.save(self.drive, dict(self.tape(), **changes))

    def mtx_calls(self) -> t.List[str]:
        path = self.changer + ".calls"
        if not os.path.exists(path):
            return []
        with open(path, encoding="utf-8") as handle:
            return [line.rstrip("\n") for line in handle]

    def tape_file(self, volume: str, number: int) -> str:
        return fake_tape.tape_file(self.drive, volume, number)

    def records(self) -> t.List[t.Tuple[str, int, int]]:
        """Every write(2) the drive saw: (volume, file, bytes)."""
        path = os.path.join(self.drive, "records.log")
        if not os.path.exists(path):
            return []
        with open(path, encoding="utf-8") as handle:
            return [(parts[0], int(parts[1]), int(parts[2])) for parts in (line.split() for line in handle)]


def tar_members(path: str) -> t.Dict[str, bytes]:
    """The regular members of a tar stream on a tape file stand-in, by name."""
    with open(path, "rb") as handle:
        data = handle.read()
    members = {}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r|") as archive:
        for member in archive:
            if member.isfile():
                members[member.name] = archive.extractfile(member).read()
    return members
