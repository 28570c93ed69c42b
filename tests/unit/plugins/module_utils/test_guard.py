# -*- coding: utf-8 -*-
# Copyright: contributors to consistent.backup
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The on-host guard: real detached processes, real post commands, on a private runtime directory."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time

import pytest

from ansible_collections.consistent.backup.plugins.module_utils import _detach
from ansible_collections.consistent.backup.plugins.module_utils import _guard as g


def post_writes(marker):
    """A post command that appends one line to ``marker`` each time it runs."""
    return {"command": [sys.executable, "-c", "open(%r, 'a').write('post\\n')" % str(marker)]}


def spec(run_id, post, lease=60, max_quiesce=3600, retries=3, retry_delay=0):
    return {"backup_id": "b-" + run_id, "run_id": run_id, "post": post, "lease_seconds": lease, "max_quiesce": max_quiesce,
            "retries": retries, "retry_delay": retry_delay, "post_timeout": 30}


def wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("timed out after %.1f s waiting for %s" % (timeout, what))


@pytest.fixture
def gdir(tmp_path):
    runtime = tmp_path / "run"
    made = []

    def make(database="/srv/db", engine="files"):
        guard_dir = g.GuardDir(str(runtime), engine, database)
        made.append(guard_dir)
        return guard_dir

    yield make
    for guard_dir in made:  # never leave a guard process behind
        state = guard_dir.read_state() if os.path.isdir(guard_dir.path) else None
        if state and _detach.pid_alive(state.get("pid")):
            os.kill(state["pid"], signal.SIGKILL)


def test_disarmed_guard_exits_without_running_post(gdir, tmp_path):
    marker = tmp_path / "post.log"
    guard = gdir()
    armed = g.arm(guard, spec("r1", post_writes(marker)), check_mode=False)
    assert armed["changed"] is True and _detach.pid_alive(armed["pid"])
    result = g.disarm(guard, "r1", check_mode=False)
    assert result["disarmed"] is True and result["fired"] is None
    assert not _detach.pid_alive(armed["pid"])
    assert not marker.exists()
    assert guard.read_state() is None  # the record went to history/
    history = os.path.join(guard.path, "history")
    [record] = os.listdir(history)
    with open(os.path.join(history, record), encoding="utf-8") as handle:
        assert json.load(handle)["state"] == "disarmed"


def test_guard_runs_post_when_the_lease_is_not_renewed(gdir, tmp_path):
    marker = tmp_path / "post.log"
    guard = gdir()
    armed = g.arm(guard, spec("r1", post_writes(marker), lease=1), check_mode=False)
    wait_for(lambda: (guard.read_state() or {}).get("state") == g.FIRED, 6, "the guard to run post")
    assert marker.read_text() == "post\n"
    state = guard.read_state()
    assert "no progress for" in state["reason"]
    assert state["post_result"]["ok"] is True and state["post_result"]["attempts"][0]["rc"] == 0
    assert os.path.exists(guard.fired_path)
    wait_for(lambda: not _detach.pid_alive(armed["pid"]), 5, "the guard to exit")


def test_renewing_the_lease_keeps_the_guard_waiting(gdir, tmp_path):
    marker = tmp_path / "post.log"
    guard = gdir()
    g.arm(guard, spec("r1", post_writes(marker), lease=1), check_mode=False)
    for _tick in range(8):  # 2 s, twice the lease
        os.utime(guard.lease_path)
        time.sleep(0.25)
    assert guard.read_state()["state"] == g.ARMED
    assert not marker.exists()
    g.disarm(guard, "r1", check_mode=False)


def test_max_quiesce_fires_even_while_the_lease_is_renewed(gdir, tmp_path):
    marker = tmp_path / "post.log"
    guard = gdir()
    g.arm(guard, spec("r1", post_writes(marker), lease=60, max_quiesce=1), check_mode=False)
    deadline = time.monotonic() + 5
    while (guard.read_state() or {}).get("state") != g.FIRED and time.monotonic() < deadline:
        os.utime(guard.lease_path)
        time.sleep(0.1)
    assert "max_quiesce (1 s) reached" in guard.read_state()["reason"]
    assert marker.read_text() == "post\n"


