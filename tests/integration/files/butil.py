# -*- coding: utf-8 -*-
# Copyright: contributors to consistent.backup
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""An emulator of Btrieve/Zen's ``butil`` continuous-operation commands, for the tests only (never shipped).

No Btrieve/Zen engine can be installed here, so this stands in for the engine and its ``butil``. Each behaviour
cites its source: "ref: <row>" is a row of ../shared/reference/butil.md, "article" is the seed document (Goldstar
Software, "We Want YOU to Have a Valid Backup!" / "Using Continuous Operations Mode to Attain Database Integrity").
Behaviours with no source say "ASSUMPTION"; the module must handle them safely, and tests do not rely on them as
facts about the real engine.

butil's command line (ref: "BUTIL -STARTBU <file | @listFile> [/UID<name> /PWD<word> [/DB<name>]]", "-ENDBU </A |
file | @listFile>", "on Linux options are written with - instead of /; options are case-insensitive"):

    butil.py -startbu <file|@listfile> [-UIDname -PWDword [-DBname]]
    butil.py -endbu </A | -A | file | @listfile> [-UIDname -PWDword [-DBname]]
    butil.py -stat <file> [-UIDname -PWDword [-DBname]]

(Pervasive.SQL User's Guide, "butil" synopsis for Linux, http://mikroplan.com.pl/doc/pervasive/html/uguide/unixsupp6.html:
"-endbu </A | sourceFile | @listFile> [/UIDuid /PWDpwd [/DBname]]", "-startbu <sourceFile | @listFile> [/UIDuid /PWDpwd
[/DBname]]", "-stat sourceFile [/Oowner] [/UIDuid /PWDpwd [/DBname]]": the login is given the same way to every
command, on the command line.)

