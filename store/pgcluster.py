"""A private PostgreSQL cluster for tests, benchmarks and a one-host fleet (Debian's server).

The cluster listens on a unix socket only, inside a 0700 directory owned by the cluster's
user, so ``trust`` authentication there admits only that user and root. Run as root, the
server runs as ``postgres`` (initdb refuses root); otherwise as the caller.

    python -m store.pgcluster start DIR     # prints the URL; DIR is made, 0700
    python -m store.pgcluster stop DIR
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from store.base import StoreError

PORT = 5432  # on a private socket directory: no clash with a system cluster


def bindir() -> Path:
    """Debian's server binaries (package ``postgresql``), the newest major version."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
                   key=lambda p: int(Path(p).parent.parent.name))
    if not found:
        raise StoreError("PostgreSQL server not installed (Debian package postgresql; "
                         "`make deps` installs it)")
    return Path(found[-1]).parent


class Cluster:
    """One private cluster in ``base``: data in base/data, the socket in base."""

    def __init__(self, base: str | os.PathLike) -> None:
        self.base = Path(base).absolute()
        self.data = self.base / "data"
        self.bin = bindir()
        self.user = "postgres" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name

    # -- running the server's tools as its user -----------------------------------------------
    def _run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        argv = [str(self.bin / cmd[0]), *cmd[1:]]
        if os.geteuid() == 0:
            argv = ["runuser", "-u", "postgres", "--", *argv]
        p = subprocess.run(argv, capture_output=True, text=True, cwd="/")
        if check and p.returncode != 0:
            last = (p.stderr.strip() or p.stdout.strip() or f"status {p.returncode}")
            raise StoreError(f"{cmd[0]}: {last.splitlines()[-1]}")
        return p

    def _prepare(self) -> None:
        self.base.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.base, 0o700)
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            os.chown(self.base, pw.pw_uid, pw.pw_gid)
            # postgres must reach base: each parent must be searchable by it
            for parent in self.base.parents:
                if not os.access(parent, os.X_OK) or (os.stat(parent).st_mode & 0o001) == 0:
                    raise StoreError(f"{parent}: not searchable by the postgres user; put the "
                                     "cluster somewhere else (such as /tmp)")

    def start(self) -> str:
        """Create the cluster when new, start it, wait until it accepts connections."""
        self._prepare()
        if not (self.data / "PG_VERSION").exists():
            self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust",
                      "-E", "UTF8", "--locale=C.UTF-8", "--no-instructions")
            with open(self.data / "postgresql.conf", "a") as f:
                f.write("\n# provisor: a private cluster on a unix socket only\n"
                        "listen_addresses = ''\n"
                        f"unix_socket_directories = '{self.base}'\n"
                        f"port = {PORT}\n"
                        "max_connections = 200\n"
                        "fsync = on\nsynchronous_commit = on\n")
        if self._run("pg_ctl", "-D", str(self.data), "status", check=False).returncode != 0:
            self._run("pg_ctl", "-D", str(self.data), "-l", str(self.data / "server.log"),
                      "-w", "-t", "60", "start")
        deadline = time.monotonic() + 30
        while self._run("pg_isready", "-h", str(self.base), "-p", str(PORT),
                        check=False).returncode != 0:
            if time.monotonic() > deadline:
                raise StoreError(f"{self.base}: the server did not accept connections")
            time.sleep(0.1)
        return self.url()

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop", check=False)

    def url(self, dbname: str = "postgres", user: str = "postgres") -> str:
        return f"postgresql://{user}@/{dbname}?host={self.base}&port={PORT}"

    def createdb(self, name: str, template: str | None = None) -> str:
        """A new database, empty or a copy of ``template`` (a database nobody is connected
        to); its URL (as the superuser)."""
        extra = ["-T", template] if template else []
        self._run("createdb", "-h", str(self.base), "-p", str(PORT), "-U", "postgres", *extra,
                  name)
        return self.url(name)


def temporary() -> Cluster:
    """A cluster in a new directory under /tmp (reachable by postgres when run as root)."""
    return Cluster(tempfile.mkdtemp(prefix="provisor-pg-", dir="/tmp"))


def remove(c: Cluster) -> None:
    c.stop()
    shutil.rmtree(c.base, ignore_errors=True)


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("start", "stop"):
        print("usage: python -m store.pgcluster start|stop DIR", file=sys.stderr)
        return 2
    try:
        c = Cluster(argv[1])
        if argv[0] == "start":
            print(c.start())
        else:
            c.stop()
    except StoreError as e:
        print(f"pgcluster: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
