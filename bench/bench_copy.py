# -*- coding: utf-8 -*-
# Copyright: contributors to consistent.backup
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""Benchmark of the aligned_copy engine: a tree of many small files against cp -a + sync -f, one large file against dd.

Run from the checkout (after scripts/setup.sh):

    .venv/bin/python bench/bench_copy.py                 # 3,000-file tree and 1 GiB file, 5 rounds, warm cache
    .venv/bin/python bench/bench_copy.py --cold          # drop the page cache before every run (root)
    .venv/bin/python bench/bench_copy.py --write-docs    # also regenerate docs/performance.md and the chart

What is timed, per round (the order alternates between rounds so neither tool always goes first):

* engine (tree): ``run_copy`` of a tree of 3,000 files of 8 KiB to 1 MiB (385 MiB), SHA-256 of every file,
  durable before the manifest is written; in a child process as below.
* cp -a + sync -f: ``cp -a SRC DST`` then ``sync -f DST`` (syncfs of the destination's filesystem): a copy
  without checksums whose data is durable at the end, the least a backup must do.
* engine: ``run_copy`` of one 1 GiB file, SHA-256 computed in the same pass, durable before the
  manifest is written; run in a child process (``python bench_copy.py --child``) that reports its own peak
  RSS (VmHWM from /proc/self/status; ru_maxrss of a vfork'ed child would include the parent's peak).
  Timed as the child's wall time (interpreter start included); the engine's own ``seconds`` is recorded too.
* dd: ``dd if=SRC of=DST bs=READ_SIZE conv=fsync``.
* dd + sha256sum: that dd, then ``sha256sum DST`` (the checksum of the written copy, which is what a
  careful operator would verify; DST is still in the page cache).

Between runs the destination is removed and ``sync`` is run; with ``--cold`` the page cache is also
dropped (``echo 3 > /proc/sys/vm/drop_caches``) before every run, otherwise the source is read into
the cache once before the first round and every run reads it warm.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
import typing as t

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
COLLECTIONS = os.path.join(ROOT, ".build", "collections")
RESULTS = os.path.join(HERE, "results")
DOC = os.path.join(ROOT, "docs", "performance.md")
CHART = os.path.join(ROOT, "docs", "performance-copy.png")
MIB = 1024 * 1024

TOOLS = ("engine", "dd", "dd+sha256sum")
TREE_TOOLS = ("engine-tree", "cp+sync")


def parse_size(text: str) -> int:
    units = {"": 1, "K": 1024, "M": MIB, "G": 1024 * MIB}
    text = text.strip().upper().replace("IB", "").replace("B", "")
    unit = text[-1] if text and text[-1] in units else ""
    return int(float(text[:len(text) - len(unit)]) * units[unit])


# ---------------------------------------------------------------------------------------------
# Child: one engine run
# ---------------------------------------------------------------------------------------------


def vm_hwm_kib() -> int:
    """Peak resident set of this process (VmHWM), in KiB."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def child(args: argparse.Namespace) -> int:
    sys.path.insert(0, args.collections or COLLECTIONS)
    # pylint: disable-next=import-outside-toplevel
    from ansible_collections.consistent.backup.plugins.module_utils import _copy, _copy_plan, _copy_sink, _copy_stream

    if args.writeback_window is not None:
        _copy_stream.WRITEBACK_WINDOW = args.writeback_window
    if args.buffers is not None:
        _copy_stream.RING_BUFFERS = args.buffers
    if args.barrier is not None:
        _copy_sink.BARRIER = args.barrier
    if args.no_early_writeback:
        _copy_sink.start_writeback = lambda fd: None
    if args.early_writeback_min is not None:
        _copy_sink.EARLY_WRITEBACK_MIN = args.early_writeback_min
    tuning = {"workers": args.workers} if args.workers is not None else {}
    sources = _copy_plan.normalize_sources([{"path": args.src, "dest": os.path.basename(args.src)}])
    plan = _copy_plan.plan_copy(sources)
    result = _copy.run_copy(plan, args.sets, args.backup_id, block_size=args.block_size, read_size=args.read_size,
                            direct=args.direct, engine="files", **tuning)
    with open(os.path.join(result.set_path, "manifest.json")) as handle:
        manifest = json.load(handle)
    files = [f for f in manifest["files"] if f["type"] == "file"]
    print(json.dumps({"seconds": result.seconds, "sha256": files[0]["sha256"] if len(files) == 1 else None, "files": len(files),
                      "copied": result.copied, "bytes": result.bytes_copied, "direct": result.direct, "vm_hwm_kib": vm_hwm_kib()}))
    return 0


# ---------------------------------------------------------------------------------------------
# Parent
# ---------------------------------------------------------------------------------------------


def sync_and_maybe_drop(cold: bool) -> None:
    subprocess.run(["sync"], check=True)
    if cold:
        with open("/proc/sys/vm/drop_caches", "w") as handle:
            handle.write("3\n")


def make_source(path: str, size: int) -> str:
    if os.path.exists(path) and os.path.getsize(path) == size:
        return "reused"
    tmp = path + ".tmp"
    with open(tmp, "wb") as handle:
        left = size
        while left:
            chunk = os.urandom(min(left, 16 * MIB))
            handle.write(chunk)
            left -= len(chunk)
        handle.flush()
        os.fsync(handle.fileno())
    os.rename(tmp, path)
    return "created"


def tree_sizes(files: int, smallest: int, largest: int, total: int, page: int = 8192) -> t.List[int]:
    """Sizes of a tree like a database directory: many small files, fewer large ones, whole pages, summing to about ``total``.

    Log-uniform between ``smallest`` and ``largest`` skewed towards small files (exponent found by bisection), in a fixed
    pseudo-random order, so every run and every machine builds the same tree.
    """
    import random  # pylint: disable=import-outside-toplevel
    draws = [random.Random(files * 7919 + n).random() for n in range(files)]
    span = largest / float(smallest)

    def sizes(skew: float) -> t.List[int]:
        return [max(smallest, min(largest, int(round(smallest * span ** (u ** skew) / page)) * page)) for u in draws]

    low, high = 0.2, 20.0
    for _step in range(60):
        middle = (low + high) / 2
        if sum(sizes(middle)) > total:
            low = middle
        else:
            high = middle
    return sizes((low + high) / 2)


def make_tree(path: str, files: int, smallest: int, largest: int, total: int) -> str:
    """A tree of ``files`` files of random bytes in 30 directories (like base/<oid>/); reused when it is already there.

    A stamp beside the tree (not in it: it would be copied) says which parameters built it.
    """
    stamp = "%s.built-%d-%d-%d-%d" % (path, files, smallest, largest, total)
    if os.path.exists(stamp) and os.path.isdir(path):
        return "reused"
    for old in [n for n in os.listdir(os.path.dirname(path)) if n.startswith(os.path.basename(path) + ".built-")]:
        os.unlink(os.path.join(os.path.dirname(path), old))
    shutil.rmtree(path, ignore_errors=True)
    for number, size in enumerate(tree_sizes(files, smallest, largest, total)):
        directory = os.path.join(path, "d%02d" % (number % 30))
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, "%06d" % number), "wb") as handle:
            handle.write(os.urandom(size))
    subprocess.run(["sync"], check=True)
    with open(stamp, "w"):
        pass
    return "created"


def warm_tree(path: str) -> None:
    for directory, _dirs, names in os.walk(path):
        for name in names:
            warm(os.path.join(directory, name))


def run_cp(src: str, dst: str) -> t.Dict[str, t.Any]:
    """cp -a, then sync -f on the copy: the plain copy made durable (syncfs of the destination's filesystem)."""
    started = time.monotonic()
    subprocess.run(["cp", "-a", src, dst], check=True)
    copied = time.monotonic()
    subprocess.run(["sync", "-f", dst], check=True)
    return {"wall": time.monotonic() - started, "cp_seconds": copied - started, "sync_seconds": time.monotonic() - copied}


def hashlib_rate() -> float:
    """MiB/s of hashlib SHA-256 on this CPU, one thread, 1 MiB updates (best of three)."""
    import hashlib  # pylint: disable=import-outside-toplevel
    block = os.urandom(MIB)
    best = 0.0
    for _attempt in range(3):
        digest = hashlib.sha256()
        started = time.monotonic()
        for _block in range(256):
            digest.update(block)
        best = max(best, 256 / (time.monotonic() - started))
    return best


def warm(path: str) -> None:
    with open(path, "rb", buffering=0) as handle:
        while handle.read(16 * MIB):
            pass


def run_engine(args: argparse.Namespace, src: str, sets: str, backup_id: str) -> t.Dict[str, t.Any]:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", "--src", src, "--sets", sets, "--backup-id", backup_id,
           "--read-size", str(args.read_size), "--block-size", str(args.block_size)]
    if args.direct:
        cmd.append("--direct")
    if args.writeback_window is not None:
        cmd += ["--writeback-window", str(args.writeback_window)]
    if args.buffers is not None:
        cmd += ["--buffers", str(args.buffers)]
    if args.barrier is not None:
        cmd += ["--barrier", args.barrier]
    if args.workers is not None:
        cmd += ["--workers", str(args.workers)]
    if args.no_early_writeback:
        cmd.append("--no-early-writeback")
    if args.early_writeback_min is not None:
        cmd += ["--early-writeback-min", str(args.early_writeback_min)]
    if args.collections:
        cmd += ["--collections", args.collections]
    started = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE)
    _pid, status, _usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - started
    out = proc.stdout.read().decode() if proc.stdout else ""
    proc.returncode = os.waitstatus_to_exitcode(status) if hasattr(os, "waitstatus_to_exitcode") else status
    if proc.returncode != 0:
        raise SystemExit("engine run failed (exit %s): %s" % (proc.returncode, out))
    data = json.loads(out.strip().splitlines()[-1])
    data["wall"] = wall
    # VmHWM read by the child itself: ru_maxrss of a child started with vfork also counts the parent's
    # peak (Linux keeps the old mm's high-water mark across exec), so it would overstate the engine.
    data["rss_mib"] = data["vm_hwm_kib"] / 1024.0
    return data