def test_a_failing_post_is_retried_and_its_stderr_recorded(gdir, tmp_path):
    guard = gdir()
    post = {"command": [sys.executable, "-c", "import sys; sys.stderr.write('appdb: cannot resume: disk full\\n'); sys.exit(4)"]}
    g.arm(guard, spec("r1", post, lease=1, retries=2), check_mode=False)
    wait_for(lambda: (guard.read_state() or {}).get("state") == g.POST_FAILED, 8, "post to fail twice")
    attempts = guard.read_state()["post_result"]["attempts"]
    assert [attempt["rc"] for attempt in attempts] == [4, 4]
    assert attempts[-1]["stderr"] == "appdb: cannot resume: disk full"


def test_the_secret_login_reaches_the_post_command_only_and_is_masked_in_every_record(gdir, tmp_path):
    guard = gdir(engine="btrieve")
    seen = tmp_path / "argv.json"
    # The post records the argv it got (outside the runtime directory), then echoes it in an error, as butil may.
    post = {"command": [sys.executable, "-c", "import json, sys; open(%r, 'w').write(json.dumps(sys.argv[1:])); "
                        "sys.stdout.write('butil ' + ' '.join(sys.argv[1:])); sys.exit(2)" % str(seen), "-endbu", "@x.lst"]}
    result = g.arm(guard, spec("r1", post, lease=1, retries=1), check_mode=False, secret_argv=["-UIDadmin", "-PWDs3cret"])
    assert "s3cret" not in json.dumps(result)
    wait_for(lambda: (guard.read_state() or {}).get("state") == g.POST_FAILED, 8, "the guard to run post")
    assert json.loads(seen.read_text()) == ["-endbu", "@x.lst", "-UIDadmin", "-PWDs3cret"]
    assert guard.read_state()["post_result"]["attempts"][0]["stdout"] == "butil -endbu @x.lst ******** ********"
    for root, _dirs, files in os.walk(str(tmp_path / "run")):
        for name in files:
            with open(os.path.join(root, name), "rb") as handle:
                assert b"s3cret" not in handle.read(), os.path.join(root, name)


def test_second_run_on_the_same_database_is_refused_naming_the_first(gdir, tmp_path):
    guard = gdir()
    g.arm(guard, spec("r1", post_writes(tmp_path / "p")), check_mode=False)
    with pytest.raises(g.GuardError, match="being backed up by run r1 .backup_id b-r1"):
        g.arm(gdir(), spec("r2", post_writes(tmp_path / "p")), check_mode=False)
    with pytest.raises(g.GuardError, match="being backed up by run r1"):
        g.arm(gdir(), spec("r2", post_writes(tmp_path / "p")), check_mode=True)
    assert guard.read_state()["state"] == g.ARMED and guard.read_state()["run_id"] == "r1"
    g.disarm(guard, "r1", check_mode=False)


def test_another_database_is_not_locked(gdir, tmp_path):
    g.arm(gdir("/srv/db1"), spec("r1", post_writes(tmp_path / "p")), check_mode=False)
    other = g.arm(gdir("/srv/db2"), spec("r2", post_writes(tmp_path / "p")), check_mode=False)
    assert other["changed"] is True


def test_arming_again_by_the_same_run_is_not_a_change(gdir, tmp_path):
    guard = gdir()
    first = g.arm(guard, spec("r1", post_writes(tmp_path / "p")), check_mode=False)
    again = g.arm(guard, spec("r1", post_writes(tmp_path / "p")), check_mode=False)
    assert again["changed"] is False and again["pid"] == first["pid"]


def test_dead_guard_is_taken_over_and_its_post_run_first(gdir, tmp_path):
    marker = tmp_path / "post.log"
    guard = gdir()
    armed = g.arm(guard, spec("r1", post_writes(marker)), check_mode=False)
    os.kill(armed["pid"], signal.SIGKILL)
    wait_for(lambda: not _detach.pid_alive(armed["pid"]), 5, "the guard to die")
    audit = g.arm(gdir(), spec("r2", post_writes(marker)), check_mode=True)
    assert audit["took_over"]["would"] is True and not marker.exists()
    result = g.arm(gdir(), spec("r2", post_writes(marker)), check_mode=False)
    assert marker.read_text() == "post\n"
    assert result["took_over"]["run_id"] == "r1"
    assert "no longer exists" in result["took_over"]["why"]
    assert result["took_over"]["post_ok"] is True
    assert guard.read_state()["run_id"] == "r2"


