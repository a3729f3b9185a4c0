"""Guest strings are bytes, end to end: arbitrary bytes in every string field (comm, cwd, path,
argv, file identity path, NOTE text) go from a real ring through ``provisor daemon --once`` and
``provisor recover``, then ``query``, every ``export`` format and ``verify``, all as the CLI runs
them: nothing crashes, no output carries a control character of the guest's, every export
parses, and the exact bytes come back (``guesttext.unescape``) from every stored value."""

from __future__ import annotations

import io
import json
import re
import sqlite3
import xml.etree.ElementTree as ET
from pathlib import Path

import prov
import pytest
from crashutil import diff, filled_ring, fingerprint, run
from eventscript import Script
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from prov.model import ProvActivity, ProvEntity
from test_query import W

from examiner.query import EXPORT_FORMATS
from pmem import layout as L
from pmem import ring as R
from pmem.layout import RecType
from provisor.abi import AT_FDCWD
from provisor.events import FileId, decode
from provisor.guesttext import escape, unescape

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # rdflib, inside prov

# a character no output may hold (the renderers' own newlines and tabs aside): C0 controls
# (ESC among them), DEL, C1 controls (CSI), line separators, bidi controls, BOM, noncharacters
UNSAFE_OUT = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069"
                        "\ufeff\ufffe\uffff]")
NASTY = [b"\n", b"\r", b"\t", b"\x00", b"\x1b[31m", b"\x1b]0;owned\x07", b"\x9b", b"\xc2\x9b",
         b"\\", b"\\x41", b"\\n", b'"', b"'", b"<&>]]>", b"//", b"/", b"..", b".", b" ", b"\xff",
         b"\xe2\x82", "\u202e".encode(), "\u2028".encode(), b"\xef\xbf\xbe", b"\xed\xa0\x80",
         b"{}", b";", b"%%", b"@prefix", "é".encode(), b"a"]
guest = (st.binary(min_size=1, max_size=24)
         | st.lists(st.sampled_from(NASTY), min_size=1, max_size=6).map(b"".join))
READ_FMT = {"prov-json": ("json", {}), "prov-n": ("provn", {}), "prov-xml": ("xml", {}),
            "rdf": ("rdf", {"rdf_format": "turtle"})}
DOT_QSTRING = re.compile(r'"(?:[^"\\]|\\.)*"')


def bnorm(b: bytes) -> bytes:
    """daemon.analyzer.normpath on bytes: what the kernel's lexical view of a path is."""
    parts: list[bytes] = []
    for seg in b.split(b"/"):
        if seg in (b"", b"."):
            continue
        if seg == b"..":
            if parts:
                parts.pop()
        else:
            parts.append(seg)
    return b"/" + b"/".join(parts)


def cli(*args: str | bytes):
    r = run(list(args))
    assert r.returncode == 0, (args, r.stdout, r.stderr)
    assert not UNSAFE_OUT.search(r.stdout), (args, r.stdout)
    assert not UNSAFE_OUT.search(r.stderr), (args, r.stderr)
    return r


def dot_strings(text: str) -> list[str]:
    """Every quoted string of a DOT text, unquoted; asserts each line is well formed (its quotes
    balance, a comment holds no statement)."""
    out = []
    for line in text.splitlines():
        if line.startswith("digraph provisor {  // "):
            continue  # a comment to the end of the line (a single line: checked by the caller)
        rest = DOT_QSTRING.sub("", line)
        assert '"' not in rest and "//" not in rest and "/*" not in rest, line
        out += [re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), q[1:-1])
                for q in DOT_QSTRING.findall(line)]
    return out


def build_ring(path: str, comm: bytes, cwd: bytes, name: bytes, argv: list[bytes],
               exe: bytes, note: bytes) -> int:
    """tgid 10 (comm, cwd) execs ``exe`` with ``argv``, writes ``name`` (relative to cwd unless
    it starts with a slash), and
    has an open of it whose exit never came; then a NOTE."""
    sc = Script()
    sc.fork(1, 10)
    sc.cwd[10], sc.comm[10] = escape(cwd), escape(comm)
    sc.call(10, "execve", (0, 0, 0), [escape(exe)], 0, files=[FileId(8, 500, escape(exe))],
            argv=[escape(a) for a in argv])
    sc.open(10, escape(name), W, fd=3, ino=100)
    sc.call(10, "write", (3, 0, 5), (), 5)
    sc.entry(10, "openat", (AT_FDCWD, 0, 0, 0), [escape(name)])
    filled_ring(path, [r.payload for r in sc.records], size=L.DATA_OFFSET + 256 * 1024)
    with R.Producer.open(path, "fail") as p:
        p.append(RecType.NOTE, note)
    return len(sc.records) + 1


