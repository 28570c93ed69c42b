# -*- coding: utf-8 -*-
# Copyright: contributors to consistent.backup
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Specification of the mount engine: mountinfo parsing, path-to-mount lookup, thresholds and checks."""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import tempfile

import pytest

from ansible_collections.consistent.backup.plugins.module_utils import _mounts
from ansible_collections.consistent.backup.plugins.module_utils._mounts import (
    Facts,
    MountEntry,
    MountinfoError,
    Needs,
    ProbeResult,
    ResolvedPath,
    SpaceFacts,
    Threshold,
    evaluate,
    find_mount,
    format_bytes,
    mount_for,
    parse_min_free,
    parse_min_free_inodes,
    parse_mountinfo,
    parse_mountinfo_line,
    read_mountinfo,
    resolve_path,
    source_matches,
    write_probe,
)

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
GiB = 1024 ** 3
MiB = 1024 ** 2


def fixture(name: str) -> list:
    return read_mountinfo(os.path.join(FIXTURES, name))


def by_mountpoint(entries: list, mountpoint: str) -> MountEntry:
    matches = [entry for entry in entries if entry.mountpoint == mountpoint]
    assert len(matches) == 1, matches
    return matches[0]


# --------------------------------------------------------------------------------------------- parsing


def test_real_mountinfo_of_this_machine_parses_every_line():
    entries = fixture("mountinfo_debian12_vm.txt")
    assert len(entries) == 19
    root = by_mountpoint(entries, "/")
    assert (root.mount_id, root.parent_id, root.major_minor) == (27, 1, "254:0")
    assert (root.fstype, root.source, root.root) == ("ext4", "/dev/vda", "/")
    assert root.options == ("rw", "relatime")
    assert root.super_options == ("rw", "discard", "resv_strict", "resuid=65534", "resgid=65534")
    assert root.optional_fields == ()


def test_line_without_optional_fields_has_fstype_right_after_separator():
    entry = parse_mountinfo_line("22 27 0:21 / /proc rw,relatime - proc proc rw")
    assert entry.optional_fields == ()
    assert (entry.fstype, entry.source, entry.super_options) == ("proc", "proc", ("rw",))


def test_optional_fields_are_collected_up_to_the_separator():
    entry = parse_mountinfo_line("1195 1186 259:2 /srv/backup /backup rw,relatime shared:1 master:2 - ext4 /dev/nvme0n1p2 rw")
    assert entry.optional_fields == ("shared:1", "master:2")
    assert entry.fstype == "ext4"


def test_separator_is_found_after_several_optional_fields_of_every_kind():
    entry = by_mountpoint(fixture("mountinfo_container.txt"), "/archive")
    assert entry.optional_fields == ("propagate_from:7", "unbindable")
    assert (entry.fstype, entry.source) == ("xfs", "/dev/nvme1n1p1")


def test_line_without_separator_is_rejected_with_its_line_number():
    with pytest.raises(MountinfoError, match="line 2 has no ' - ' separator"):
        parse_mountinfo("22 27 0:21 / /proc rw - proc proc rw\n23 27 0:22 / /sys rw sysfs sysfs rw\n")


def test_line_cut_short_after_separator_is_rejected():
    with pytest.raises(MountinfoError, match="fewer than 3 fields"):
        parse_mountinfo_line("22 27 0:21 / /proc rw - proc")


def test_missing_super_options_parse_as_empty():
    entry = parse_mountinfo_line("22 27 0:21 / /proc rw - proc proc")
    assert entry.super_options == ()


def test_escaped_space_in_mount_point_is_decoded():
    assert "/mnt/My Backup" in [entry.mountpoint for entry in fixture("mountinfo_escapes.txt")]


def test_escaped_tab_and_newline_in_mount_points_are_decoded():
    mountpoints = [entry.mountpoint for entry in fixture("mountinfo_escapes.txt")]
    assert "/mnt/tab\tdir" in mountpoints
    assert "/mnt/new\nline" in mountpoints


def test_escaped_backslash_in_root_and_mount_point_is_decoded():
    entry = by_mountpoint(fixture("mountinfo_escapes.txt"), "/srv/back\\slash")
    assert entry.root == "/back\\slash"


def test_escaped_space_in_mount_source_is_decoded():
    entry = by_mountpoint(fixture("mountinfo_escapes.txt"), "/mnt/nas share")
    assert entry.source == "//nas/backup share"


def test_bind_mount_reports_its_root_and_bind():
    entry = by_mountpoint(fixture("mountinfo_container.txt"), "/backup")
    assert entry.root == "/srv/backup"
    assert entry.bind is True
    assert entry.as_dict()["bind"] is True


def test_whole_filesystem_mount_is_not_bind():
    assert by_mountpoint(fixture("mountinfo_stacked.txt"), "/backup").bind is False


def test_overlay_root_of_a_container_parses():
    root = by_mountpoint(fixture("mountinfo_container.txt"), "/")
    assert (root.fstype, root.source, root.optional_fields) == ("overlay", "overlay", ("master:443",))
    assert "upperdir=/var/lib/docker/overlay2/8d0c41/diff" in root.super_options


def test_read_only_from_per_mount_options():
    entry = by_mountpoint(fixture("mountinfo_container.txt"), "/archive")
    assert "ro" in entry.options and "ro" not in entry.super_options
    assert entry.read_only is True


def test_read_only_from_super_options():
    entry = parse_mountinfo_line("30 26 8:17 / /backup rw,relatime - ext4 /dev/sdb1 ro,errors=remount-ro")
    assert entry.read_only is True


def test_read_write_mount_is_not_read_only():
    assert by_mountpoint(fixture("mountinfo_stacked.txt"), "/backup").read_only is False


def test_mount_dict_has_the_documented_keys():
    entry = by_mountpoint(fixture("mountinfo_stacked.txt"), "/backup")
    assert entry.as_dict() == {
        "mountpoint": "/backup", "source": "/dev/sdb1", "fstype": "xfs",
        "options": ["rw", "relatime"], "super_options": ["rw", "attr2", "inode64", "logbufs=8", "logbsize=32k", "noquota"],
        "root": "/", "bind": False, "read_only": False, "mount_id": 60, "major_minor": "8:17",
    }


def test_statvfs_read_only_flag_makes_the_mount_dict_read_only():
    entry = by_mountpoint(fixture("mountinfo_stacked.txt"), "/backup")
    assert entry.as_dict(statvfs_read_only=True)["read_only"] is True


# --------------------------------------------------------------------------------------------- path -> mount


def test_path_below_a_mount_point_is_on_that_mount():
    assert mount_for("/backup/db/daily", fixture("mountinfo_stacked.txt")).mountpoint == "/backup"


def test_mount_point_itself_is_on_its_mount():
    assert mount_for("/backup", fixture("mountinfo_stacked.txt")).mountpoint == "/backup"


def test_mount_point_prefix_is_compared_by_component_not_by_string():
    entries = [entry for entry in fixture("mountinfo_stacked.txt") if entry.mountpoint != "/backup2"]
    assert mount_for("/backup2/db", entries).mountpoint == "/"


def test_longer_sibling_mount_point_is_chosen_for_its_own_paths():
    assert mount_for("/backup2/db", fixture("mountinfo_stacked.txt")).source == "/dev/sdc1"


def test_longest_containing_mount_point_wins_over_its_parent_mount():
    assert mount_for("/mnt/disk/tmp/x", fixture("mountinfo_stacked.txt")).fstype == "tmpfs"


def test_last_of_several_mounts_on_one_mount_point_wins():
    entry = mount_for("/mnt/usb/db", fixture("mountinfo_stacked.txt"))
    assert (entry.mount_id, entry.source) == (71, "/dev/sde1")


def test_mount_covered_by_a_later_mount_on_a_parent_directory_is_ignored():
    entry = mount_for("/srv/data/inner/db", fixture("mountinfo_stacked.txt"))
    assert (entry.mountpoint, entry.source) == ("/srv/data", "/dev/sdg1")


def test_submount_listed_before_its_parent_mount_is_still_visible():
    # In this machine's real mountinfo, /proc (22) is listed before / (27), its parent.
    assert mount_for("/proc/self", fixture("mountinfo_debian12_vm.txt")).fstype == "proc"


def test_path_on_no_other_mount_is_on_the_root_filesystem():
    entry = mount_for("/var/backups", fixture("mountinfo_debian12_vm.txt"))
    assert (entry.mountpoint, entry.source, entry.fstype) == ("/", "/dev/vda", "ext4")


def test_path_in_a_container_bind_mount_reports_the_bind():
    entry = mount_for("/backup/pg", fixture("mountinfo_container.txt"))
    assert (entry.root, entry.bind, entry.source) == ("/srv/backup", True, "/dev/nvme0n1p2")


def test_path_on_an_overlay_root_is_on_the_overlay():
    assert mount_for("/var/lib/postgresql", fixture("mountinfo_container.txt")).fstype == "overlay"


def test_mount_point_with_escaped_space_contains_paths_with_spaces():
    assert mount_for("/mnt/My Backup/db", fixture("mountinfo_escapes.txt")).source == "/dev/sdb1"


def test_no_containing_mount_is_an_error():
    entries = [entry for entry in fixture("mountinfo_stacked.txt") if entry.mountpoint != "/"]
    with pytest.raises(MountinfoError, match="no mount in mountinfo contains /etc"):
        mount_for("/etc", entries)


def test_existing_path_resolves_to_itself(tmp_path):
    real = os.path.realpath(tmp_path)
    resolved = resolve_path(str(tmp_path))
    assert (resolved.resolved, resolved.existing, resolved.exists) == (real, real, True)


def test_missing_path_walks_up_to_the_nearest_existing_parent(tmp_path):
    resolved = resolve_path(str(tmp_path / "not" / "yet"))
    real = os.path.realpath(tmp_path)
    assert (resolved.resolved, resolved.existing, resolved.exists) == (os.path.join(real, "not", "yet"), real, False)


def test_symlinked_path_resolves_to_its_target(tmp_path):
    (tmp_path / "target").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "target")
    assert resolve_path(str(tmp_path / "link")).resolved == os.path.realpath(tmp_path / "target")


def test_symlinked_parent_of_a_missing_path_is_resolved(tmp_path):
    (tmp_path / "target").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "target")
    resolved = resolve_path(str(tmp_path / "link" / "db"))
    assert resolved.resolved == os.path.join(os.path.realpath(tmp_path / "target"), "db")


def test_find_mount_of_a_missing_path_uses_the_existing_parent(tmp_path):
    entries = fixture("mountinfo_debian12_vm.txt")
    match = find_mount(str(tmp_path / "missing"), entries)
    assert match.path.exists is False
    assert match.entry == mount_for(os.path.realpath(tmp_path), entries)


# --------------------------------------------------------------------------------------------- thresholds


def test_min_free_integer_is_bytes():
    assert parse_min_free(1048576) == Threshold(amount=1048576)


def test_min_free_size_string_is_powers_of_1024():
    assert parse_min_free("20G") == Threshold(amount=20 * GiB)


def test_min_free_digit_string_is_bytes():
    assert parse_min_free("4096") == Threshold(amount=4096)


def test_min_free_percentage_is_of_the_total():
    threshold = parse_min_free("10%")
    assert threshold.percent == 10.0
    assert threshold.required(200 * GiB) == 20 * GiB


def test_min_free_fractional_percentage_rounds_up():
    assert parse_min_free("2.5%").required(1001) == 26


def test_min_free_above_100_percent_is_rejected():
    with pytest.raises(ValueError, match="between 0% and 100%"):
        parse_min_free("150%")


def test_min_free_garbage_is_rejected_naming_the_accepted_forms():
    with pytest.raises(ValueError, match=r"min_free must be a byte count.*found 'lots'.*10%"):
        parse_min_free("lots")


def test_min_free_inodes_integer_and_percentage():
    assert parse_min_free_inodes(10000) == Threshold(amount=10000)
    assert parse_min_free_inodes("5%").required(1000) == 50


def test_min_free_inodes_rejects_sizes():
    with pytest.raises(ValueError, match="min_free_inodes must be a number of inodes"):
        parse_min_free_inodes("1G")


def test_format_bytes_uses_binary_units_with_one_decimal():
    assert [format_bytes(n) for n in (512, MiB, 20 * GiB, 1536)] == ["512 B", "1.0 MiB", "20.0 GiB", "1.5 KiB"]


# --------------------------------------------------------------------------------------------- sources


def test_source_matches_literally():
    assert source_matches("/dev/sdb1", "/dev/sdb1", resolve=lambda p: p)


def test_source_matches_after_realpath_of_a_by_uuid_link():
    links = {"/dev/disk/by-uuid/0a1b": "/dev/sdb1"}
    assert source_matches("/dev/disk/by-uuid/0a1b", "/dev/sdb1", resolve=lambda p: links.get(p, p))


def test_source_uuid_tag_matches_through_the_udev_link():
    links = {"/dev/disk/by-uuid/0a1b": "/dev/sdb1"}
    assert source_matches("UUID=0a1b", "/dev/sdb1", resolve=lambda p: links.get(p, p))


def test_source_of_another_device_does_not_match():
    assert not source_matches("/dev/sdb1", "/dev/sdc1", resolve=lambda p: p)


def test_non_path_source_is_compared_literally_only():
    assert source_matches("nas:/export/backup", "nas:/export/backup", resolve=lambda p: "/never")


# --------------------------------------------------------------------------------------------- checks

ROOT = parse_mountinfo_line("27 1 254:0 / / rw,relatime - ext4 /dev/vda rw,discard")
USB = parse_mountinfo_line("61 27 8:33 / /mnt/usb rw,relatime - vfat /dev/sdc1 rw")
BACKUP_RO = parse_mountinfo_line("62 27 0:50 / /backup ro,relatime - tmpfs tmpfs rw,size=8192k")
PLENTY = SpaceFacts(total_bytes=200 * GiB, free_bytes=150 * GiB, available_bytes=140 * GiB,
                    total_inodes=1000000, free_inodes=900000, read_only=False)


def facts(path: str = "/mnt/usb/db", entry: MountEntry = USB, space: SpaceFacts = PLENTY, exists: bool = True,
          is_dir: bool = True, probe: ProbeResult = ProbeResult(performed=True, ok=True), existing: str = "") -> Facts:
    return Facts(path=ResolvedPath(path, path, existing or path, exists), is_dir=is_dir, entry=entry, space=space, probe=probe)


def messages(failures: list) -> list:
    return [failure.message for failure in failures]


def test_all_needs_met_gives_no_failure():
    needs = Needs(mountpoint="/mnt/usb", fstype=("vfat",), source="/dev/sdc1", min_free=Threshold(amount=GiB),
                  min_free_inodes=Threshold(percent=10.0))
    assert evaluate(facts(), needs, resolve=lambda p: p) == []


def test_directory_on_root_filesystem_is_not_a_mount_point():
    failures = evaluate(facts("/backup", ROOT), Needs())
    assert [f.check for f in failures] == ["mounted"]
    assert failures[0].message.startswith("/backup is not a mount point; /backup lives on the root filesystem / (ext4, source /dev/vda). "
                                          "Mount the backup disk or set mountpoint")


def test_root_filesystem_is_allowed_when_require_mountpoint_is_false():
    assert evaluate(facts("/backup", ROOT), Needs(require_mountpoint=False)) == []


def test_expected_mountpoint_replaces_the_root_filesystem_test():
    assert evaluate(facts("/var/backups", ROOT), Needs(mountpoint="/"), resolve=lambda p: p) == []


def test_path_on_another_mount_point_than_expected_fails():
    failures = evaluate(facts(), Needs(mountpoint="/mnt/disk"), resolve=lambda p: p)
    assert messages(failures) == ["/mnt/usb/db is on /mnt/usb (vfat, source /dev/sdc1), expected mount point /mnt/disk. "
                                  "Mount the right disk at /mnt/disk or fix mountpoint"]


def test_unexpected_fstype_fails():
    failures = evaluate(facts(), Needs(fstype=("ext4", "xfs")))
    assert messages(failures) == ["/mnt/usb/db is on /mnt/usb with filesystem type vfat, expected ext4 or xfs. "
                                  "Mount the right disk or add vfat to fstype"]


def test_unexpected_source_fails():
    failures = evaluate(facts(), Needs(source="/dev/sdb1"), resolve=lambda p: p)
    assert messages(failures) == ["/mnt/usb/db is on /mnt/usb from source /dev/sdc1, expected source /dev/sdb1. "
                                  "Mount the right disk at /mnt/usb or fix source"]


def test_read_only_mount_fails_the_writable_need():
    failures = evaluate(facts("/backup", BACKUP_RO, probe=ProbeResult(reason="the mount is read-only")), Needs())
    assert messages(failures) == ["/backup is on a read-only mount (/backup, tmpfs, options ro). Remount it read-write or choose another destination"]
    assert failures[0].check == "writable"


def test_read_only_mount_fails_in_check_mode_without_a_probe():
    probe = ProbeResult(reason="check mode: no write probe")
    assert [f.check for f in evaluate(facts("/backup", BACKUP_RO, probe=probe), Needs())] == ["writable"]


def test_statvfs_read_only_flag_alone_fails_the_writable_need():
    space = dataclasses.replace(PLENTY, read_only=True)
    assert "statvfs ST_RDONLY" in evaluate(facts(space=space), Needs())[0].message


def test_read_only_mount_is_fine_when_writable_is_false():
    assert evaluate(facts("/backup", BACKUP_RO, probe=ProbeResult()), Needs(writable=False)) == []


def test_failed_write_probe_fails_with_the_os_error():
    probe = ProbeResult(performed=True, ok=False, error="cannot create /mnt/usb/db/.mount_check.1.a: Permission denied (EACCES)")
    failures = evaluate(facts(probe=probe), Needs())
    assert [f.check for f in failures] == ["write_probe"]
    assert "write probe in /mnt/usb/db failed: cannot create /mnt/usb/db/.mount_check.1.a: Permission denied (EACCES)." in failures[0].message


def test_skipped_probe_on_a_read_write_mount_is_not_a_failure():
    assert evaluate(facts(probe=ProbeResult(reason="check mode")), Needs()) == []


def test_too_little_space_fails_with_human_sizes():
    space = dataclasses.replace(PLENTY, available_bytes=MiB)
    failures = evaluate(facts(space=space), Needs(min_free=Threshold(amount=20 * GiB)))
    assert messages(failures) == ["/mnt/usb/db has 1.0 MiB available, min_free needs 20.0 GiB. Free space on /mnt/usb or lower min_free"]


def test_percentage_min_free_names_the_percentage_and_the_total():
    space = dataclasses.replace(PLENTY, available_bytes=MiB)
    message = evaluate(facts(space=space), Needs(min_free=Threshold(percent=10.0)))[0].message
    assert "min_free needs 20.0 GiB (10% of 200.0 GiB)" in message


def test_space_is_compared_with_available_not_free_bytes():
    space = dataclasses.replace(PLENTY, free_bytes=30 * GiB, available_bytes=10 * GiB)
    assert [f.check for f in evaluate(facts(space=space), Needs(min_free=Threshold(amount=20 * GiB)))] == ["min_free"]


def test_exactly_min_free_available_passes():
    assert evaluate(facts(), Needs(min_free=Threshold(amount=140 * GiB))) == []


def test_too_few_inodes_fails():
    space = dataclasses.replace(PLENTY, free_inodes=10)
    failures = evaluate(facts(space=space), Needs(min_free_inodes=Threshold(amount=1000)))
    assert messages(failures) == ["/mnt/usb/db has 10 inodes free, min_free_inodes needs 1000 inodes. Remove files on /mnt/usb or lower min_free_inodes"]


def test_filesystem_without_inode_count_passes_the_inode_need():
    space = dataclasses.replace(PLENTY, total_inodes=0, free_inodes=0)
    assert evaluate(facts(space=space), Needs(min_free_inodes=Threshold(amount=1000))) == []


def test_missing_destination_fails_and_still_judges_the_parent_mount():
    failures = evaluate(facts("/backup/db", ROOT, exists=False, existing="/backup", probe=ProbeResult()), Needs())
    assert [f.check for f in failures] == ["exists", "mounted"]
    assert failures[0].message == "backup destination /backup/db does not exist; create it on the mounted backup disk first"
    assert "/backup/db (nearest existing parent /backup) lives on the root filesystem /" in failures[1].message


def test_destination_that_is_a_file_fails():
    assert [f.check for f in evaluate(facts(is_dir=False, probe=ProbeResult()), Needs())] == ["directory"]


def test_several_unmet_needs_are_all_reported_in_order():
    space = dataclasses.replace(PLENTY, available_bytes=MiB)
    needs = Needs(mountpoint="/mnt/disk", fstype=("ext4",), source="/dev/sdb1", min_free=Threshold(amount=GiB))
    failures = evaluate(facts(space=space), needs, resolve=lambda p: p)
    assert [f.check for f in failures] == ["mountpoint", "fstype", "source", "min_free"]


def test_check_result_joins_messages_and_lists_failed_checks():
    space = dataclasses.replace(PLENTY, available_bytes=MiB)
    result = _mounts.CheckResult(facts=facts(space=space), failures=tuple(evaluate(facts(space=space), Needs(
        fstype=("ext4",), min_free=Threshold(amount=GiB)))), warnings=())
    as_dict = result.as_dict()
    assert as_dict["failed_checks"] == ["fstype", "min_free"]
    assert as_dict["msg"] == "; ".join(f.message for f in result.failures)
    assert "; " in as_dict["msg"]


# --------------------------------------------------------------------------------------------- probe and facts on this machine


def test_write_probe_succeeds_and_leaves_nothing_behind(tmp_path):
    assert write_probe(str(tmp_path)) == ProbeResult(performed=True, ok=True)
    assert list(tmp_path.iterdir()) == []


def _probe_as_nobody(directory: str) -> ProbeResult:
    """Run the probe in a child that dropped root, since root ignores directory permissions."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            os.close(read_end)
            if os.geteuid() == 0:
                os.setgid(65534)
                os.setuid(65534)
            os.write(write_end, json.dumps(dataclasses.asdict(write_probe(directory))).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        data = pipe.read()
    os.waitpid(pid, 0)
    return ProbeResult(**json.loads(data))


def test_write_probe_in_unwritable_directory_reports_errno():
    # Not under tmp_path: pytest's base directory is private to root, nobody could not even reach it.
    directory = tempfile.mkdtemp(prefix="mount-check-probe-")
    try:
        os.chmod(directory, 0o555)
        result = _probe_as_nobody(directory)
    finally:
        os.rmdir(directory)
    assert (result.performed, result.ok) == (True, False)
    assert result.error.startswith("cannot create %s/.mount_check." % directory)
    assert result.error.endswith("Permission denied (EACCES)")


def test_write_probe_failure_reports_the_step_and_errno_name(tmp_path, monkeypatch):
    def enospc(fd, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(_mounts.os, "write", enospc)
    result = write_probe(str(tmp_path))
    assert (result.performed, result.ok) == (True, False)
    assert result.error.startswith("cannot write to %s/.mount_check." % tmp_path)
    assert result.error.endswith("No space left on device (ENOSPC)")
    assert list(tmp_path.iterdir()) == []


def test_check_mode_does_not_probe(tmp_path):
    result = _mounts.check(str(tmp_path), Needs(require_mountpoint=False), check_mode=True)
    assert result.facts.probe.performed is False
    assert result.facts.probe.reason.startswith("check mode")


def test_check_probes_outside_check_mode(tmp_path):
    result = _mounts.check(str(tmp_path), Needs(require_mountpoint=False))
    assert (result.facts.probe.performed, result.facts.probe.ok) == (True, True)
    assert result.failures == ()


def test_check_takes_statvfs_numbers_of_the_filesystem(tmp_path):
    space = _mounts.check(str(tmp_path), Needs(require_mountpoint=False), check_mode=True).facts.space
    stat = os.statvfs(str(tmp_path))
    assert space.total_bytes == stat.f_blocks * stat.f_frsize
    assert 0 <= space.available_bytes <= space.free_bytes <= space.total_bytes


def test_check_of_a_missing_path_does_not_create_it(tmp_path):
    missing = tmp_path / "missing"
    result = _mounts.check(str(missing), Needs(require_mountpoint=False))
    assert [f.check for f in result.failures] == ["exists"]
    assert result.facts.probe.performed is False
    assert not missing.exists()