def run_dd(args: argparse.Namespace, src: str, dst: str, with_sha: bool) -> t.Dict[str, t.Any]:
    started = time.monotonic()
    subprocess.run(["dd", "if=%s" % src, "of=%s" % dst, "bs=%d" % args.read_size, "conv=fsync", "status=none"],
                   check=True, env=dict(os.environ, LANG="C"))
    dd_done = time.monotonic()
    data = {"dd_seconds": dd_done - started}
    if with_sha:
        out = subprocess.run(["sha256sum", dst], check=True, stdout=subprocess.PIPE, env=dict(os.environ, LANG="C")).stdout
        data["sha256"] = out.decode().split()[0]
        data["sha_seconds"] = time.monotonic() - dd_done
    data["wall"] = time.monotonic() - started
    return data


def machine_facts(directory: str) -> t.Dict[str, t.Any]:
    facts = {"python": platform.python_version(), "kernel": platform.release(), "cpus": os.cpu_count()}
    try:
        with open("/proc/cpuinfo") as handle:
            cpuinfo = handle.read()
        for line in cpuinfo.splitlines():
            if line.startswith("model name"):
                facts["cpu"] = line.split(":", 1)[1].strip()
                break
        flags = [line for line in cpuinfo.splitlines() if line.startswith("flags")]
        facts["sha_ni"] = bool(flags) and " sha_ni" in flags[0]
    except OSError:
        pass
    try:
        with open("/proc/meminfo") as handle:
            facts["mem_gib"] = round(int(handle.readline().split()[1]) / 1024.0 / 1024.0, 1)
    except (OSError, ValueError, IndexError):
        pass
    try:
        out = subprocess.run(["df", "--output=source,fstype", directory], stdout=subprocess.PIPE, check=True,
                             env=dict(os.environ, LANG="C")).stdout.decode().splitlines()[-1].split()
        facts["device"], facts["fstype"] = out[0], out[1]
    except (OSError, subprocess.CalledProcessError, IndexError):
        pass
    try:
        import ssl  # pylint: disable=import-outside-toplevel
        facts["openssl"] = ssl.OPENSSL_VERSION
    except ImportError:
        pass
    for tool in ("dd", "sha256sum"):
        try:
            facts[tool] = subprocess.run([tool, "--version"], stdout=subprocess.PIPE, check=True).stdout.decode().splitlines()[0]
        except (OSError, subprocess.CalledProcessError, IndexError):
            pass
    return facts