def check_store(db: str, comm: bytes, cwd: bytes, name: bytes, argv: list[bytes], exe: bytes,
                note: bytes) -> str:
    """Every stored guest string unescapes to the guest's bytes; returns the file's path."""
    c = sqlite3.connect(db)
    try:
        q = c.execute
        pcomm, pcwd, pexe = q("SELECT comm, cwd, exe FROM processes WHERE tgid=10").fetchone()
        assert (unescape(pcomm), unescape(pcwd), unescape(pexe)) == (comm, cwd, exe)
        for ecomm, ecwd, phase, name_, paths, payload in q(
                "SELECT comm, cwd, phase, name, paths, payload FROM events WHERE tgid=10"):
            assert unescape(ecomm) == comm
            ev = decode(payload)
            if phase == "entry":
                assert unescape(ecwd) == cwd
                if name_ in ("execve", "openat"):
                    assert [unescape(p) for p in paths.split("\n")] == (
                        [exe] if name_ == "execve" else [name])
            if name_ == "execve" and phase == "entry":
                assert [unescape(a) for a in ev.argv] == argv
            elif name_ == "execve":
                assert [unescape(f.path) for f in ev.files] == [exe]
        want = bnorm(name if name.startswith(b"/") else cwd + b"/" + name)
        (path,) = q("SELECT path FROM artifacts WHERE ino=100").fetchone()
        assert unescape(path) == want
        assert {unescape(p) for (p,) in q("SELECT n.path FROM names n JOIN artifacts a ON "
                                           "a.id = n.artifact_id WHERE a.ino=100")} == {want}
        assert unescape(q("SELECT path FROM artifacts WHERE ino=500").fetchone()[0]) == exe
        assert [unescape(t) for (t,) in q("SELECT text FROM notes")] == [note]
        return path
    finally:
        c.close()


def values(doc, kind, attr) -> set[str]:
    return {str(v) for r in doc.get_records(kind) for v in r.get_attribute(attr)}


def check_exports(db: str, d: Path, path: str, comm: str, exe: str, image: str) -> None:
    """``exe`` as the kernel named the binary, ``image`` as a process version ran it (the
    analyzer's: the kernel's name of the new image)."""
    for fmt in EXPORT_FORMATS:
        out = d / f"out.{fmt}"
        cli("export", "--db", db, "--format", fmt, "-o", str(out))
        text = out.read_text(encoding="utf-8")
        assert not UNSAFE_OUT.search(text), (fmt, text)
        if fmt == "dot":
            labels = dot_strings(text)
            assert any(f"file {path} v" in s for s in labels), labels
            continue
        if fmt == "prov-json":
            json.loads(text)
        if fmt == "prov-xml":
            ET.fromstring(text.encode("utf-8"))
        f, kw = READ_FMT[fmt]
        doc = prov.read(io.StringIO(text), format=f, **kw)

        assert {path, exe} <= values(doc, ProvEntity, "provisor:path"), fmt
        assert comm in values(doc, ProvActivity, "provisor:comm"), fmt
        assert image in values(doc, ProvActivity, "provisor:exe"), fmt


def check_queries(db: str, path: str, comm: str, exe: str, image: str) -> None:
    res = json.loads(cli("query", "ancestors", path, "--db", db, "--json").stdout)
    files = [n for n in res["nodes"] if n["kind"] == "file" and n["path"] == path]
    assert files and unescape(files[0]["path"]) == unescape(path)
    procs = [n for n in res["nodes"] if n["kind"] == "process" and n["tgid"] == 10]
    assert procs and {(n["comm"], n["exe"]) for n in procs} >= {(comm, image)}
    table = cli("query", "ancestors", path, "--db", db).stdout
    # one line per note, the header and its rule, one per row: a name injects no row
    assert len(table.splitlines()) == len(res["notes"]) + 2 + len(res["rows"]), table
    assert any(f"file {path} v" in line for line in table.splitlines())
    dot = cli("query", "ancestors", path, "--db", db, "--dot").stdout
    assert dot.splitlines()[0] == f"digraph provisor {{  // ancestors {path}"
    assert any(s.startswith(f"file {path} v") for s in dot_strings(dot))
    proc = cli("query", "process", "10", "--db", db).stdout
    assert f"({comm}, {exe})" in proc


