# -*- coding: utf-8 -*-
# Copyright: contributors to consistent.backup
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Specification of what makes the copy engine tell the truth: a retry copies the first attempt's list, a file that
changed while it was read is caught, failures say whether a retry can help, input is refused before pre, and the
progress hook keeps the guard's lease."""

from __future__ import annotations

import errno
import json
import os
import stat
import time

import pytest

from ansible_collections.consistent.backup.plugins.module_utils import _copy, _copy_stream
from ansible_collections.consistent.backup.plugins.module_utils._copy import run_copy
from ansible_collections.consistent.backup.plugins.module_utils._copy_plan import (
    CopyError,
    add_free_space,
    check_free_space,
    normalize_sources,
    plan_attempt,
    plan_copy,
    summarize_plan,
    validate_block_sizes,
    validate_request,
)
from ansible_collections.consistent.backup.plugins.module_utils._lease import Lease

BLOCK = 8192
READ = 4 * BLOCK
SET = "set1"


def write(path, data: bytes):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.fixture
def src(tmp_path):
    path = tmp_path / "src"
    path.mkdir()
    return path


@pytest.fixture
def dest(tmp_path):
    path = tmp_path / "backup"
    path.mkdir()
    return path


def attempt(src, dest, run_id="run-1", allow_vanished=False, **kwargs):
    """One attempt of the copy step, as aligned_copy runs it: plan (resuming a recorded list), then copy."""
    kwargs.setdefault("block_size", BLOCK)
    kwargs.setdefault("read_size", READ)
    sources = normalize_sources([{"path": str(src), "dest": "s", "allow_vanished": allow_vanished}])
    plan = plan_attempt(sources, [], str(dest / SET), run_id)
    return run_copy(plan, str(dest), SET, **kwargs)


def copy_file(path, dest, **kwargs):
    kwargs.setdefault("block_size", BLOCK)
    kwargs.setdefault("read_size", READ)
    plan = plan_copy(normalize_sources([{"path": str(path), "dest": "f"}]))
    return run_copy(plan, str(dest), SET, **kwargs)


def plan_file(dest):
    return dest / SET / ".copy-plan.json"


def manifest(dest) -> dict:
    return json.loads((dest / SET / "manifest.json").read_text())


def eio_writer_for(content: bytes):
    """A writer that fails (EIO, a transient error) on the buffer that starts with ``content``."""
    def writer(fd, buffer):
        if bytes(buffer[:len(content)]) == content:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return os.write(fd, buffer)
    return writer


# -- a retry copies the first attempt's list ---------------------------------------------------------------------------


def test_the_first_attempt_records_its_list_in_the_set_with_mode_0600_before_copying(src, dest):
    write(src / "a", b"alpha")
    write(src / "b", b"bravo")
    with pytest.raises(CopyError):
        attempt(src, dest, writer=eio_writer_for(b"alpha"))
    recorded = json.loads(plan_file(dest).read_text())
    assert stat.S_IMODE(os.stat(str(plan_file(dest))).st_mode) == 0o600
    assert recorded["run_id"] == "run-1"
    files = dict((i["rel"], i) for i in recorded["items"] if i["kind"] == "file")
    assert sorted(files) == ["s/a", "s/b"]
    assert files["s/b"]["src"] == str(src / "b")
    assert files["s/b"]["size"] == 5
    assert files["s/b"]["mtime_ns"] == os.stat(str(src / "b")).st_mtime_ns


def test_a_successful_copy_removes_the_recorded_list_and_the_set_holds_only_the_copy_and_manifest(src, dest):
    write(src / "a", b"alpha")
    attempt(src, dest)
    assert sorted(os.listdir(str(dest / SET))) == ["data", "manifest.json"]
    assert sorted(os.listdir(str(dest / SET / "data" / "s"))) == ["a"]