def summarize_tree(runs: t.Dict[str, t.List[t.Dict[str, t.Any]]]) -> t.Dict[str, t.Any]:
    """Medians of the tree runs and the engine's ratios to cp -a + sync -f."""
    summary = {}  # type: t.Dict[str, t.Any]
    for tool in TREE_TOOLS:
        walls = [v["wall"] for v in runs[tool]]
        summary[tool] = {"median": statistics.median(walls), "min": min(walls), "max": max(walls), "runs": walls}
    summary["engine-tree"]["copy_median"] = statistics.median(v["seconds"] for v in runs["engine-tree"])
    summary["engine-tree"]["rss_mib_max"] = max(v["rss_mib"] for v in runs["engine-tree"])
    summary["cp+sync"]["cp_median"] = statistics.median(v["cp_seconds"] for v in runs["cp+sync"])
    summary["cp+sync"]["sync_median"] = statistics.median(v["sync_seconds"] for v in runs["cp+sync"])
    summary["ratio_tree"] = summary["engine-tree"]["median"] / summary["cp+sync"]["median"]
    summary["ratio_tree_best"] = summary["engine-tree"]["min"] / summary["cp+sync"]["min"]
    summary["ratio_tree_copy"] = summary["engine-tree"]["copy_median"] / summary["cp+sync"]["median"]
    # Round by round (the two ran back to back), the median of the ratios: less sensitive to a slow minute of the host.
    summary["ratio_tree_paired"] = statistics.median(
        e["wall"] / c["wall"] for e, c in zip(runs["engine-tree"], runs["cp+sync"]))
    return summary


