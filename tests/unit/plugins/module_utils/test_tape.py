# -*- coding: utf-8 -*-
# Copyright: contributors to consistent.backup
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The tape decoder (struct mtget), the errno mapping, polling, the needs and the label/catalog rules.

Packed ``struct mtget`` bytes are built with struct.pack from the layout in ../shared/reference/tape.md and the
mt-st outputs quoted there ("General status bits on (41010000)" and so on); the kernel is an injected layer.
"""

from __future__ import annotations

import errno
import os
import struct

import pytest

from ansible_collections.consistent.backup.plugins.module_utils import _tape


def mtget(gstat: int, fileno: int = 0, blkno: int = 0, dsreg: int = 0x46 << 24, erreg: int = 0) -> bytes:
    return struct.pack("@5l2i", 0x72, 0, dsreg, gstat, erreg, fileno, blkno)


# The states of reference/tape.md, with the status word mt printed for each.
LOADED_AT_BOT = mtget(0x41010000)
WRITE_PROTECTED = mtget(0x45010000)
NO_TAPE = mtget(0x50000, fileno=-1, blkno=-1, dsreg=0)
LOADING = mtget(0x10000, fileno=-1, blkno=-1, dsreg=0)
AFTER_ONE_FILE = mtget(0x81010000, fileno=1, blkno=0)
AT_EOD = mtget(0x09010000, fileno=3, blkno=0)


class Kernel(_tape.TapeOps):
    """An injected kernel: each MTIOCGET answers the next of ``answers`` (bytes, or an errno to raise)."""

    def __init__(self, *answers, open_errno=None):
        self.answers = list(answers)
        self.open_errno = open_errno
        self.opened = []
        self.requests = []

    def open(self, path, flags):
        self.opened.append(flags)
        if self.open_errno:
            raise OSError(self.open_errno, os.strerror(self.open_errno))
        return 99

    def ioctl(self, fd, request, arg):
        self.requests.append((request, len(arg)))
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, int):
            raise OSError(answer, os.strerror(answer))
        return answer

    def close(self, fd):
        pass


def test_struct_sizes_and_ioctl_numbers_come_from_the_formats():
    assert _tape.MTGET_SIZE == struct.calcsize("@5l2i")
    if struct.calcsize("l") == 8:  # x86_64: the numbers of reference/tape.md
        assert _tape.MTGET_SIZE == 48
        assert _tape.MTIOCGET == 0x80306D02
        assert _tape.MTIOCTOP == 0x40086D01
        assert _tape.MTIOCPOS == 0x80086D03


def test_loaded_at_bot_is_ready_writable_at_file_zero():
    status = _tape.decode_mtget(LOADED_AT_BOT)
    assert status["status_bits"] == ["BOT", "ONLINE", "IM_REP_EN"]
    assert (status["loaded"], status["online"], status["ready"], status["loading"]) == (True, True, True, False)
    assert (status["bot"], status["eof"], status["eod"], status["write_protected"]) == (True, False, False, False)
    assert (status["file_number"], status["block_number"], status["partition"]) == (0, 0, 0)
    assert (status["density_code"], status["density"], status["block_size"]) == ("0x46", "LTO-4", 0)


def test_write_protected_tape_sets_write_protected():
    status = _tape.decode_mtget(WRITE_PROTECTED)
    assert status["status_bits"] == ["BOT", "WR_PROT", "ONLINE", "IM_REP_EN"]
    assert status["write_protected"] is True and status["ready"] is True


def test_no_tape_is_not_loaded_and_positions_are_unknown():
    status = _tape.decode_mtget(NO_TAPE)
    assert status["status_bits"] == ["DR_OPEN", "IM_REP_EN"]
    assert (status["loaded"], status["online"], status["loading"]) == (False, False, False)
    assert (status["file_number"], status["block_number"]) == (-1, -1)
    assert status["density"] == "default"


def test_loading_is_neither_online_nor_door_open():
    status = _tape.decode_mtget(LOADING)
    assert status["status_bits"] == ["IM_REP_EN"]
    assert (status["loaded"], status["online"], status["loading"], status["ready"]) == (True, False, True, False)


def test_after_one_file_is_at_a_filemark_in_file_one():
    status = _tape.decode_mtget(AFTER_ONE_FILE)
    assert status["status_bits"] == ["EOF", "ONLINE", "IM_REP_EN"]
    assert (status["eof"], status["bot"], status["file_number"], status["block_number"]) == (True, False, 1, 0)


def test_end_of_data_is_reported_with_its_file_number():
    status = _tape.decode_mtget(AT_EOD)
    assert status["eod"] is True and status["file_number"] == 3


def test_block_size_soft_errors_and_cleaning_are_decoded():
    status = _tape.decode_mtget(mtget(0x01018000, dsreg=(0x58 << 24) | 262144, erreg=7))
    assert (status["block_size"], status["density"], status["soft_errors"], status["cleaning"]) == (262144, "LTO-5", 7, True)


def test_a_wrong_sized_answer_is_refused():
    with pytest.raises(_tape.TapeError, match="struct mtget is"):
        _tape.decode_mtget(b"\0" * 12)


@pytest.mark.parametrize("number,state", [
    (errno.EBUSY, "busy"), (errno.ENOTTY, "not_a_tape"), (errno.ENOENT, "no_device"), (errno.ENXIO, "no_device"),
    (errno.ENOMEDIUM, "no_medium"), (errno.EIO, "not_ready"),
])
def test_errno_at_open_maps_to_a_plain_state(number, state):
    kernel = Kernel(LOADED_AT_BOT, open_errno=number)
    assert _tape.probe("/dev/nst0", kernel)["state"] == state


def test_errno_of_the_ioctl_maps_to_a_plain_state():
    assert _tape.probe("/dev/nst0", Kernel(errno.ENOTTY))["state"] == "not_a_tape"


def test_probe_opens_read_only_and_non_blocking_and_asks_mtiocget():
    kernel = Kernel(LOADED_AT_BOT)
    assert _tape.probe("/dev/nst0", kernel)["state"] == "ready"
    assert kernel.opened[0] & os.O_ACCMODE == os.O_RDONLY and kernel.opened[0] & os.O_NONBLOCK
    assert kernel.requests == [(_tape.MTIOCGET, _tape.MTGET_SIZE)]


def test_a_loading_drive_is_polled_until_it_is_online():
    kernel = Kernel(LOADING, LOADING, LOADED_AT_BOT)
    clock = iter(range(100))
    status = _tape.wait_status("/dev/nst0", kernel, 60, clock=lambda: next(clock), sleep=lambda s: None)
    assert status["state"] == "ready" and status["polls"] == 3


def test_polling_stops_at_the_timeout_and_online_is_unmet():
    kernel = Kernel(LOADING)
    clock = iter(range(0, 1000, 10))
    status = _tape.wait_status("/dev/nst0", kernel, 30, clock=lambda: next(clock), sleep=lambda s: None)
    assert status["state"] == "loading"
    unmet = _tape.unmet_needs("/dev/nst0", status, ["loaded", "online"], 30)
    assert len(unmet) == 1 and "still loading after 30 s" in unmet[0] and "raise wait_timeout" in unmet[0]


def test_each_unmet_need_says_what_to_do():
    status = _tape.decode_mtget(WRITE_PROTECTED)
    status["state"] = "ready"
    assert _tape.unmet_needs("/dev/nst0", status, ["loaded", "online", "writable"], 0) == [
        "tape /dev/nst0: expected a writable tape, found it write-protected (WR_PROT set); load a writable volume or "
        "remove the write tab"]
    empty = dict(_tape.decode_mtget(NO_TAPE), state="no_medium")
    assert "load a volume" in _tape.unmet_needs("/dev/nst0", empty, ["loaded"], 0)[0]


@pytest.mark.parametrize("node", ["/dev/st0", "/dev/st1l", "/dev/tape/by-id/scsi-3500110a0012345-st"])
def test_rewinding_nodes_are_refused_with_the_reason(node):
    assert "rewinding node" in _tape.rewinding_node_problem(node)


@pytest.mark.parametrize("node", ["/dev/nst0", "/dev/tape/by-id/scsi-3500110a0012345-nst"])
def test_non_rewinding_nodes_are_accepted(node):
    assert _tape.rewinding_node_problem(node) == ""


def test_dev_null_is_not_a_tape_through_the_real_kernel():
    status = _tape.probe("/dev/null", _tape.TapeOps())
    assert status["state"] == "not_a_tape" and status["errno"] == errno.ENOTTY


def test_a_regular_file_is_not_a_tape_through_the_real_kernel(tmp_path):
    path = tmp_path / "nst0"
    path.write_bytes(b"x" * 512)
    assert _tape.probe(str(path), _tape.TapeOps())["state"] == "not_a_tape"
    assert "not a tape drive (ENOTTY)" in _tape.unmet_needs(str(path), _tape.probe(str(path), _tape.TapeOps()), [], 0)[0]


def test_sysfs_facts_are_read_from_the_drive_entry(tmp_path):
    base = tmp_path / "nst0"
    (base / "device" / "scsi_generic" / "sg3").mkdir(parents=True)
    (base / "device" / "vendor").write_text("HP      \n")
    (base / "device" / "model").write_text("Ultrium 4-SCSI  \n")
    (base / "default_blksize").write_text("-1\n")
    (base / "position_lost_in_reset").write_text("1\n")
    facts = _tape.sysfs_facts("/dev/nst0", root=str(tmp_path))
    assert facts["vendor"] == "HP" and facts["model"] == "Ultrium 4-SCSI" and facts["sg_device"] == "/dev/sg3"
    assert facts["default_block_size"] == -1 and facts["position_lost_in_reset"] is True


def test_tapeinfo_cleaning_alert_is_found():
    facts = _tape.parse_tapeinfo("Product Type: Tape Drive\nReady: yes\nTapeAlert[20]:     Clean Now: The tape drive "
                                 "needs cleaning NOW.\n")
    assert facts["ready"] is True and facts["cleaning_needed"] is True and facts["write_protected"] is False
    assert facts["tape_alerts"][0]["flag"] == 20


def test_label_round_trip_and_foreign_data_is_no_label():
    record = _tape.label_record("LT1000L3", 10240, 0)
    assert len(record) == 10240
    assert _tape.parse_label(record)["volume"] == "LT1000L3"
    assert _tape.parse_label(b"ustar" + bytes(100)) is None


def test_catalog_end_of_data_and_expiry(tmp_path):
    catalog = {"volume": "V1", "files": [{"file_number": 0, "kind": "label"},
                                         {"file_number": 1, "kind": "set", "backup_id": "a", "expires": "2000-01-01T00:00:00Z"},
                                         {"file_number": 2, "kind": "set", "backup_id": "b", "expires": "2999-01-01T00:00:00Z"}]}
    assert _tape.catalog_end_of_data(catalog) == 3
    assert [s.split()[0] for s in _tape.unexpired_sets(catalog)] == ["b"]
    _tape.save_catalog(str(tmp_path), catalog)
    assert _tape.load_catalog(str(tmp_path), "V1") == catalog


def test_wrong_volume_uses_the_trusted_wording():
    assert _tape.expected_volume_problem("/dev/nst0", "LT1001L3", "LT1000L3").startswith(
        "Wrong Volume mounted on device /dev/nst0: Wanted LT1001L3 have LT1000L3")