def test_a_file_deleted_between_attempts_fails_every_later_attempt_naming_it(src, dest):
    write(src / "a", b"alpha")
    write(src / "b", b"bravo")
    with pytest.raises(CopyError) as first:
        attempt(src, dest, writer=eio_writer_for(b"bravo"))
    assert first.value.retryable is True
    os.unlink(str(src / "b"))
    for _retry in (2, 3):
        with pytest.raises(CopyError) as caught:
            attempt(src, dest)
        assert str(caught.value).startswith("file %s listed by the first attempt of this copy (recorded in %s) is gone"
                                            % (src / "b", plan_file(dest)))
        assert caught.value.retryable is False
    assert "s/b" not in [e["path"] for e in manifest(dest)["files"]]


def test_a_file_deleted_between_attempts_is_recorded_as_vanished_when_its_source_allows_it(src, dest):
    write(src / "a", b"alpha")
    write(src / "b", b"bravo")
    with pytest.raises(CopyError):
        attempt(src, dest, allow_vanished=True, writer=eio_writer_for(b"bravo"))
    os.unlink(str(src / "b"))
    result = attempt(src, dest, allow_vanished=True)
    assert result.vanished == ["s/b"]
    assert manifest(dest)["vanished"] == ["s/b"]


def test_a_file_that_appeared_between_attempts_is_copied_too(src, dest):
    write(src / "a", b"alpha")
    with pytest.raises(CopyError):
        attempt(src, dest, writer=eio_writer_for(b"alpha"))
    write(src / "new", b"november")
    result = attempt(src, dest)
    assert result.copied == 2
    assert (dest / SET / "data" / "s" / "new").read_bytes() == b"november"


def test_the_retry_reports_that_it_resumed_the_recorded_list(src, dest):
    write(src / "a", b"alpha")
    sources = normalize_sources([{"path": str(src), "dest": "s"}])
    assert plan_attempt(sources, [], str(dest / SET), "run-1").resumed is False
    with pytest.raises(CopyError):
        attempt(src, dest, writer=eio_writer_for(b"alpha"))
    plan = plan_attempt(sources, [], str(dest / SET), "run-1")
    assert plan.resumed is True
    assert summarize_plan(plan, str(dest / SET))["resumed"] is True


def test_a_list_recorded_by_another_run_is_replaced_by_a_new_listing(src, dest):
    write(src / "a", b"alpha")
    write(src / "b", b"bravo")
    with pytest.raises(CopyError):
        attempt(src, dest, run_id="run-1", writer=eio_writer_for(b"bravo"))
    os.unlink(str(src / "b"))
    result = attempt(src, dest, run_id="run-2")
    assert result.files == 1
    assert not plan_file(dest).exists()


def test_a_list_recorded_for_other_sources_is_not_used(src, dest):
    write(src / "a", b"alpha")
    write(src / "b", b"bravo")
    with pytest.raises(CopyError):
        attempt(src, dest, writer=eio_writer_for(b"bravo"))
    os.unlink(str(src / "b"))
    sources = normalize_sources([{"path": str(src), "dest": "s", "exclude": ["nothing-matches"]}])
    plan = plan_attempt(sources, [], str(dest / SET), "run-1")
    assert plan.resumed is False
    assert [i.rel for i in plan.items if i.kind == "file"] == ["s/a"]


def test_a_plan_without_a_key_records_nothing(src, dest):
    write(src / "a", b"alpha")
    with pytest.raises(CopyError):
        copy_file(src / "a", dest, writer=eio_writer_for(b"alpha"))
    assert not plan_file(dest).exists()


# -- a file that changed while it was read -----------------------------------------------------------------------------


def truncating_reader(path, at_offset: int, new_size: int):
    """Truncates ``path`` once the copy has read up to ``at_offset``: what a database does when it shrinks a file."""
    def reader(fd, buffer, offset):
        if offset == at_offset:
            os.truncate(str(path), new_size)
        return _copy_stream.default_reader(fd, buffer, offset)
    return reader