# a dozen CLI runs per example: few examples, and no shrinking (minutes of subprocesses on a
# shared machine; the failing example is printed as found)
@settings(max_examples=15, deadline=None, phases=[Phase.explicit, Phase.reuse, Phase.generate],
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(comm=guest, cwd=guest, name=guest, argv=st.lists(guest, min_size=1, max_size=3),
       exe=guest, note=guest)
def test_arbitrary_bytes_in_every_string_field(tmp_path_factory, comm, cwd, name, argv, exe,
                                               note) -> None:
    d = tmp_path_factory.mktemp("strings")
    cwd, exe = b"/" + cwd, b"/" + exe
    ring, live, forensic = str(d / "p.ring"), str(d / "live.db"), str(d / "forensic.db")
    n = build_ring(ring, comm, cwd, name, argv, exe, note)
    assert cli("ring", "dump", ring).stdout.count("\n") == n
    dump = cli("ring", "dump", ring, "--json").stdout.splitlines()
    assert len(dump) == n
    for line in dump:
        rec = json.loads(line)
        if rec["type"] == "NOTE":
            assert unescape(rec["payload"]) == note
        elif rec["payload"]["tgid"] == 10:
            assert unescape(rec["payload"]["comm"]) == comm
    cli("recover", "--ring", ring, "--db", forensic, "--read-only")
    cli("daemon", "--ring", ring, "--db", live, "--once", "-q")
    fa, fb = fingerprint(live), fingerprint(forensic)
    assert fa == fb, diff(fa, fb)
    path = check_store(live, comm, cwd, name, argv, exe, note)
    image = escape(exe)  # the binary as the kernel named it at the exit (the analyzer's exe)
    check_queries(live, path, escape(comm), escape(exe), image)
    check_exports(live, d, path, escape(comm), escape(exe), image)
    for db in (live, forensic):
        assert cli("verify", "--db", db).stdout.startswith("OK:")


# -- the issue's case ------------------------------------------------------------------------
FAKE = b"x\n0      v:99  file     FAKE ROW  +0.000001s  1  created  (target)\x1b]0;owned\x07\x1b[2J"


def test_a_name_that_is_not_utf8_and_one_that_forges_a_row(shm_dir) -> None:
    """``cat "$(printf 'n\\377\\001m')"`` in /root killed the daemon (exit 70) and the ring
    never drained; a name with a newline and terminal escapes forged rows in query output."""
    sc = Script()
    sc.fork(1, 10)
    sc.cwd[10], sc.comm[10] = "/root", "cat"
    name = escape(b"n\xff\x01m")
    assert name == r"n\xff\x01m"
    sc.open(10, name, 0, fd=3, ino=100)
    sc.call(10, "read", (3, 0, 5), (), 5)
    sc.open(10, escape(FAKE), W, fd=4, ino=101)
    sc.call(10, "write", (4, 0, 5), (), 5)
    assert sum(b"\x03\x04\x00n\xff\x01m" in r.payload for r in sc.records) == 1  # T_PATH, raw
    ring, db = str(shm_dir / "p.ring"), str(shm_dir / "p.db")
    filled_ring(ring, [r.payload for r in sc.records], size=L.DATA_OFFSET + 256 * 1024)
    r = run(["daemon", "--ring", ring, "--db", db, "--once"])
    assert r.returncode == 0, r.stderr
    c = sqlite3.connect(db)
    paths = {ino: p for ino, p in c.execute("SELECT ino, path FROM artifacts WHERE ino > 0")}
    c.close()
    assert unescape(paths[100]) == b"/root/n\xff\x01m"
    assert unescape(paths[101]) == b"/root/" + FAKE
    # typed as printed, or as the raw bytes a shell passes: the same file
    for target in (r"/root/n\xff\x01m", b"/root/n\xff\x01m"):
        r = run(["query", "descendants", target, "--db", db])
        assert r.returncode == 0, r.stderr
        assert "\x1b" not in r.stdout and "\x07" not in r.stdout
        lines = r.stdout.splitlines()
        # a note, the header, its rule, then the target, the reader, and the file it wrote
        assert [ln.split()[0] for ln in lines[3:]] == ["0", "1", "1"], lines
        assert all(re.match(r"\d  +v:\d+  ", ln) for ln in lines[3:]), lines
        assert sum("FAKE ROW" in ln for ln in lines) == 1
    # the forged name typed raw: a DOT comment it cannot end, a PROV-XML that parses
    r = run(["query", "ancestors", b"/root/" + FAKE, "--db", db, "--dot"])
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0] == ("digraph provisor {  // ancestors /root/"
                                        + escape(FAKE))
    dot_strings(r.stdout)
    r = run(["export", "--db", db, "--format", "prov-xml", "-o", "-"])
    assert r.returncode == 0, r.stderr
    ET.fromstring(r.stdout.encode())