def test_a_dead_guard_whose_recorded_post_is_of_no_known_kind_is_refused_saying_what_to_do(gdir, tmp_path):
    guard = gdir()
    armed = g.arm(guard, spec("r1", {"none": True}), check_mode=False)
    os.kill(armed["pid"], signal.SIGKILL)
    wait_for(lambda: not _detach.pid_alive(armed["pid"]), 5, "the guard to die")
    guard.write_state(dict(guard.read_state(), post={"pg_session": {"backup_id": "b-r1"}}))  # an earlier release's record

    with pytest.raises(g.GuardError, match="cannot be run .*exactly one of command.*bring the database back by hand"):
        g.arm(gdir(), spec("r2", {"none": True}), check_mode=False)


def test_next_run_reports_what_the_guard_did_once(gdir, tmp_path):
    marker = tmp_path / "post.log"
    guard = gdir()
    g.arm(guard, spec("r1", post_writes(marker), lease=1), check_mode=False)
    wait_for(lambda: (guard.read_state() or {}).get("state") == g.FIRED, 6, "the guard to run post")
    audit = g.arm(gdir(), spec("r2", post_writes(marker)), check_mode=True)
    assert audit["previous"]["run_id"] == "r1" and audit["previous"]["post_ok"] is True
    assert g.status(gdir())["previous"]["run_id"] == "r1"
    second = g.arm(gdir(), spec("r2", post_writes(marker)), check_mode=False)
    assert second["previous"]["run_id"] == "r1"
    assert "ran post itself" in g.describe_record(second["previous"])
    g.disarm(gdir(), "r2", check_mode=False)
    third = g.arm(gdir(), spec("r3", post_writes(marker)), check_mode=False)
    assert third["previous"] is None


def test_disarm_after_the_guard_fired_reports_it(gdir, tmp_path):
    marker = tmp_path / "post.log"
    guard = gdir()
    g.arm(guard, spec("r1", post_writes(marker), lease=1), check_mode=False)
    wait_for(lambda: (guard.read_state() or {}).get("state") == g.FIRED, 6, "the guard to run post")
    result = g.disarm(guard, "r1", check_mode=False)
    assert result["fired"]["state"] == g.FIRED and result["disarmed"] is False


def test_disarm_of_another_run_changes_nothing(gdir, tmp_path):
    guard = gdir()
    g.arm(guard, spec("r1", post_writes(tmp_path / "p")), check_mode=False)
    result = g.disarm(guard, "r9", check_mode=False)
    assert result["changed"] is False
    assert guard.read_state()["state"] == g.ARMED