def touching_reader(path, at_offset: int):
    """Moves the mtime of ``path`` (size unchanged) when the copy reads ``at_offset``: a write in place."""
    def reader(fd, buffer, offset):
        if offset == at_offset:
            st = os.stat(str(path))
            os.utime(str(path), ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
        return _copy_stream.default_reader(fd, buffer, offset)
    return reader


def test_a_file_truncated_during_the_copy_fails_it_naming_the_file_sizes_and_bytes_read(src, dest):
    path = write(src / "big", os.urandom(8 * READ))
    with pytest.raises(CopyError) as caught:
        copy_file(path, dest, reader=truncating_reader(path, 2 * READ, 3 * READ))
    message = str(caught.value)
    assert message.startswith("source file %s (size %d -> %d bytes, %d bytes read of %d at open, mtime "
                              % (path, 8 * READ, 3 * READ, 3 * READ, 8 * READ))
    assert ") changed while it was copied; the copy of a changing file is not consistent" in message
    assert caught.value.retryable is True
    assert caught.value.facts["changed_during_copy"][0]["bytes_read"] == 3 * READ


def test_a_file_truncated_during_the_copy_leaves_no_copy_of_it_with_changes_fail(src, dest):
    path = write(src / "big", os.urandom(8 * READ))
    with pytest.raises(CopyError):
        copy_file(path, dest, reader=truncating_reader(path, 2 * READ, 3 * READ))
    assert os.listdir(str(dest / SET / "data")) == []
    assert [e["path"] for e in manifest(dest)["files"]] == []
    assert manifest(dest)["changed_during_copy"][0]["path"] == "f"


def test_a_file_truncated_during_the_copy_is_recorded_in_the_result_manifest_and_warnings_with_changes_warn(src, dest):
    path = write(src / "big", os.urandom(8 * READ))
    result = copy_file(path, dest, changes="warn", reader=truncating_reader(path, 2 * READ, 3 * READ))
    change = result.changed_during_copy[0]
    assert (change["path"], change["source"]) == ("f", str(path))
    assert (change["size_before"], change["size_after"], change["bytes_read"]) == (8 * READ, 3 * READ, 3 * READ)
    assert manifest(dest)["changed_during_copy"] == [change]
    assert [e["size"] for e in manifest(dest)["files"]] == [3 * READ]
    assert len(result.warnings) == 1
    assert result.warnings[0].startswith("1 source file changed while it was copied and is recorded in changed_during_copy")
    assert str(path) in result.warnings[0]


def test_a_file_truncated_after_the_listing_before_its_turn_fails_the_copy(src, dest):
    path = write(src / "big", os.urandom(8 * READ))
    plan = plan_copy(normalize_sources([{"path": str(path), "dest": "f"}]))
    os.truncate(str(path), 3 * READ)  # between the listing and the copy of this file
    with pytest.raises(CopyError) as caught:
        run_copy(plan, str(dest), SET, block_size=BLOCK, read_size=READ)
    assert str(caught.value).startswith("source file %s (between the listing and its copy, size %d -> %d bytes"
                                        % (path, 8 * READ, 3 * READ))
    assert not os.path.exists(str(dest / SET / "data" / "f"))


def test_a_file_truncated_after_the_listing_is_a_warning_with_changes_warn(src, dest):
    path = write(src / "big", os.urandom(8 * READ))
    plan = plan_copy(normalize_sources([{"path": str(path), "dest": "f"}]))
    os.truncate(str(path), 3 * READ)
    result = run_copy(plan, str(dest), SET, block_size=BLOCK, read_size=READ, changes="warn")
    change = result.changed_during_copy[0]
    assert (change["since"], change["size_before"], change["size_after"]) == ("listed", 8 * READ, 3 * READ)
    assert manifest(dest)["changed_during_copy"] == [change]


def test_a_file_truncated_between_attempts_fails_every_later_attempt(src, dest):
    path = write(src / "big", os.urandom(8 * READ))
    write(src / "small", os.urandom(READ))
    with pytest.raises(CopyError):
        attempt(src, dest, reader=truncating_reader(path, 2 * READ, 3 * READ))  # attempt 1 sees it shrink
    with pytest.raises(CopyError) as caught:
        attempt(src, dest)  # attempt 2 lists 3 READ but the first listing said 8 READ
    assert "between the listing and its copy, size %d -> %d bytes" % (8 * READ, 3 * READ) in str(caught.value)
    assert not os.path.exists(str(dest / SET / "COMPLETE"))


def test_an_mtime_change_during_the_read_is_detected_although_the_size_did_not_move(src, dest):
    path = write(src / "f", os.urandom(4 * READ))
    before = os.stat(str(path)).st_mtime_ns
    result = copy_file(path, dest, changes="warn", reader=touching_reader(path, READ))
    change = result.changed_during_copy[0]
    assert change["size_before"] == change["size_after"] == change["bytes_read"] == 4 * READ
    assert (change["mtime_ns_before"], change["mtime_ns_after"]) == (before, before + 1_000_000_000)


def test_an_mtime_change_during_the_read_fails_the_copy_with_changes_fail(src, dest):
    path = write(src / "f", os.urandom(4 * READ))
    with pytest.raises(CopyError, match=r"^source file %s \(mtime .* -> .*\) changed while it was copied" % path):
        copy_file(path, dest, reader=touching_reader(path, READ))


def test_a_file_that_grew_during_the_read_is_detected_by_the_bytes_read(src, dest):
    path = write(src / "f", os.urandom(2 * READ))
    st = os.stat(str(path))

    def growing_reader(fd, buffer, offset):
        if offset == READ:
            with open(str(path), "ab") as handle:
                handle.write(b"x" * READ)
            os.utime(str(path), ns=(st.st_atime_ns, st.st_mtime_ns))  # even with the mtime put back
        return _copy_stream.default_reader(fd, buffer, offset)

    result = copy_file(path, dest, changes="warn", reader=growing_reader)
    change = result.changed_during_copy[0]
    assert (change["size_before"], change["size_after"], change["bytes_read"]) == (2 * READ, 3 * READ, 3 * READ)


def test_an_unchanged_file_leaves_no_change_record(src, dest):
    path = write(src / "f", os.urandom(4 * READ))
    result = copy_file(path, dest, changes="warn")
    assert result.changed_during_copy == []
    assert result.warnings == []
    assert "changed_during_copy" not in manifest(dest)


def test_a_clean_copy_of_the_file_drops_its_earlier_change_record_from_the_manifest(src, dest):
    path = write(src / "f", os.urandom(4 * READ))
    copy_file(path, dest, changes="warn", reader=touching_reader(path, READ))
    assert "changed_during_copy" in manifest(dest)
    copy_file(path, dest, changes="warn")
    assert "changed_during_copy" not in manifest(dest)


def test_an_unknown_changes_policy_is_refused(src, dest):
    path = write(src / "f", b"x")
    with pytest.raises(CopyError, match="changes must be one of fail, warn; found 'ignore'") as caught:
        copy_file(path, dest, changes="ignore")
    assert caught.value.retryable is False


# -- failures say whether a retry can help -----------------------------------------------------------------------------


@pytest.mark.parametrize("code, retryable", [(errno.EIO, True), (errno.ENOSPC, False), (errno.EDQUOT, False), (errno.EROFS, False),
                                             (errno.EACCES, False)])
def test_a_write_error_is_retryable_only_when_a_retry_may_get_past_it(src, dest, code, retryable):
    path = write(src / "f", b"x")

    def writer(fd, buffer):
        raise OSError(code, os.strerror(code))

    with pytest.raises(CopyError) as caught:
        copy_file(path, dest, writer=writer)
    assert caught.value.retryable is retryable


def test_a_source_that_cannot_be_opened_for_lack_of_permission_is_not_retryable(src, dest):
    path = write(src / "f", b"x")

    def opener(path, flags):
        raise OSError(errno.EACCES, os.strerror(errno.EACCES))

    with pytest.raises(CopyError, match="cannot open source file") as caught:
        copy_file(path, dest, opener=opener)
    assert caught.value.retryable is False


def test_a_file_that_vanished_when_not_allowed_is_not_retryable(src, dest):
    write(src / "gone", b"g")
    plan = plan_copy(normalize_sources([{"path": str(src), "dest": "s"}]))
    os.unlink(str(src / "gone"))
    with pytest.raises(CopyError, match="vanished") as caught:
        run_copy(plan, str(dest), SET, block_size=BLOCK, read_size=READ)
    assert caught.value.retryable is False


# -- input refused before pre ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("block_size", [1000, 0, -8192, 256, 2 * 1024 * 1024])
def test_a_block_size_that_is_not_a_multiple_of_512_up_to_1_mib_is_refused_and_not_retryable(block_size):
    with pytest.raises(CopyError) as caught:
        validate_block_sizes(block_size, 1024 * 1024)
    assert str(caught.value).startswith("block_size must be the database page size, a multiple of 512 from 512 to 1048576 bytes; "
                                        "found %d" % block_size)
    assert caught.value.retryable is False


@pytest.mark.parametrize("block_size", [512, 1536, 3584, 4096, 8192, 65536])
def test_database_page_sizes_including_btrieve_ones_that_are_not_powers_of_two_are_accepted(block_size):
    validate_block_sizes(block_size, 64 * block_size)


def test_a_read_size_that_is_not_a_multiple_of_block_size_is_not_retryable():
    with pytest.raises(CopyError, match="read_size 10000 is not a positive multiple of block_size 8192") as caught:
        validate_block_sizes(8192, 10000)
    assert caught.value.retryable is False


def test_a_missing_source_is_refused_naming_its_option(src, dest):
    with pytest.raises(CopyError) as caught:
        validate_request(str(dest), SET, normalize_sources([{"path": str(src)}, {"path": str(src / "nope")}]))
    assert str(caught.value).startswith("sources[1].path: source %s does not exist" % (src / "nope"))
    assert caught.value.retryable is False


def test_a_missing_source_that_may_vanish_is_not_refused(src, dest):
    validate_request(str(dest), SET, normalize_sources([{"path": str(src / "nope"), "allow_vanished": True}]))


def test_a_source_inside_the_backup_set_is_refused(src, dest):
    (dest / SET / "data").mkdir(parents=True)
    with pytest.raises(CopyError) as caught:
        validate_request(str(dest), SET, normalize_sources([{"path": str(dest / SET / "data")}]))
    assert str(caught.value).startswith("sources[0].path %s is inside the backup set %s" % (dest / SET / "data", dest / SET))
    assert caught.value.retryable is False


def test_a_destination_inside_a_source_is_not_retryable(src):
    (src / "backups").mkdir()
    with pytest.raises(CopyError, match="is inside source") as caught:
        validate_request(str(src / "backups"), SET, normalize_sources([{"path": str(src)}]))
    assert caught.value.retryable is False


def test_a_missing_destination_root_is_not_retryable(src, tmp_path):
    with pytest.raises(CopyError, match="does not exist") as caught:
        validate_request(str(tmp_path / "not-mounted"), SET, normalize_sources([{"path": str(src)}]))
    assert caught.value.retryable is False


def test_free_required_is_the_bytes_to_write_plus_the_margin_rounded_up(dest):
    summary = add_free_space({"free_needed": 1001}, str(dest), 10)
    assert summary["free_required"] == 1001 + 101
    assert summary["free_space_margin"] == 10
    st = os.statvfs(str(dest))
    assert summary["free_available"] == st.f_bavail * st.f_frsize


def test_a_plan_larger_than_the_free_space_is_refused_with_needed_and_free(dest):
    summary = {"free_needed": 1000, "free_space_margin": 10, "free_required": 1100, "free_available": 1050}
    with pytest.raises(CopyError) as caught:
        check_free_space(summary, str(dest))
    assert str(caught.value).startswith(
        "not enough free space on %s (dest) for the copy: it needs 1.1 KiB (1000 bytes to write + 10%% free_space_margin "
        "for growth = 1100 bytes) but the filesystem has 1.0 KiB (1050 bytes) free; free space on the medium" % dest)
    assert caught.value.retryable is False


def test_a_negative_free_space_margin_is_refused(dest):
    with pytest.raises(CopyError, match="free_space_margin must be a percentage of 0 or more; found -5"):
        add_free_space({"free_needed": 1}, str(dest), -5)


# -- the progress hook and the guard's lease ---------------------------------------------------------------------------


def slow_reader(delay: float):
    def reader(fd, buffer, offset):
        time.sleep(delay)
        return _copy_stream.default_reader(fd, buffer, offset)
    return reader


def test_the_progress_hook_is_called_at_least_once_a_second_while_copying_and_once_at_the_end(src, dest):
    path = write(src / "f", os.urandom(32 * READ))
    calls = []
    started = time.monotonic()
    copy_file(path, dest, reader=slow_reader(0.05), progress=lambda done: calls.append((time.monotonic(), done)))
    moments = [started] + [moment for moment, _done in calls]
    assert max(b - a for a, b in zip(moments, moments[1:])) < 1.0
    assert len(calls) >= 3
    assert [done for _moment, done in calls] == sorted(done for _moment, done in calls)
    assert calls[-1][1] == 32 * READ


def test_a_progress_hook_that_raises_stops_the_copy_and_leaves_no_partial_file(src, dest, monkeypatch):
    monkeypatch.setattr(_copy, "PROGRESS_INTERVAL", 0.0)
    path = write(src / "f", os.urandom(32 * READ))

    def stop(done):
        raise CopyError("stopped at %d" % done, retryable=False)

    with pytest.raises(CopyError, match="stopped at %d" % (_copy_stream.PROGRESS_EVERY_READS * READ)):
        copy_file(path, dest, progress=stop)
    assert os.listdir(str(dest / SET / "data")) == []


@pytest.fixture
def guard_dir(tmp_path):
    path = tmp_path / "guard"
    path.mkdir(mode=0o700)
    (path / "lease").write_bytes(b"")
    os.utime(str(path / "lease"), (1_000_000_000, 1_000_000_000))
    return path


def test_the_lease_is_renewed_while_the_copy_makes_progress(src, dest, guard_dir):
    path = write(src / "f", os.urandom(4 * READ))
    lease = Lease(str(guard_dir / "lease"))
    before = time.time()
    copy_file(path, dest, progress=lease)
    assert os.stat(str(guard_dir / "lease")).st_mtime >= before - 1
    assert lease.renewals == 1


def test_the_lease_is_renewed_at_most_once_a_second(guard_dir):
    now = [100.0]
    lease = Lease(str(guard_dir / "lease"), clock=lambda: now[0])
    for step in (0.0, 0.3, 0.6, 0.9, 1.05, 1.5, 2.1):
        now[0] = 100.0 + step
        lease(0)
    assert lease.renewals == 3  # at 0.0, 1.05 and 2.1


def test_a_fired_guard_fails_the_copy_at_once_with_the_contract_message(guard_dir):
    (guard_dir / "fired").write_text("{}")
    with pytest.raises(CopyError) as caught:
        Lease(str(guard_dir / "lease")).check()
    assert str(caught.value) == ("the guard released the database (see %s): this copy is not consistent; run the backup again"
                                 % (guard_dir / "state.json"))
    assert caught.value.retryable is False


def test_a_guard_that_fires_during_the_copy_stops_it(src, dest, guard_dir, monkeypatch):
    monkeypatch.setattr(_copy, "PROGRESS_INTERVAL", 0.0)
    path = write(src / "f", os.urandom(32 * READ))

    def firing_reader(fd, buffer, offset):
        if offset == READ:
            (guard_dir / "fired").write_text("{}")
        return _copy_stream.default_reader(fd, buffer, offset)

    with pytest.raises(CopyError, match=r"^the guard released the database \(see %s\)" % (guard_dir / "state.json")):
        copy_file(path, dest, reader=firing_reader, progress=Lease(str(guard_dir / "lease")))
    assert os.listdir(str(dest / SET / "data")) == []


def test_a_missing_lease_file_fails_the_copy_and_names_it(guard_dir):
    os.unlink(str(guard_dir / "lease"))
    with pytest.raises(CopyError) as caught:
        Lease(str(guard_dir / "lease")).check()
    assert str(caught.value) == ("lease file %s is missing: the guard released the database (see %s): this copy is not consistent; "
                                 "run the backup again" % (guard_dir / "lease", guard_dir / "state.json"))
    assert caught.value.retryable is False
