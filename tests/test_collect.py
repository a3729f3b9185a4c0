"""``provisor collect``: its pieces without a guest, and (marked ``guest``) the demo workload end
to end: guest, interceptor, daemon, store."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from daemon.apply import Applier
from hv.collect import Summary, db_counts, kernel_symbols
from provisor import events as E
from provisor.errors import ProvisorError

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "config" / "guest" / "workloads" / "demo.sh"
UPCASE = ROOT / "config" / "guest" / "workloads" / "upcase.c"


def provisor(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from provisor.cli import main; main()", *args],
                          capture_output=True, text=True, timeout=600)


class _Prof:
    def symbols(self) -> dict[str, int]:
        return {"current_task": 0x1FB80}


def test_kernel_symbols_fill_in_from_system_map(tmp_path) -> None:
    sm = tmp_path / "System.map"
    sm.write_text("00000000000191c0 D kstack_offset\nffffffff819fc710 t kernel_init\n"
                  "ffffffff81000000 T _text\n000000000001fb80 D current_task\n")
    syms = kernel_symbols(_Prof(), sm)
    assert syms["kstack_offset"] == 0x191C0 and syms["kernel_init"] == 0xFFFFFFFF819FC710
    assert syms["current_task"] == 0x1FB80 and "_text" not in syms
    assert kernel_symbols(_Prof(), tmp_path / "missing") == {"current_task": 0x1FB80}


def test_summary_and_counts(tmp_path) -> None:
    s = Summary(events=10, syscalls=5, stops=20, elapsed=3.2, us_per_syscall=250.0,
                ring_hwm=0.015, db={"processes": 2, "artifacts": 3, "relations": 4})
    text = "\n".join(s.lines())
    assert "events       10" in text and "processes    2" in text and "250 us" in text
    assert "1.5%" in text
    assert "no daemon" in "\n".join(Summary().lines())
    assert db_counts(str(tmp_path / "none.db")) == {}
    db = tmp_path / "x.db"
    Applier(str(db), "u").close()
    assert db_counts(str(db)) == {"events": 0, "processes": 0, "artifacts": 0, "versions": 0,
                                  "relations": 0, "outcome_unknown": 0}
    other = tmp_path / "other.db"
    con = sqlite3.connect(other)
    con.execute("CREATE TABLE processes (id)")
    con.commit()
    con.close()
    with pytest.raises(ProvisorError, match="not a provisor database"):
        db_counts(str(other))


def test_cli_errors_are_one_line(tmp_path) -> None:
    r = provisor("collect", "--workload", str(tmp_path / "nope.sh"))
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "no such workload" in r.stderr
    assert "Traceback" not in r.stderr


# ---------------------------------------------------------------------------------- guest test

@pytest.mark.guest
@pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None or shutil.which("gcc") is None,
                    reason="needs qemu-system-x86_64 and gcc (make setup)")
def test_demo_end_to_end(shm_dir, tmp_path) -> None:
    inc = tmp_path / "inc"
    (inc / "bin").mkdir(parents=True)
    subprocess.run(["gcc", "-static", "-O2", "-o", str(inc / "bin" / "upcase"), str(UPCASE)],
                   check=True)
    ring, db = shm_dir / "demo.ring", shm_dir / "demo.db"
    r = provisor("collect", "--workload", str(DEMO), "--include", str(inc), "--ring", str(ring),
                 "--db", str(db), "--nokaslr")
    assert r.returncode == 0, r.stderr
    assert "processes" in r.stdout and "relations" in r.stdout
    serial = Path(f"{ring}.serial.log").read_text(errors="replace")
    assert "demo done" in serial

    con = sqlite3.connect(db)
    con.row_factory = sqlite3.Row
    evs = [E.decode(row["payload"], row["seq"]) for row in
           con.execute("SELECT seq, payload FROM events ORDER BY seq")]
    by_seq = {e.seq: e for e in evs}

    def exit_of(e: E.Event) -> E.Event:
        return next(x for x in evs if x.phase == E.EXIT and x.entry_seq == e.seq)

    def opens(name: str) -> list[E.Event]:
        """openat entries of ``name`` for writing (O_WRONLY or O_RDWR)."""
        return [e for e in evs if e.name == "openat" and e.phase == E.ENTRY
                and e.paths and e.paths[0].endswith(name) and e.arg(2) & 3]

    # /init's first syscall is there
    assert next(e for e in evs if e.tgid == 1).paths == ["/init"]
    # the workload shell writes a.txt in /root; the fd it gets back is a.txt
    (wa,) = opens("a.txt")
    assert wa.cwd == "/root" and wa.comm == "sh"
    x = exit_of(wa)
    assert x.ret >= 0 and x.files[0].path == "/root/a.txt"
    shell = wa.tgid
    # the child shell of `sh -c 'cat a.txt > b.txt'` opens b.txt, then becomes cat
    (wb,) = opens("b.txt")
    assert wb.tgid != shell and wb.ppid == shell and wb.cwd == "/root"
    cat = [e for e in evs if e.name == "execve" and e.tgid == wb.tgid and e.argv == ["cat", "a.txt"]]
    assert cat and exit_of(cat[0]).ret == 0
    ren = [e for e in evs if e.name in ("rename", "renameat", "renameat2") and e.phase == E.ENTRY]
    assert ren and ren[0].paths[-2:] == ["b.txt", "b2.txt"] and ren[0].cwd == "/root"
    assert exit_of(ren[0]).ret == 0
    # the pipe: two fds from pipe2, sort writes c.txt
    pipes = [e for e in evs if e.name in ("pipe", "pipe2") and e.phase == E.EXIT]
    assert pipes and len(pipes[0].out_fds) == 2 and pipes[0].ret == 0
    (wc,) = opens("c.txt")
    assert wc.cwd == "/root"
    (wd,) = opens("d.txt")
    assert wd.cwd == "/root/out"
    # the static binary from --include
    up = [e for e in evs if e.name == "execve" and e.paths == ["/bin/upcase"]]
    assert up and exit_of(up[0]).ret == 0
    assert exit_of(up[0]).files[0].path == "/bin/upcase"  # mm->exe_file of the new image
    # busybox re-executes itself through /proc/self/exe: the kernel's answer is the binary
    exes = {r[0] for r in con.execute("SELECT exe FROM processes")}
    assert "/bin/busybox" in exes and "/proc/self/exe" not in exes
    (we,) = opens("e.txt")
    assert we.comm == "upcase" and exit_of(we).ret >= 0
    assert all(e.entry_seq in by_seq for e in evs if e.phase == E.EXIT and e.entry_seq)

    # the store derives b2.txt and c.txt from a.txt, through the right processes
    from examiner import query

    for target in ("/root/b2.txt", "/root/c.txt", "/root/e.txt"):
        res = query.lineage(con, target, up=True)
        labels = " | ".join(d["label"] for d in res.nodes.values())
        assert "/root/a.txt" in labels, (target, labels)
    labels = " | ".join(d["label"] for d in query.lineage(con, "/root/c.txt", up=True)
                        .nodes.values())
    assert "sort" in labels and "cat" in labels
    con.close()


@pytest.mark.guest
@pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="needs QEMU")
def test_daemon_that_cannot_start_is_reported(shm_dir, tmp_path) -> None:
    wl = tmp_path / "w.sh"
    wl.write_text("#!/bin/sh\ntrue\n")
    db = shm_dir / "x.db"
    db.write_text("this is not a database")
    r = provisor("collect", "--workload", str(wl), "--ring", str(shm_dir / "x.ring"),
                 "--db", str(db), "--nokaslr")
    assert r.returncode == 2 and "daemon exited at start" in r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("provisor: error:") and "Traceback" not in r.stderr