The engine's state lives in $BUTIL_EMULATOR_HOME (the engine is a server; its memory is this directory):

    engine.json        {"continuous": {path: {"since": epoch, "delta": path}}}: the files in continuous operation
    calls.log          one JSON line per butil call: argv (password masked) and exit code; tests read it
    engine-down        exists: the engine is not running; its content is the status (default 20)
    fail-startbu       "N STATUS": the next N -startbu calls fail with STATUS (a transient failure)
    sleep-startbu      seconds -startbu takes (a slow start: rolling the database into continuous operation; ref: butil's
                       own success output, "BUTIL-139: Depending on the number of files being processed, this request
                       may take several minutes", and the article's "note the time it takes for the command prompt to
                       come back"); the tests make pre outlast the guard's lease with it
    sleep-rollin       seconds the roll-in of each delta takes after -endbu or an open; the roll-in then runs in the
                       background, as the article describes ("you will be able to watch as the delta files disappear")
    hold-open-only     exists: opening a file with -stat does not roll its stale delta in (a newer engine)
    credentials        "user:password" or "user:password:db": the engine is secured. EVERY command (-startbu, -endbu,
                       -stat) needs /UID and /PWD matching it (and /DB, when given), or it fails with status 170, login
                       failed, exit 2, and changes nothing (ref: "170/171 login failed" (btrieveC.h); the synopsis above
                       gives the login to each command; that a secured engine refuses a call without it is what the
                       login is for - the issue's finding "A secured Btrieve engine cannot be backed up" is that)
    echo-command       exists: a failed call prints its own command line, password included, before its error lines.
                       PSQL v12 Advanced Operations Guide, "Command Files": "the resulting output file shows the command
                       followed by its results"; ASSUMPTION that a command-line call does the same in an error (the
                       issue's finding "The Btrieve password leaks"): the module must mask it wherever it keeps output

Emulator-only entry points (not butil; the tests' "application" and fault injection):

    butil.py emu-write FILE OFFSET HEXDATA   write through the engine
    butil.py emu-read FILE OFFSET LENGTH     read through the engine (prints hex)
    butil.py emu-crash                       the engine crashes: its memory is lost, the deltas stay
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import sys
import time
import typing as t

# ref: "delta file: same directory, same base name, extension .^^^"
DELTA_EXTENSION = ".^^^"
# ref: "exit codes: 0 success, 1 completed with errors (partial), 2 did not complete, 3 syntax error / usage"
EXIT_OK, EXIT_PARTIAL, EXIT_FAILED, EXIT_USAGE = 0, 1, 2, 3
# ref: "status 12 file not found; 88 incompatible mode = file already in continuous operation; 85 file in use, also
# two files with the same base name in one directory"; "20 record manager inactive"; "170/171 login failed"
STATUS_NOT_FOUND, STATUS_IN_USE, STATUS_INCOMPATIBLE_MODE = 12, 85, 88
STATUS_INACTIVE, STATUS_LOGIN_FAILED, STATUS_BAD_NAME = 20, 170, 11

# ref: "success output: banner ... then BUTIL-139 ... then The command completed successfully." The version on the
# banner line is an ASSUMPTION.
BANNER = "Btrieve Maintenance Utility 16.00.000 (emulator)\nCopyright (C) Actian Corporation. All Rights Reserved."
BUTIL_139 = "BUTIL-139: Depending on the number of files being processed, this request may take several minutes."
COMPLETED = "The command completed successfully."


class Failed(Exception):
    def __init__(self, exit_code: int, lines: t.List[str]) -> None:
        super().__init__("\n".join(lines))
        self.exit_code = exit_code
        self.lines = lines


def home() -> str:
    path = os.environ.get("BUTIL_EMULATOR_HOME")
    if not path:
        raise Failed(EXIT_USAGE, ["butil emulator: set BUTIL_EMULATOR_HOME to the engine's state directory"])
    os.makedirs(path, exist_ok=True)
    return path


def switch(name: str) -> t.Optional[str]:
    path = os.path.join(home(), name)
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as handle:
        return handle.read().strip()


def flag(name: str) -> bool:
    return os.path.exists(os.path.join(home(), name))


@contextlib.contextmanager
def engine_lock() -> t.Iterator[None]:
    """One engine: every request is serialised, so a start is one instant for all its files (ref: "start is
    all-or-nothing")."""
    with open(os.path.join(home(), "engine.lock"), "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def load_state() -> t.Dict[str, t.Any]:
    try:
        with open(os.path.join(home(), "engine.json"), encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        return {"continuous": {}}


def save_state(state: t.Dict[str, t.Any]) -> None:
    path = os.path.join(home(), "engine.json")
    with open(path + ".tmp", "w", encoding="utf-8") as handle:
        json.dump(state, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(path + ".tmp", path)


def delta_path(path: str) -> str:
    # ref: same directory, same base name (INVOICE.HDR -> INVOICE.^^^), which is why INVOICE.HDR and INVOICE.DET
    # cannot both be in continuous operation.
    return os.path.splitext(path)[0] + DELTA_EXTENSION


def status_line(status: int, path: str = "") -> str:
    # ASSUMPTION (ref: "error lines look like BUTIL-100: MicroKernel error = N", unverified).
    return "BUTIL-100: MicroKernel error = %d%s" % (status, (" on file %s" % path) if path else "")


# --------------------------------------------------------------------------------------------------------------
# deltas: while a file is in continuous operation its writes go to the delta (ref, article); the delta's format is
# the engine's own and unknown: here, one "offset hexdata" line per write (ASSUMPTION, private to the emulator).

def delta_records(delta: str) -> t.List[t.Tuple[int, bytes]]:
    records = []
    with open(delta, encoding="ascii") as handle:
        for line in handle:
            offset, data = line.split()
            records.append((int(offset), bytes.fromhex(data)))
    return records


def roll_in(path: str) -> bool:
    """Apply the delta's pages to the data file, then delete the delta (article: "roll the changed pages from each
    delta file into the corresponding primary file and then delete the delta"). Caller holds the engine lock."""
    delta = delta_path(path)
    if not os.path.exists(delta):
        return False
    fd = os.open(path, os.O_WRONLY)
    try:
        for offset, data in delta_records(delta):
            os.pwrite(fd, data, offset)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.unlink(delta)
    return True


def roll_in_files(paths: t.List[str]) -> None:
    """Roll in now, or, with sleep-rollin, in a detached child that takes that long per file (a busy database;
    article: "this can take long on a busy database"; "watch as the delta files disappear")."""
    seconds = float(switch("sleep-rollin") or 0)
    if seconds <= 0:
        for path in paths:
            roll_in(path)
        return
    if os.fork() != 0:
        return
    os.setsid()
    if os.fork() != 0:
        os._exit(0)  # pylint: disable=protected-access
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    for path in paths:
        time.sleep(seconds)
        with engine_lock():
            if path not in load_state()["continuous"]:
                roll_in(path)
    os._exit(0)  # pylint: disable=protected-access


def open_file(path: str, state: t.Dict[str, t.Any]) -> None:
    """Opening a file not in continuous operation that still has a delta rolls the delta in (article, option 2: "the
    roll-in process will start on each file which is opened"). Newer engines do it only while the file is held open
    (article: "not so well on the newer ones ... which only roll files in while the file is actually open"): with
    hold-open-only, a -stat (which closes the file at once) leaves the delta, a write through the engine does not."""
    if path not in state["continuous"] and os.path.exists(delta_path(path)):
        roll_in(path)


def engine_write(path: str, offset: int, data: bytes) -> str:
    """Write through the engine: to the delta while the file is in continuous operation (ref: "while in continuous
    operation writes go to the delta, the data file is unchanged"), to the file otherwise. Returns where it went."""
    with engine_lock():
        state = load_state()
        if path in state["continuous"]:
            with open(delta_path(path), "a", encoding="ascii") as handle:
                handle.write("%d %s\n" % (offset, data.hex()))
                handle.flush()
                os.fsync(handle.fileno())
            return "delta"
        open_file(path, state)
        fd = os.open(path, os.O_WRONLY)
        try:
            os.pwrite(fd, data, offset)
            os.fsync(fd)
        finally:
            os.close(fd)
        return "file"


def engine_read(path: str, offset: int, length: int) -> bytes:
    """Read through the engine: the file's pages with the delta's newer pages over them (ASSUMPTION: how the engine
    merges is unknown; readers see their own writes, which is what applications rely on)."""
    with engine_lock():
        state = load_state()
        if path not in state["continuous"]:
            open_file(path, state)
        with open(path, "rb") as handle:
            handle.seek(offset)
            buffer = bytearray(handle.read(length).ljust(length, b"\0"))
        delta = delta_path(path)
        if path in state["continuous"] and os.path.exists(delta):
            for where, data in delta_records(delta):
                for index, byte in enumerate(data):
                    if offset <= where + index < offset + length:
                        buffer[where + index - offset] = byte
        return bytes(buffer)


# --------------------------------------------------------------------------------------------------------------
# butil's command line

def parse(argv: t.List[str]) -> t.Tuple[str, t.List[str], t.Dict[str, str]]:
    """(command, operands, options). Options start with - or / and are case-insensitive (ref: Zen v14 butil
    reference); a lone /A or -A is the endbu 'all files' operand (ref: -ENDBU </A | ...>)."""
    command, operands, options = "", [], {}
    for arg in argv:
        lowered = arg.lower()
        option = re.match(r"^-(uid|pwd|db)(.*)$", arg, re.IGNORECASE)
        if not command and lowered in ("-startbu", "-endbu", "-stat"):
            command = lowered[1:]
        elif lowered in ("/a", "-a"):
            operands.append("/A")
        elif option:
            # On Linux only "-" starts an option: a path starts with "/" (ref: Zen v14 butil reference).
            options[option.group(1).lower()] = option.group(2)
        else:
            operands.append(arg)
    if not command or len(operands) != 1:
        raise Failed(EXIT_USAGE, ["BUTIL-1: Invalid command line. Usage: butil -startbu <file | @listfile> "
                                  "[/UID<name> /PWD<word> [/DB<name>]] | -endbu </A | file | @listfile> | -stat <file>"])
    return command, operands, options


def files_of(operand: str) -> t.List[str]:
    """A file or @listfile: fully qualified paths, one per line, CR/LF (ref: PSQL v11-v13 docs); no wildcards (ref:
    9.1 guide). What butil does with a wildcard is unknown: here it is a usage error (ASSUMPTION)."""
    if operand.startswith("@"):
        try:
            with open(operand[1:], "rb") as handle:
                names = [line.strip().decode("utf-8") for line in handle.read().split(b"\n")]
        except OSError:
            raise Failed(EXIT_FAILED, [status_line(STATUS_NOT_FOUND, operand[1:])])  # ASSUMPTION: a missing list file is status 12
        names = [name for name in names if name]
    else:
        names = [operand]
    for name in names:
        if any(char in name for char in "*?"):
            raise Failed(EXIT_USAGE, ["BUTIL-1: Wildcards are not allowed: %s" % name])
    return names


def check_engine(options: t.Dict[str, str]) -> None:
    down = switch("engine-down")
    if down is not None:
        # ref: "20 record manager inactive, 3012/3014 engine not found" (btrieveC.h)
        raise Failed(EXIT_FAILED, [status_line(int(down or STATUS_INACTIVE))])
    credentials = switch("credentials")
    if credentials is not None:
        user, password, db = (credentials.split(":", 2) + [""])[:3]
        given = (options.get("uid"), options.get("pwd"), options.get("db") if db else None)
        if given != (user, password, db or None):
            raise Failed(EXIT_FAILED, [status_line(STATUS_LOGIN_FAILED)])  # ref: 170/171 login failed, on every command


def transient_failure(command: str) -> None:
    spec = switch("fail-" + command)
    if spec:
        count, status = (spec.split() + ["85"])[:2]
        if int(count) > 0:
            with open(os.path.join(home(), "fail-" + command), "w", encoding="utf-8") as handle:
                handle.write("%d %s" % (int(count) - 1, status))
            # No source for a transient failure's status; 85 (file in use) is one a busy engine gives (ref: 85).
            raise Failed(EXIT_FAILED, [status_line(int(status))])


def startbu(names: t.List[str]) -> t.List[str]:
    transient_failure("startbu")
    seconds = float(switch("sleep-startbu") or 0)
    if seconds > 0:
        # article: "Note the time it takes for the command prompt to come back. This tells you how long it will take
        # to roll the database into continuous operations mode."
        time.sleep(seconds)
    with engine_lock():
        state = load_state()
        errors = []
        by_delta: t.Dict[str, str] = {delta_path(path): path for path in state["continuous"]}
        for name in names:
            if not os.path.isfile(name):
                errors.append(status_line(STATUS_NOT_FOUND, name))  # ref: status 12
            elif name in state["continuous"]:
                errors.append(status_line(STATUS_INCOMPATIBLE_MODE, name))  # ref: 88 = already in continuous operation
            elif delta_path(name) in by_delta:
                errors.append(status_line(STATUS_IN_USE, name))  # ref: 85, same base name in one directory
            elif os.path.exists(delta_path(name)):
                # article: leftover deltas make the next STARTBU fail; the status is not documented (ASSUMPTION: 85).
                errors.append(status_line(STATUS_IN_USE, name))
            else:
                by_delta[delta_path(name)] = name
                continue
        if errors:
            # ref: "start is all-or-nothing: if one file fails, none are put into continuous operation"
            raise Failed(EXIT_FAILED, errors)
        now = time.time()
        for name in names:
            # article: "look in the directory, and see all of the files with the ^^^ extension"
            with open(delta_path(name), "w", encoding="ascii"):
                pass
            state["continuous"][name] = {"since": now, "delta": delta_path(name)}
        save_state(state)
    return []


def endbu(operand_files: t.Optional[t.List[str]]) -> t.List[str]:
    with engine_lock():
        state = load_state()
        names = list(state["continuous"]) if operand_files is None else operand_files  # ref: /A ends every file
        ended, errors = [], []
        for name in names:
            if name in state["continuous"]:
                del state["continuous"][name]
                ended.append(name)
            else:
                # ref: "-ENDBU on a file not in continuous operation: unknown". ASSUMPTION: status 88 for that file,
                # the others are ended; the module checks the deltas itself.
                errors.append(status_line(STATUS_INCOMPATIBLE_MODE, name))
        save_state(state)
        if not (switch("sleep-rollin")):
            for name in ended:
                roll_in(name)
    if switch("sleep-rollin"):
        roll_in_files(ended)
    if errors:
        raise Failed(EXIT_PARTIAL if ended else EXIT_FAILED, errors)
    return []


def stat(name: str) -> t.List[str]:
    with engine_lock():
        state = load_state()
        if not os.path.isfile(name):
            raise Failed(EXIT_FAILED, [status_line(STATUS_NOT_FOUND, name)])
        stale = name not in state["continuous"] and os.path.exists(delta_path(name))
        if stale and not flag("hold-open-only") and not switch("sleep-rollin"):
            roll_in(name)  # article: "Open each file. A BUTIL -STAT will do the trick" (older engines)
    if stale and not flag("hold-open-only") and switch("sleep-rollin"):
        roll_in_files([name])
    size = os.path.getsize(name)
    # ASSUMPTION: the layout of the statistics report (only its exit code is relied on).
    return ["File Statistics for %s" % name, "", "File Version = 9.50", "Page Size = 4096",
            "Total Number of Records = %d" % (size // 16), ""]


def butil(argv: t.List[str]) -> int:
    command, operands, options = parse(argv)
    check_engine(options)
    if command == "startbu":
        if operands[0] == "/A":
            raise Failed(EXIT_USAGE, ["BUTIL-1: /A is only valid with -ENDBU"])
        startbu(files_of(operands[0]))
    elif command == "endbu":
        endbu(None if operands[0] == "/A" else files_of(operands[0]))
    else:
        print("\n".join(stat(files_of(operands[0])[0])))
    print(COMPLETED)
    return EXIT_OK


def log_call(argv: t.List[str], code: int) -> None:
    shown = [re.sub(r"(?i)^([-/]pwd).*", r"\1********", arg) for arg in argv]
    with open(os.path.join(home(), "calls.log"), "a", encoding="utf-8") as handle:
        handle.write(json.dumps({"argv": shown, "rc": code, "at": time.time()}) + "\n")


def main(argv: t.List[str]) -> int:
    if argv and argv[0] == "emu-write":
        print(engine_write(argv[1], int(argv[2]), bytes.fromhex(argv[3])))
        return 0
    if argv and argv[0] == "emu-read":
        print(engine_read(argv[1], int(argv[2]), int(argv[3])).hex())
        return 0
    if argv and argv[0] == "emu-crash":
        with engine_lock():
            save_state({"continuous": {}})  # the engine's memory is gone; its deltas are not (article)
        return 0
    print(BANNER)
    print(BUTIL_139)
    try:
        code = butil(argv)
    except Failed as exc:
        if os.environ.get("BUTIL_EMULATOR_HOME") and flag("echo-command"):
            print("butil " + " ".join(argv))  # the password as given (see echo-command above)
        print("\n".join(exc.lines))
        code = exc.exit_code
    with contextlib.suppress(Failed, OSError):
        log_call(argv, code)
    sys.stdout.flush()
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