def summarize(runs: t.Dict[str, t.List[t.Dict[str, t.Any]]]) -> t.Dict[str, t.Any]:
    summary = {}
    for tool in TOOLS:
        walls = [v["wall"] for v in runs[tool]]
        summary[tool] = {"median": statistics.median(walls), "min": min(walls), "max": max(walls), "runs": walls}
    engine_copy = [v["seconds"] for v in runs["engine"]]
    summary["engine"]["copy_median"] = statistics.median(engine_copy)
    summary["engine"]["rss_mib_max"] = max(v["rss_mib"] for v in runs["engine"])
    summary["dd+sha256sum"]["sha_median"] = statistics.median(v["sha_seconds"] for v in runs["dd+sha256sum"])
    summary["ratio_engine_dd"] = summary["engine"]["median"] / summary["dd"]["median"]
    summary["ratio_engine_dd_sha"] = summary["engine"]["median"] / summary["dd+sha256sum"]["median"]
    summary["ratio_engine_copy_dd"] = summary["engine"]["copy_median"] / summary["dd"]["median"]
    # Best against best: the fastest engine run against the fastest dd run (dd's spread is large here).
    summary["ratio_engine_dd_best"] = summary["engine"]["min"] / summary["dd"]["min"]
    # dd by the run before it: right after dd + sha256sum freed a GiB of page cache, dd finds memory
    # its VM already holds; after the engine (which keeps the page cache small) it does not.
    by_previous = {}  # type: t.Dict[str, t.List[float]]
    for value in runs["dd"]:
        by_previous.setdefault(str(value.get("after")), []).append(value["wall"])
    summary["dd"]["median_after"] = dict((k, statistics.median(v)) for k, v in by_previous.items())
    fast = summary["dd"]["median_after"].get("dd+sha256sum")
    summary["ratio_engine_dd_fast"] = summary["engine"]["median"] / fast if fast else None
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--dir", default="/var/tmp/consistent-bench", help="work directory (source and copies; same disk)")
    parser.add_argument("--size", default="1G", help="source file size (default 1G)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--read-size", default="1M", help="read size for the engine and dd's bs (default 1M)")
    parser.add_argument("--block-size", type=int, default=8192)
    parser.add_argument("--direct", action="store_true", help="engine reads with O_DIRECT")
    parser.add_argument("--cold", action="store_true", help="drop the page cache before every run (needs root)")
    parser.add_argument("--write-docs", action="store_true", help="regenerate docs/performance.md and docs/performance-copy.png")
    parser.add_argument("--note", action="append", default=[], help="a note for the docs (repeatable)")
    parser.add_argument("--docs-from", metavar="RESULTS_JSON",
                        help="regenerate docs/performance.md and the chart from a saved result instead of running")
    parser.add_argument("--also", action="append", default=[], metavar="RESULTS_JSON",
                        help="with --write-docs: add the figures of an earlier run (e.g. a --cold one) as another table")
    parser.add_argument("--writeback-window", type=int, default=None, help="tuning: engine WRITEBACK_WINDOW bytes")
    parser.add_argument("--buffers", type=int, default=None, help="tuning: engine RING_BUFFERS")
    parser.add_argument("--barrier", choices=["syncfs", "fsync"], default=None, help="tuning: engine BARRIER")
    parser.add_argument("--workers", type=int, default=None, help="tuning: engine workers (default COPY_WORKERS)")
    parser.add_argument("--no-early-writeback", action="store_true", help="tuning: engine does not start writeback per file")
    parser.add_argument("--early-writeback-min", type=int, default=None, help="tuning: engine EARLY_WRITEBACK_MIN bytes")
    parser.add_argument("--collections", help="tuning: the engine of another checkout (a directory holding ansible_collections/)")
    parser.add_argument("--tree-files", type=int, default=3000, help="files in the tree (default 3000; 0: no tree runs)")
    parser.add_argument("--tree-min", default="8K", help="smallest file of the tree (default 8K)")
    parser.add_argument("--tree-max", default="1M", help="largest file of the tree (default 1M)")
    parser.add_argument("--tree-total", default="385M", help="bytes of the whole tree (default 385M)")
    parser.add_argument("--no-file", action="store_true", help="only the tree runs, not the large file")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--src", help=argparse.SUPPRESS)
    parser.add_argument("--sets", help=argparse.SUPPRESS)
    parser.add_argument("--backup-id", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.read_size = parse_size(str(args.read_size))
    if args.child:
        return child(args)
    if args.docs_from:
        with open(args.docs_from) as handle:
            saved = json.load(handle)
        saved["notes"] = list(saved.get("notes", [])) + [n for n in args.note if n not in saved.get("notes", [])]
        write_docs(saved, args.also)
        print("wrote %s and %s from %s" % (DOC, CHART, args.docs_from))
        return 0

    size = parse_size(args.size)
    tree_shape = (args.tree_files, parse_size(args.tree_min), parse_size(args.tree_max), parse_size(args.tree_total))
    os.makedirs(args.dir, exist_ok=True)
    src = os.path.join(args.dir, "source-%d.bin" % size)
    tree = os.path.join(args.dir, "tree")
    sets = os.path.join(args.dir, "sets")
    dst = os.path.join(args.dir, "dd-copy.bin")
    tree_dst = os.path.join(args.dir, "cp-copy")
    tools = (() if not args.tree_files else TREE_TOOLS) + (() if args.no_file else TOOLS)
    if not args.no_file:
        print("source %s: %s (%d MiB)" % (src, make_source(src, size), size // MIB))
    if args.tree_files:
        print("tree %s: %s (%d files, %d MiB)" % (tree, make_tree(tree, *tree_shape), tree_shape[0], tree_shape[3] // MIB))
    if not args.cold:
        if not args.no_file:
            warm(src)
        if args.tree_files:
            warm_tree(tree)
    shutil.rmtree(sets, ignore_errors=True)
    shutil.rmtree(tree_dst, ignore_errors=True)
    os.makedirs(sets)
    facts = machine_facts(args.dir)
    sha_rate = hashlib_rate()
    load_before = os.getloadavg()
    runs = dict((tool, []) for tool in tools)  # type: t.Dict[str, t.List[t.Dict[str, t.Any]]]
    previous = None
    for round_no in range(args.rounds):
        order = tools if round_no % 2 == 0 else tuple(reversed(tools))
        for tool in order:
            sync_and_maybe_drop(args.cold)
            if tool in ("engine", "engine-tree"):
                data = run_engine(args, tree if tool == "engine-tree" else src, sets, "round-%d" % round_no)
                shutil.rmtree(os.path.join(sets, "round-%d" % round_no))
            elif tool == "cp+sync":
                data = run_cp(tree, tree_dst)
                shutil.rmtree(tree_dst)
            else:
                data = run_dd(args, src, dst, tool == "dd+sha256sum")
                os.unlink(dst)
            data["after"] = previous
            previous = tool
            runs[tool].append(data)
            detail = " (copy %.3f s, peak RSS %.1f MiB)" % (data["seconds"], data["rss_mib"]) if tool.startswith("engine") else ""
            print("round %d %-13s %.3f s%s" % (round_no + 1, tool, data["wall"], detail))
    sync_and_maybe_drop(False)
    load_after = os.getloadavg()
    summary = {}  # type: t.Dict[str, t.Any]
    checksums = set()  # type: t.Set[str]
    if not args.no_file:
        checksums = set(v["sha256"] for v in runs["engine"]) | set(v["sha256"] for v in runs["dd+sha256sum"])
        summary = summarize(runs)
    if args.tree_files:
        summary["tree"] = summarize_tree(runs)
    now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    report = {
        "date": now.isoformat().replace("+00:00", "Z"), "size": size, "read_size": args.read_size, "block_size": args.block_size,
        "rounds": args.rounds, "cache": "cold" if args.cold else "warm", "direct": args.direct,
        "writeback_window": args.writeback_window, "buffers": args.buffers, "barrier": args.barrier, "workers": args.workers,
        "no_early_writeback": args.no_early_writeback, "collections": args.collections,
        "tree": {"files": tree_shape[0], "min": tree_shape[1], "max": tree_shape[2], "total": tree_shape[3]} if args.tree_files else None,
        "machine": facts, "load_before": load_before, "load_after": load_after,
        "checksums_agree": len(checksums) == 1, "hashlib_mib_s": sha_rate, "runs": runs, "summary": summary, "notes": args.note,
    }
    if args.tree_files:
        tree_summary = summary["tree"]
        print("tree median seconds: engine %.3f (copy alone %.3f), cp -a + sync -f %.3f (cp %.3f, sync %.3f)" % (
            tree_summary["engine-tree"]["median"], tree_summary["engine-tree"]["copy_median"], tree_summary["cp+sync"]["median"],
            tree_summary["cp+sync"]["cp_median"], tree_summary["cp+sync"]["sync_median"]))
        print("tree ratios: engine/(cp+sync) %.3f (best %.3f, paired %.3f); engine peak RSS %.1f MiB" % (
            tree_summary["ratio_tree"], tree_summary["ratio_tree_best"], tree_summary["ratio_tree_paired"],
            tree_summary["engine-tree"]["rss_mib_max"]))
    if not args.no_file:
        print("median seconds: engine %.3f (copy alone %.3f), dd %.3f, dd+sha256sum %.3f" % (
            summary["engine"]["median"], summary["engine"]["copy_median"], summary["dd"]["median"], summary["dd+sha256sum"]["median"]))
        print("ratios: engine/dd %.3f, engine/(dd+sha256sum) %.3f; engine peak RSS %.1f MiB; checksums agree: %s" % (
            summary["ratio_engine_dd"], summary["ratio_engine_dd_sha"], summary["engine"]["rss_mib_max"], report["checksums_agree"]))
    print("load %s -> %s" % ("/".join("%.2f" % x for x in load_before), "/".join("%.2f" % x for x in load_after)))
    os.makedirs(RESULTS, exist_ok=True)
    out = os.path.join(RESULTS, "copy-%s.json" % now.strftime("%Y%m%dT%H%M%SZ"))
    with open(out, "w") as handle:
        json.dump(report, handle, indent=2)
    print("results: %s" % out)
    if args.write_docs:
        write_docs(report, args.also)
        print("wrote %s and %s" % (DOC, CHART))
    return 0


def write_docs(report: t.Dict[str, t.Any], also: t.Sequence[str]) -> None:
    """Regenerate docs/performance.md (with the runs named in ``also`` as extra tables) and the chart."""
    summary = report["summary"]
    if "ratio_engine_dd_fast" not in summary:  # results saved before these figures existed
        summary.update(summarize(report["runs"]))
    write_chart(report)
    extra = []
    for path in also:
        with open(path) as handle:
            extra.append(json.load(handle))
    write_doc(report, extra)


# ---------------------------------------------------------------------------------------------
# Docs
# ---------------------------------------------------------------------------------------------


def write_chart(report: t.Dict[str, t.Any]) -> None:
    import matplotlib  # pylint: disable=import-outside-toplevel
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

    summary = report["summary"]
    panels = []
    if summary.get("tree"):
        shape = report["tree"]
        panels.append(("%d files, %d KiB to %d KiB, %d MiB" % (shape["files"], shape["min"] // 1024, shape["max"] // 1024,
                                                               shape["total"] // MIB),
                       ["aligned_copy engine\n(SHA-256, durable)", "cp -a\n+ sync -f"], [summary["tree"][tool] for tool in TREE_TOOLS],
                       ["#2b7bb9", "#9e9e9e"]))
    if "engine" in summary:
        panels.append(("one %d MiB file, read size %d KiB" % (report["size"] // MIB, report["read_size"] // 1024),
                       ["aligned_copy engine\n(SHA-256, durable)", "dd conv=fsync\n(no checksum)", "dd conv=fsync\n+ sha256sum"],
                       [summary[tool] for tool in TOOLS], ["#2b7bb9", "#9e9e9e", "#616161"]))
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.4), dpi=120, squeeze=False)
    for axis, (title, labels, rows, colors) in zip(axes[0], panels):
        medians = [row["median"] for row in rows]
        lows = [row["median"] - row["min"] for row in rows]
        highs = [row["max"] - row["median"] for row in rows]
        bars = axis.bar(labels, medians, yerr=[lows, highs], capsize=8, color=colors)
        for rect, value in zip(bars, medians):
            axis.annotate("%.2f s" % value, (rect.get_x() + rect.get_width() / 2, value), xytext=(14, 4),
                          textcoords="offset points", ha="left", fontsize=9)
        axis.set_ylabel("seconds (median, whiskers min..max)")
        axis.set_title(title, fontsize=10)
        axis.set_ylim(0, max(row["max"] for row in rows) * 1.2)
        axis.grid(axis="y", alpha=0.3)
        axis.tick_params(axis="x", labelsize=8)
    fig.suptitle("%s cache, %d rounds, same run" % (report["cache"], report["rounds"]), fontsize=10)
    fig.tight_layout()
    fig.savefig(CHART)
    plt.close(fig)


DOC_TEMPLATE = """# Performance of the copy engine

Generated by `bench/bench_copy.py --write-docs` on {date}; raw results of every run are written to
`bench/results/` (not committed). Re-run it on your own hardware: the figures below are one machine's.

![median seconds per tool, whiskers min..max](performance-copy.png)
{tree_section}
## One large file

One {mib} MiB file of random bytes, read size {read_kib} KiB (dd `bs` the same), block size {block},
{rounds} rounds, {cache} page cache for the source (see Method), O_DIRECT {direct}; in the same run as the tree above.

| run | median s | min s | max s | MiB/s at the median |
|---|---|---|---|---|
{rows}

| target | measured | met? |
|---|---|---|
| engine within 1.10x of dd (medians) | {r_dd:.2f}x | {ok_dd} |
| engine within 1.10x of dd, best run against best run | {r_best:.2f}x | {ok_best} |
| engine within 1.10x of dd's runs right after dd + sha256sum (medians; see Notes) | {r_fast} | {ok_fast} |
| engine faster than dd + sha256sum (medians) | {r_sha:.2f}x | {ok_sha} |
| engine peak RSS below 100 MiB | {rss:.1f} MiB | {ok_rss} |

- The engine's wall time includes starting Python and importing the engine (a child process per run);
  its own copy time (`seconds` in the module's result) has a median of {copy:.3f} s ({r_copy:.2f}x dd's median).
- `sha256sum` alone took {sha:.3f} s (median) on the copy; the engine hashes in the same pass as the copy.
- The SHA-256 in the engine's manifest and the one printed by sha256sum agree on every run: {agree}.
- Peak RSS does not grow with the file: the engine holds a ring of {buffers} buffers of the read size, and each of
  its two workers one more.
{extra}
## Machine

{cpu}, {cpus} vCPUs (SHA-NI: {sha_ni}), {mem} GiB RAM, Linux {kernel}, {fstype} on {device};
Python {python} with {openssl}; {dd_version}; {sha_version}.
Load average before / after the benchmark: {load_before} / {load_after}.

## Method

- Each round times every run once, in alternating order (engine on the tree, cp + sync, engine on the file, dd,
  dd + sha256sum in rounds 1, 3, 5, ...; the reverse in rounds 2, 4, ...). Before every run the previous run's
  destination is removed and `sync` is run.
- {cache_method}
- engine: `run_copy` of the tree or the file into a new backup set (aligned reads, SHA-256, temporary names, the
  durability barrier, manifest.json), in a child process whose wall time is reported and whose peak RSS is its own
  VmHWM (from /proc/self/status).
- cp + sync: `cp -a SRC DST`, then `sync -f DST` (syncfs of the destination's filesystem): the plain copy, durable,
  without checksums or a manifest.
- dd: `dd if=SRC of=DST bs={read_size} conv=fsync`. dd + sha256sum: that dd, then `sha256sum DST`, the
  checksum of the copy (read back from the page cache), which is what an operator would verify.

## How the engine gets there

- Reads are `preadv` of exactly the read size (a multiple of the page size) into page-aligned `mmap` buffers
  allocated once: no allocation per read, memory independent of the file size and of the number of files.
- Many small files: two workers copy files beside each other (the sources are opened in plan order by the
  calling thread, which hands each open file to a worker). A file that fits in a worker's buffer is read, hashed
  and written by that worker; hashlib, `preadv` and `os.write` release the GIL, so both cores work.
- A large file goes through the ring: the worker reads, a hashing thread and a writing thread take each filled
  buffer at once, so SHA-256 runs beside the copy instead of after it. The writer calls `posix_fadvise(DONTNEED)`
  on the copy every {window} written: Linux starts writing those pages back at once and drops the ones already on
  disk, so the backup does not fill the page cache (nor evict the database's own pages).
- Durability is batched, not given up. Each file is written under a temporary name, gets its mode, owner and
  mtime, has its writeback started (`sync_file_range(SYNC_FILE_RANGE_WRITE)`) and is renamed. A barrier then
  makes the whole batch durable at once: one `syncfs` of the medium's filesystem (for a batch of at most 16 files,
  or where there is no syncfs, an fsync of every file and of every directory that gained a name). Nothing vouches for a file before its barrier:
  the manifest is written after the last one, a later phase (pg_control, a database's logs) is written only after
  the barrier that ends the earlier phases, and a resume journal (`.copy-journal`, in the set, removed with
  success) lists a file only after the barrier that covered it. A copy killed in the middle leaves no manifest
  and no COMPLETE; the next run skips what the journal lists (re-reading and re-hashing the source, not
  rewriting the copy) and sweeps the killed run's temporary files.

## Notes

- This machine is a 2-vCPU virtual machine whose disk and memory belong to a host shared with other work, so
  single runs are noisy: read the medians and the min..max spread, not one run.
- `syncfs` makes the whole filesystem of the medium durable, including other writers' dirty data on it; a medium
  shared with a busy database would make the barrier wait for the database's writes too (the backup medium should
  not be the database's filesystem anyway).
- dd's spread here is large, and not because of the disk: this VM hands freed memory back to its host at once
  (virtio-balloon free page reporting), so a process that fills the page cache with 1 GiB of fresh pages pays the
  host for faulting them in again. dd writes the whole GiB into the page cache before its fsync and pays this
  unless it can reuse pages another run just freed; the engine recycles a few MiB of page cache through `DONTNEED`
  and does not depend on that. In this run dd's median was {dd_after}: the rounds alternate, so dd follows
  a different run in odd and even rounds.
- The engine is bound by SHA-256 on one core per stream: hashlib alone hashes {sha_rate:.0f} MiB/s on this CPU
  (measured by the benchmark on an idle core, {sha_floor:.2f} s per GiB). The engine's wall time also includes
  {startup:.3f} s (median, large file) of Python start-up, imports, listing and the manifest write, which dd and cp
  do not pay; the engine's own copy time is {r_copy_fast} dd's runs after dd + sha256sum.
{notes}
"""


TREE_TEMPLATE = """
## Many small files

A tree of {files} files of random bytes, {min_kib} KiB to {max_kib} KiB in whole 8 KiB pages (median {median_kib} KiB),
{total_mib} MiB in 30 directories, read size {read_kib} KiB, {rounds} rounds, {cache} page cache for the source.

| run | median s | min s | max s | MiB/s at the median |
|---|---|---|---|---|
| aligned_copy engine (SHA-256 of every file, durable, manifest) | {e_med:.3f} | {e_min:.3f} | {e_max:.3f} | {e_rate:.0f} |
| `cp -a` then `sync -f` (no checksum) | {c_med:.3f} | {c_min:.3f} | {c_max:.3f} | {c_rate:.0f} |

| target | measured | met? |
|---|---|---|
| engine within 1.2x of cp -a + sync -f (medians) | {r_tree:.2f}x | {ok_tree} |
| engine within 1.2x of cp -a + sync -f, best run against best run | {r_best:.2f}x | {ok_best} |
| engine within 1.2x of cp -a + sync -f, median of the per-round ratios | {r_paired:.2f}x | {ok_paired} |
| engine peak RSS below 100 MiB | {rss:.1f} MiB | {ok_rss} |

- cp -a took {cp:.3f} s and sync -f {sync:.3f} s (medians); the engine's own copy time (without Python start-up) has
  a median of {copy:.3f} s ({r_copy:.2f}x cp -a + sync -f).
- Before this change (every file fsynced before the next one started, one thread) issue 7 measured 3.5x cp -a +
  sync -f on this tree; Notes has a before/after run on this machine and the spread between runs.
"""


def figure_rows(report: t.Dict[str, t.Any]) -> str:
    """The figures table body of one run."""
    summary = report["summary"]
    mib = report["size"] // MIB
    rows = []
    for tool, what in (("engine", "aligned_copy engine (SHA-256, durable, manifest)"),
                       ("dd", "`dd conv=fsync` (no checksum)"),
                       ("dd+sha256sum", "`dd conv=fsync` then `sha256sum`")):
        row = summary[tool]
        rows.append("| %s | %.3f | %.3f | %.3f | %.0f |" % (what, row["median"], row["min"], row["max"], mib / row["median"]))
    return "\n".join(rows)


def extra_section(report: t.Dict[str, t.Any]) -> str:
    """A shorter section for an earlier run given with --also (typically the --cold one)."""
    summary = report["summary"]
    return EXTRA_TEMPLATE.format(
        cache=report["cache"], date=report["date"], mib=report["size"] // MIB, read_kib=report["read_size"] // 1024,
        rounds=report["rounds"], rows=figure_rows(report), r_dd=summary["ratio_engine_dd"], r_best=summary["ratio_engine_dd_best"],
        r_sha=summary["ratio_engine_dd_sha"], rss=summary["engine"]["rss_mib_max"],
        load_before="/".join("%.2f" % x for x in report["load_before"]), load_after="/".join("%.2f" % x for x in report["load_after"]),
        cache_method=("the page cache was dropped (`echo 3 > /proc/sys/vm/drop_caches`) before every run, so the source is "
                      "read from the disk" if report["cache"] == "cold" else "the source was read from the page cache"),
    )


EXTRA_TEMPLATE = """
### {cache} cache ({date})

Same file size ({mib} MiB) and read size ({read_kib} KiB), {rounds} rounds; {cache_method}.
Load average before / after: {load_before} / {load_after}.

| run | median s | min s | max s | MiB/s at the median |
|---|---|---|---|---|
{rows}

engine / dd: {r_dd:.2f}x (medians), {r_best:.2f}x (best against best); engine / (dd + sha256sum): {r_sha:.2f}x;
engine peak RSS {rss:.1f} MiB.
"""


def tree_section(report: t.Dict[str, t.Any]) -> str:
    """The many-small-files section of a run with tree runs ('' without)."""
    tree = report["summary"].get("tree")
    if not tree:
        return ""
    shape = report["tree"]
    sizes = sorted(tree_sizes(shape["files"], shape["min"], shape["max"], shape["total"]))
    total_mib = sum(sizes) / float(MIB)

    def verdict(value: float, limit: float) -> str:
        return "yes" if value <= limit else "**no**"

    engine, peer = tree["engine-tree"], tree["cp+sync"]
    return TREE_TEMPLATE.format(
        files=shape["files"], min_kib=shape["min"] // 1024, max_kib=shape["max"] // 1024, median_kib=sizes[len(sizes) // 2] // 1024,
        total_mib=int(round(total_mib)), read_kib=report["read_size"] // 1024, rounds=report["rounds"], cache=report["cache"],
        e_med=engine["median"], e_min=engine["min"], e_max=engine["max"], e_rate=total_mib / engine["median"],
        c_med=peer["median"], c_min=peer["min"], c_max=peer["max"], c_rate=total_mib / peer["median"],
        r_tree=tree["ratio_tree"], ok_tree=verdict(tree["ratio_tree"], 1.2),
        r_best=tree["ratio_tree_best"], ok_best=verdict(tree["ratio_tree_best"], 1.2),
        r_paired=tree["ratio_tree_paired"], ok_paired=verdict(tree["ratio_tree_paired"], 1.2),
        rss=engine["rss_mib_max"], ok_rss=verdict(engine["rss_mib_max"], 100.0),
        cp=peer["cp_median"], sync=peer["sync_median"], copy=engine["copy_median"], r_copy=tree["ratio_tree_copy"])


def write_doc(report: t.Dict[str, t.Any], extra: t.Sequence[t.Dict[str, t.Any]] = ()) -> None:
    summary = report["summary"]
    machine = report["machine"]
    mib = report["size"] // MIB

    def verdict(value: float, limit: float) -> str:
        return "yes" if value < limit else "**no**"

    if report["cache"] == "warm":
        cache_method = ("Warm cache (the default): the source is read once before the first round, so every run reads it "
                        "from the page cache and the times measure hashing, copying and writeback, not the source disk. "
                        "`--cold` drops the page cache before every run instead.")
    else:
        cache_method = "Cold cache (`--cold`): `echo 3 > /proc/sys/vm/drop_caches` before every run."
    text = DOC_TEMPLATE.format(
        tree_section=tree_section(report),
        date=report["date"], mib=mib, read_kib=report["read_size"] // 1024, block=report["block_size"], rounds=report["rounds"],
        cache=report["cache"], direct="on" if report["direct"] else "off", rows=figure_rows(report),
        extra="".join(extra_section(r) for r in extra),
        r_dd=summary["ratio_engine_dd"], ok_dd=verdict(summary["ratio_engine_dd"], 1.10),
        r_best=summary["ratio_engine_dd_best"], ok_best=verdict(summary["ratio_engine_dd_best"], 1.10),
        r_fast="%.2fx" % summary["ratio_engine_dd_fast"] if summary.get("ratio_engine_dd_fast") else "n/a",
        ok_fast=verdict(summary["ratio_engine_dd_fast"], 1.10) if summary.get("ratio_engine_dd_fast") else "n/a",
        startup=statistics.median(v["wall"] - v["seconds"] for v in report["runs"]["engine"]),
        r_copy_fast=("%.2fx" % (summary["engine"]["copy_median"] / summary["dd"]["median_after"]["dd+sha256sum"])
                     if summary["dd"].get("median_after", {}).get("dd+sha256sum") else "n/a against"),
        dd_after=", ".join("%.3f s after %s" % (v, k) for k, v in sorted(summary["dd"].get("median_after", {}).items())),
        r_sha=summary["ratio_engine_dd_sha"], ok_sha=verdict(summary["ratio_engine_dd_sha"], 1.0),
        rss=summary["engine"]["rss_mib_max"], ok_rss=verdict(summary["engine"]["rss_mib_max"], 100.0),
        buffers=report.get("buffers") or 4, copy=summary["engine"]["copy_median"], r_copy=summary["ratio_engine_copy_dd"],
        sha=summary["dd+sha256sum"]["sha_median"], agree="yes" if report["checksums_agree"] else "NO",
        cpu=machine.get("cpu", "unknown CPU"), cpus=machine.get("cpus"), sha_ni="yes" if machine.get("sha_ni") else "no",
        mem=machine.get("mem_gib"), kernel=machine.get("kernel"), fstype=machine.get("fstype"), device=machine.get("device"),
        python=machine.get("python"), openssl=machine.get("openssl"), dd_version=machine.get("dd", "dd"),
        sha_version=machine.get("sha256sum", "sha256sum"),
        load_before="/".join("%.2f" % x for x in report["load_before"]), load_after="/".join("%.2f" % x for x in report["load_after"]),
        cache_method=cache_method, read_size=report["read_size"],
        window="%d MiB" % ((report.get("writeback_window") or 8 * MIB) // MIB),
        sha_rate=report.get("hashlib_mib_s", 0.0), sha_floor=1024.0 / max(report.get("hashlib_mib_s", 0.0), 1.0),
        notes="\n".join("- %s" % n for n in report["notes"]),
    )
    with open(DOC, "w") as handle:
        handle.write(text)


if __name__ == "__main__":
    sys.exit(main())
