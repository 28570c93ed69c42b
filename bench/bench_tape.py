# -*- coding: utf-8 -*-
# Copyright: contributors to consistent.backup
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""Benchmark of the tar-stream sink: one 1 GiB file written as a tar stream of fixed records to a file standing in for
the tape, against ``dd bs=RECORD conv=fsync`` of the same file to the same place.

    .venv/bin/python bench/bench_tape.py [--size-mib 1024] [--record-size 262144] [--rounds 3] [--dir /var/tmp]

No tape here: the "drive" is a regular file, reached through the injectable kernel layer of _tape.py (open/write on
the file, MTIOCGET answering "online at BOT, file 0", MTIOCTOP a no-op); close fsyncs the file, as dd's conv=fsync
does, so both end with the bytes on the disk. The engine reads with page-aligned requests, hashes (SHA-256) in the same
pass and blocks into records; dd only copies. Prints one JSON line per round and the medians.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, ".build", "collections"))

from ansible_collections.consistent.backup.plugins.module_utils import _copy, _copy_plan, _tape, _tape_stream, _tar_sink  # noqa: E402


class FileTape(_tape.TapeOps):
    """The kernel layer over a regular file: a tape that is always online at the start of file 0."""

    def open(self, path, flags):
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)

    def ioctl(self, fd, request, arg):
        if request == _tape.MTIOCGET:
            return _tape.pack_mtget(gstat=_tape.GMT_ONLINE | _tape.GMT_BOT, fileno=0, blkno=0)
        return arg

    def close(self, fd):
        os.fsync(fd)
        os.close(fd)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--record-size", type=int, default=256 * 1024)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", default="/var/tmp")
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="bench-tape-", dir=args.dir)
    try:
        src_dir = os.path.join(work, "src")
        os.mkdir(src_dir)
        src = os.path.join(src_dir, "big.dat")
        with open(src, "wb") as handle:
            for _mib in range(args.size_mib):
                handle.write(os.urandom(1024 * 1024))
        tape = os.path.join(work, "tape.file")
        rows = []
        for number in range(args.rounds):
            for tool in (("engine", "dd") if number % 2 == 0 else ("dd", "engine")):
                if os.path.exists(tape):
                    os.unlink(tape)
                shutil.rmtree(os.path.join(work, "sets"), ignore_errors=True)
                os.mkdir(os.path.join(work, "sets"))
                subprocess.run(["sync"], check=True)
                began = time.monotonic()
                if tool == "engine":
                    plan = _copy_plan.plan_copy(_copy_plan.normalize_sources([{"path": src_dir, "dest": "src"}]))
                    spec = _tar_sink.TarSpec(device=tape, record_size=args.record_size, file_number=0)
                    _copy.run_copy(plan, os.path.join(work, "sets"), "b%d" % number, stream=_tape_stream.TarTapeSink(spec, FileTape()))
                else:
                    subprocess.run(["dd", "if=" + src, "of=" + tape, "bs=%d" % args.record_size, "conv=fsync", "status=none"],
                                   check=True)
                row = {"round": number, "tool": tool, "seconds": round(time.monotonic() - began, 3),
                       "bytes": os.path.getsize(tape)}
                rows.append(row)
                print(json.dumps(row), flush=True)
        summary = {}
        for tool in ("engine", "dd"):
            seconds = statistics.median(r["seconds"] for r in rows if r["tool"] == tool)
            summary[tool] = {"median_seconds": seconds, "MiB_per_s": round(args.size_mib / seconds, 1)}
        summary["engine_vs_dd"] = round(summary["dd"]["median_seconds"] / summary["engine"]["median_seconds"], 2)
        print(json.dumps({"summary": summary, "size_mib": args.size_mib, "record_size": args.record_size}))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