def test_guard_files_are_private(gdir, tmp_path):
    guard = gdir()
    g.arm(guard, spec("r1", post_writes(tmp_path / "p")), check_mode=False)
    assert stat.S_IMODE(os.stat(guard.path).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(guard.state_path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(guard.lease_path).st_mode) == 0o600


def test_check_mode_arms_nothing(gdir, tmp_path):
    guard = gdir()
    result = g.arm(guard, spec("r1", post_writes(tmp_path / "p")), check_mode=True)
    assert result["changed"] is True and "pid" not in result
    assert not os.path.exists(guard.path)


def test_post_must_name_one_action():
    with pytest.raises(g.GuardError, match="exactly one of command"):
        g.normalize_post({"command": ["x"], "none": True})
    assert g.normalize_post({"command": "appdb resume 'a b'"}) == {"command": ["appdb", "resume", "a b"]}


def test_a_socket_post_with_an_unknown_member_or_a_relative_path_is_refused(tmp_path):
    with pytest.raises(g.GuardError, match="unknown member.*sucess"):
        g.normalize_post({"socket": {"path": str(tmp_path / "s"), "request": {"cmd": "abort"}, "sucess": {"ok": True}}})
    with pytest.raises(g.GuardError, match="absolute path"):
        g.normalize_post({"socket": {"path": "s.sock", "request": {"cmd": "abort"}}})
    assert g.normalize_post({"socket": {"path": str(tmp_path / "s"), "request": {"cmd": "abort"}}})["socket"]["timeout"] == 10.0


# --- the socket post: one request to a service on a Unix socket -------------------------------------------------

SERVICE = """
import json, os, signal, socket, sys, time
path, answer, mode, record = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], sys.argv[4]
listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
listener.bind(path)
listener.listen(1)
open(record + ".ready", "w").write(str(os.getpid()))
client, _ = listener.accept()
data = b""
while not data.endswith(b"\\n"):
    data += client.recv(65536)
open(record, "w").write(data.decode())
if mode == "silent":
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
    time.sleep(60)
client.sendall((json.dumps(answer) + "\\n").encode())
if mode == "stays":
    time.sleep(60)
"""


@pytest.fixture
def service(tmp_path):
    started = []

    def start(answer, mode="exits"):
        path, record = str(tmp_path / "svc.sock"), str(tmp_path / "request.json")
        proc = subprocess.Popen([sys.executable, "-c", SERVICE, path, json.dumps(answer), mode, record])
        started.append(proc)
        wait_for(lambda: os.path.exists(record + ".ready"), 10, "the service to listen")
        return path, record, proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def socket_post(path, **more):
    post = {"path": path, "request": {"cmd": "abort"}, "reason_key": "reason", "success": {"ok": True}, "absent_ok": True,
            "timeout": 5, "exit_wait": 5, "answer_field": "state.state", "what": "end the test service"}
    post.update(more)
    return g.normalize_post({"socket": post})


def test_a_socket_post_sends_its_request_with_the_reason_and_waits_for_the_listener_to_exit(service):
    path, record, proc = service({"ok": True, "state": {"state": "aborted"}})

    outcome = g.run_post(socket_post(path), 3, 0, 30, "released by the guard: the test")

    assert outcome["ok"] is True and len(outcome["attempts"]) == 1 and outcome["what"] == "end the test service"
    assert json.loads(open(record).read()) == {"cmd": "abort", "reason": "released by the guard: the test"}
    assert "answered: aborted; its listener, pid %d, is gone" % proc.pid in outcome["attempts"][0]["stdout"]


def test_a_socket_nobody_listens_on_is_success_only_when_absent_is_ok(tmp_path):
    gone = str(tmp_path / "gone.sock")

    assert g.run_post(socket_post(gone), 1, 0, 30, "test")["attempts"][0]["stdout"].startswith("nobody listens on %s" % gone)
    refused = g.run_post(socket_post(gone, absent_ok=False), 2, 0, 30, "test")
    assert refused["ok"] is False and len(refused["attempts"]) == 2


def test_a_listener_that_does_not_answer_is_sent_sigterm_and_must_exit(service):
    path, _record, proc = service({"ok": True}, mode="silent")

    outcome = g.run_post(socket_post(path, timeout=0.5), 3, 0, 30, "test")

    assert outcome["ok"] is True
    assert "did not answer" in outcome["attempts"][0]["stdout"] and "sent SIGTERM to its listener, pid %d" % proc.pid in outcome["attempts"][0]["stdout"]
    assert proc.wait(5) == 0


def test_an_answer_without_the_members_of_success_fails_the_attempt(service):
    path, _record, _proc = service({"ok": False, "error": "unknown command"}, mode="stays")

    outcome = g.run_post(socket_post(path, exit_wait=0), 1, 0, 30, "test")

    assert outcome["ok"] is False
    assert 'the answer has {"ok": false}; success needs {"ok": true}' in outcome["attempts"][0]["stderr"]


def test_a_listener_still_alive_after_exit_wait_fails_the_attempt(service):
    path, _record, proc = service({"ok": True, "state": {"state": "aborted"}}, mode="stays")

    outcome = g.run_post(socket_post(path, exit_wait=0.5), 1, 0, 30, "test")

    assert outcome["ok"] is False and "pid %d, is still alive" % proc.pid in outcome["attempts"][0]["stderr"]


# --- pre's window: pre cannot outrun the guard ------------------------------------------------------------------

def window(guard, run_id="r1", bound=30, what="the test's pre"):
    return g.PreWindow(guard.path, run_id, bound, what)


def lines(marker):
    return marker.read_text().splitlines() if marker.exists() else []


def test_pre_renews_the_lease_while_its_call_runs_within_its_bound(gdir, tmp_path):
    marker = tmp_path / "post.log"
    guard = gdir()
    g.arm(guard, spec("r1", post_writes(marker), lease=1), check_mode=False)
    result = g.run_pre(window(guard), lambda pre: time.sleep(3) or "quiesced")  # three times the lease
    assert result == "quiesced"
    assert guard.read_state()["state"] == g.ARMED and lines(marker) == []
    done = json.loads(open(guard.pre_done_path, encoding="utf-8").read())
    assert done["outcome"] == "ok" and done["released"] is None
    g.disarm(guard, "r1", check_mode=False)


def test_the_lease_runs_out_after_pre_ends_and_the_guard_needs_no_second_post(gdir, tmp_path):
    marker = tmp_path / "post.log"
    guard = gdir()
    armed = g.arm(guard, spec("r1", post_writes(marker), lease=1), check_mode=False)
    g.run_pre(window(guard), lambda pre: time.sleep(1.5))
    wait_for(lambda: (guard.read_state() or {}).get("state") == g.FIRED, 6, "the guard to run post")
    wait_for(lambda: not _detach.pid_alive(armed["pid"]), 5, "the guard to exit")
    assert lines(marker) == ["post"]
    assert "pre_running" not in guard.read_state()


def test_pre_refuses_to_quiesce_when_the_guard_has_fired(gdir, tmp_path):
    marker = tmp_path / "post.log"
    guard = gdir()
    g.arm(guard, spec("r1", post_writes(marker), lease=1), check_mode=False)
    wait_for(lambda: (guard.read_state() or {}).get("state") == g.FIRED, 6, "the guard to run post")
    called = []
    with pytest.raises(g.GuardError, match=r"did not run, nothing was quiesced: the guard of this run already fired .*no progress for"):
        g.run_pre(window(guard), called.append)
    assert called == [] and lines(marker) == ["post"]


def test_pre_of_another_run_is_refused(gdir, tmp_path):
    guard = gdir()
    g.arm(guard, spec("r1", post_writes(tmp_path / "p")), check_mode=False)
    with pytest.raises(g.GuardError, match=r"is run r1's, not this run's \(r2\)"):
        g.run_pre(window(guard, run_id="r2"), lambda pre: None)
    g.disarm(guard, "r1", check_mode=False)


def test_pre_command_is_killed_with_its_children_at_the_bound(gdir, tmp_path):
    guard = gdir()
    g.arm(guard, spec("r1", post_writes(tmp_path / "p")), check_mode=False)
    child_pid = tmp_path / "child.pid"
    # A shell whose child sleeps: killing only the shell would leave the sleep (the real quiesce) running.
    argv = ["/bin/sh", "-c", "sleep 30 & echo $! > %s; wait" % child_pid]
    began = time.monotonic()
    with pytest.raises(g.GuardError, match=r"did not finish within its bound, backup_pre_timeout \(1 s\)") as caught:
        g.run_pre(window(guard, bound=1), lambda pre: pre.run_command(argv))
    assert time.monotonic() - began < 5
    assert caught.value.facts["pre_timed_out"] is True
    wait_for(lambda: not _detach.pid_alive(int(child_pid.read_text())), 5, "the command's child to be killed")
    done = json.loads(open(guard.pre_done_path, encoding="utf-8").read())
    assert done["outcome"].startswith("failed: pre (the test's pre) of database /srv/db did not finish")
    g.disarm(guard, "r1", check_mode=False)


def test_guard_fired_during_pre_then_pre_releases_what_it_quiesced_and_fails(gdir, tmp_path):
    marker = tmp_path / "post.log"
    guard = gdir()
    armed = g.arm(guard, spec("r1", post_writes(marker), lease=60, max_quiesce=1), check_mode=False)

    def slow_quiesce(pre):
        wait_for(lambda: (guard.read_state() or {}).get("state") == g.PRE_WAIT, 6, "the guard to fire and wait for pre")
        with open(str(marker), "a") as handle:
            handle.write("quiesced\n")  # pre's call quiesces after the guard's post

    with pytest.raises(g.GuardError, match=r"fired at .* while pre \(the test's pre, ok\) was running, because max_quiesce "
                                           r"\(1 s\) reached.*pre released what it quiesced \(run .*: ok\)"):
        g.run_pre(window(guard), slow_quiesce)
    wait_for(lambda: not _detach.pid_alive(armed["pid"]), 5, "the guard to exit")
    assert lines(marker) == ["post", "quiesced", "post"]  # the guard's post, pre's late quiesce, pre's release
    state = guard.read_state()
    assert state["state"] == g.FIRED and "released what it quiesced itself" in state["pre_end"]
    assert "post_again" not in state


def test_guard_fired_during_pre_runs_post_again_when_pre_never_ends_within_its_bound(gdir, tmp_path, monkeypatch):
    monkeypatch.setattr(g, "PRE_GRACE", 0.5)
    marker = tmp_path / "post.log"
    guard = gdir()
    armed = g.arm(guard, spec("r1", post_writes(marker), lease=60, max_quiesce=1), check_mode=False)
    pre = window(guard, bound=3)
    pre.open()  # the module quiesces, then dies without its end mark (SIGKILL, OOM)
    pre._stop.set()
    wait_for(lambda: (guard.read_state() or {}).get("state") == g.PRE_WAIT, 6, "the guard to fire and wait for pre")
    assert lines(marker) == ["post"]
    with pytest.raises(g.GuardError, match="fired while its pre was running and stays until pre ends"):
        g.arm(gdir(), spec("r2", post_writes(marker)), check_mode=False)
    wait_for(lambda: not _detach.pid_alive(armed["pid"]), 8, "the guard to run post again and exit")
    state = guard.read_state()
    assert lines(marker) == ["post", "post"]
    assert state["state"] == g.FIRED and state["post_again"]["ok"] is True
    assert "bound passed" in state["pre_end"]
    assert "ran post once more (ok)" in g.describe_record(g.summary(state))


def test_disarm_waits_for_a_guard_that_waits_for_pre(gdir, tmp_path):
    marker = tmp_path / "post.log"
    guard = gdir()
    g.arm(guard, spec("r1", post_writes(marker), lease=60, max_quiesce=1), check_mode=False)
    pre = window(guard)
    pre.open()
    wait_for(lambda: (guard.read_state() or {}).get("state") == g.PRE_WAIT, 6, "the guard to fire and wait for pre")
    with pytest.raises(g.GuardError, match="fired"):
        pre.close("ok", lambda: {"ok": True, "what": "the test's release"})
    result = g.disarm(guard, "r1", check_mode=False)
    assert result["fired"]["state"] == g.FIRED and "released what it quiesced itself" in result["fired"]["pre_end"]
    assert guard.read_state() is None  # archived


def test_next_run_ends_the_quiesce_a_failed_guard_post_left_before_its_own_pre(gdir, tmp_path):
    marker = tmp_path / "post.log"
    guard = gdir()
    failing = {"command": [sys.executable, "-c", "import sys; sys.exit(3)"]}
    g.arm(guard, spec("r1", failing, lease=1, retries=1), check_mode=False)
    wait_for(lambda: (guard.read_state() or {}).get("state") == g.POST_FAILED, 6, "the guard's post to fail")
    second = g.arm(gdir(), spec("r2", post_writes(marker)), check_mode=False)
    assert second["released_previous"]["ok"] is True and lines(marker) == ["post"]
    assert second["previous"]["state"] == g.POST_FAILED
    g.disarm(gdir(), "r2", check_mode=False)


def test_guard_fired_during_pre_runs_post_again_as_soon_as_pre_s_dead_module_and_its_command_are_gone(gdir, tmp_path):
    marker = tmp_path / "post.log"
    guard = gdir()
    armed = g.arm(guard, spec("r1", post_writes(marker), lease=60, max_quiesce=2), check_mode=False)
    # Pre's module in a process of its own: it opens the window (bound 60 s) and runs a command of 4 s; then it dies.
    module = subprocess.Popen([sys.executable, "-c", (
        "import sys; from ansible_collections.consistent.backup.plugins.module_utils import _guard as g; "
        "w = g.PreWindow(sys.argv[1], 'r1', 60, 'pre of a module that dies'); w.open(); w.run_command(['sleep', '4'])"),
        guard.path], env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    wait_for(lambda: "command_pgid" in (g._read_json(guard.pre_path) or {}), 10, "pre's command to start")
    module.kill()  # SIGKILL: no end mark; its command goes on in its own session
    module.wait()
    began = time.monotonic()
    wait_for(lambda: not _detach.pid_alive(armed["pid"]), 20, "the guard to run post again and exit")
    assert time.monotonic() - began < 15  # far before pre's bound (60 s): pre was provably over
    state = guard.read_state()
    assert state["state"] == g.FIRED and state["post_again"]["ok"] is True
    assert "pre is over without its end mark: its module is gone" in state["pre_end"] and "so is its command" in state["pre_end"]
    assert lines(marker) == ["post", "post"]


def test_spawn_abandons_the_wait_for_a_slow_report_at_its_timeout(tmp_path):
    # The PostgreSQL start's bound: the holder reports once the server started the backup; pre waits no longer.
    began = time.monotonic()
    report = _detach.spawn(lambda fd: (time.sleep(3), _detach.report(fd, {"ok": True})), timeout=0.5)
    assert report["ok"] is False and report["timed_out"] is True and "within 0.5 s" in report["error"]
    assert time.monotonic() - began < 2.5
    assert _detach.spawn(lambda fd: _detach.report(fd, {"ok": True, "n": 1}), timeout=5) == {"ok": True, "n": 1}
