# -*- coding: utf-8 -*-
# Copyright: contributors to consistent.backup
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""Detached processes on the managed host, and how to tell that a process is provably gone.

This is a private module_utils file of consistent.backup: it is not part of the collection's
public API and may change without notice.

Two things outlive the Ansible task that starts them: the PostgreSQL holder (it keeps the backup's
connection open) and the guard (it runs post when the controller's post does not come). Both are started by
``spawn``: a double fork with setsid, so the process is re-parented to init, has no controlling terminal and
survives the end of the task, of the SSH session and of the controller. The child reports its first answer (it
started, or why not) over a pipe; the module waits for that line only.

Owners: a lock names its owner as ``{host, boot_id, pid, start_ticks}``. The owner is provably gone when it
was on this host and either the host has booted since (boot_id differs), the pid does not exist, or the pid
now belongs to another process (its start time differs). An owner on another host is never provably gone.
"""

from __future__ import annotations

import json
import os
import select
import socket
import time
import typing as t

Body = t.Callable[[int], None]


def _detach_stdio(keep: int) -> None:
    """Point 0/1/2 at /dev/null and close every other inherited descriptor except ``keep``.

    Ansible waits for the module's stdout/stderr pipes to close; a detached process keeping them would hang the task.
    """
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    if devnull > 2:
        os.close(devnull)
    try:
        max_fd = os.sysconf("SC_OPEN_MAX")
    except (ValueError, OSError):
        max_fd = 4096
    os.closerange(3, keep)
    os.closerange(keep + 1, max(max_fd, keep + 2))


def _run_detached(body: Body, report_fd: int) -> None:
    """Body of the detached grandchild; never returns (os._exit skips the module's atexit handlers)."""
    code = 1
    try:
        os.chdir("/")
        os.umask(0o077)
        _detach_stdio(report_fd)
        body(report_fd)
        code = 0
    except BaseException:  # pylint: disable=broad-except
        code = 1
    finally:
        os._exit(code)


def report(report_fd: t.Optional[int], message: t.Dict[str, t.Any]) -> None:
    """Send the one report line to the waiting module and close the pipe (a dead module is not an error)."""
    if report_fd is None:
        return
    data = (json.dumps(message) + "\n").encode("utf-8")
    try:
        while data:
            data = data[os.write(report_fd, data):]
    except OSError:
        pass
    try:
        os.close(report_fd)
    except OSError:
        pass


def spawn(body: Body, timeout: t.Optional[float] = None) -> t.Optional[t.Dict[str, t.Any]]:
    """Start ``body(report_fd)`` in a detached process; return its first report, or None when it sent none.

    ``body`` must call ``report(report_fd, {...})`` once it knows whether it started. Nothing is shared with the
    module after the fork except what ``body`` closes over, so open connections must be made inside ``body``.
    With ``timeout``, the wait for the report is abandoned after that many seconds (pre's bound): the report is then
    ``{"ok": False, "timed_out": True, "error": ...}`` and the process goes on (whoever runs post ends it).
    """
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # first child
        try:
            os.close(read_fd)
            os.setsid()
            if os.fork() == 0:
                _run_detached(body, write_fd)
        finally:
            os._exit(0)
    os.close(write_fd)
    os.waitpid(pid, 0)
    chunks = []
    deadline = None if timeout is None else time.monotonic() + timeout
    with os.fdopen(read_fd, "rb", buffering=0) as pipe:
        while True:
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([pipe], [], [], left)[0]:
                    if b"\n" in b"".join(chunks):
                        break
                    return {"ok": False, "timed_out": True, "retryable": False,
                            "error": "no report from the detached process within %.1f s" % timeout}
            chunk = pipe.read(65536)
            if not chunk:
                break
            chunks.append(chunk)
            if deadline is not None and b"\n" in chunk:
                break  # the first report line is all the module waits for
    data = b"".join(chunks)
    if not data.strip():
        return None
    return json.loads(data.decode("utf-8").splitlines()[0])


# ---------------------------------------------------------------------------------------------------------
# Owners of locks
# ---------------------------------------------------------------------------------------------------------

def boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id", "r", encoding="ascii") as handle:
            return handle.read().strip()
    except OSError:
        return ""


def start_ticks(pid: int) -> t.Optional[int]:
    """The process's start time in clock ticks since boot (/proc/<pid>/stat field 22), None when it does not exist."""
    try:
        with open("/proc/%d/stat" % pid, "rb") as handle:
            data = handle.read()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces and ')': split after the last ')'.
    fields = data[data.rindex(b")") + 2:].split()
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def _is_zombie(pid: int) -> bool:
    """A process that has exited but is not yet reaped (a detached process waits for init to reap it)."""
    try:
        with open("/proc/%d/stat" % pid, "rb") as handle:
            data = handle.read()
    except OSError:
        return False
    return data[data.rindex(b")") + 2:data.rindex(b")") + 3] in (b"Z", b"X")


def pid_alive(pid: t.Any) -> bool:
    """Whether process ``pid`` exists and has not exited (a zombie counts as gone)."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not _is_zombie(pid)


def owner(pid: t.Optional[int] = None) -> t.Dict[str, t.Any]:
    """The owner record of process ``pid`` (default: this process)."""
    pid = os.getpid() if pid is None else pid
    return {"host": socket.gethostname(), "boot_id": boot_id(), "pid": pid, "start_ticks": start_ticks(pid)}


def owner_gone(record: t.Optional[t.Dict[str, t.Any]]) -> t.Tuple[bool, str]:
    """(provably gone, why). Only an owner on this host can be proved gone; anything unsure says alive."""
    if not record or not isinstance(record.get("pid"), int):
        return False, "the owner is not recorded (no pid): it cannot be proved gone"
    if record.get("host") != socket.gethostname():
        return False, "the owner ran on host %s, not on this host %s: it cannot be proved gone from here" % (
            record.get("host"), socket.gethostname())
    if record.get("boot_id") and boot_id() and record["boot_id"] != boot_id():
        return True, "host %s has rebooted since the owner (pid %d) started" % (record["host"], record["pid"])
    if not pid_alive(record["pid"]):
        return True, "process %d no longer exists on %s" % (record["pid"], record["host"])
    now = start_ticks(record["pid"])
    if record.get("start_ticks") is not None and now is not None and now != record["start_ticks"]:
        return True, "pid %d on %s now belongs to another process (started at tick %d, not %d)" % (
            record["pid"], record["host"], now, record["start_ticks"])
    return False, "process %d on %s is alive" % (record["pid"], record["host"])
