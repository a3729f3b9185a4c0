"""``provisor fleet``: the fleet file's checks, and (marked ``guest``) two guests with the same
workload at once into one store, on both backends: each guest's graph is complete and its own."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from provisor import fleet as F

ROOT = Path(__file__).resolve().parent.parent
WEB = ROOT / "config" / "guest" / "workloads" / "web.sh"


def provisor(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "provisor.cli", *args], capture_output=True,
                          text=True, timeout=timeout)


def fleet_file(tmp_path: Path, db: str, guests: list[str], body: str = "") -> Path:
    p = tmp_path / "fleet.toml"
    text = f'[fleet]\ndb = "{db}"\n'
    for g in guests:
        text += (f'\n[[guest]]\nname = "{g}"\nworkload = "{WEB}"\n'
                 f'ring = "{tmp_path}/{g}.ring"\nsize = "8M"\n')
    p.write_text(text + body)
    return p


def test_the_example_fleet_loads():
    fl = F.load(str(ROOT / "config" / "fleet.toml"))
    assert [g.name for g in fl.guests] == ["web", "build", "demo"]
    assert all(Path(g.workload).is_file() for g in fl.guests)
    assert fl.store_of(fl.guests[0]).endswith("/web.db")
    url = "postgresql://u@/d?host=/tmp/x"
    assert F.load(str(ROOT / "config" / "fleet.toml"), url).store_of(fl.guests[1]) == url


@pytest.mark.parametrize("body,msg", [
    ('\n[[guest]]\nname = "a"\nworkload = "w.sh"\nring = "/tmp/other.ring"\n', "share the name"),
    ('\n[[guest]]\nname = "Bad!"\nworkload = "w.sh"\nring = "/tmp/x.ring"\n', "machine name"),
    ('\n[[guest]]\nname = "c"\nworkload = "w.sh"\n', "ring must be"),
    ('\n[[guest]]\nname = "c"\nworkload = "w.sh"\nring = "/tmp/c.ring"\ncolor = 1\n',
     "unknown key color"),
    ('\n[[guest]]\nname = "c"\nworkload = "w.sh"\nring = "/tmp/c.ring"\nsmp = 0\n', "smp"),
    ("\n[extra]\n", "unknown section"),
])
def test_a_bad_fleet_file_is_one_line(tmp_path, body, msg):
    p = fleet_file(tmp_path, str(tmp_path / "store"), ["a"], body)
    with pytest.raises(F.FleetError, match=msg):
        F.load(str(p))
    r = provisor("fleet", str(p))
    assert r.returncode == 2 and msg.split()[0] in r.stderr
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert not (tmp_path / "store").exists()  # nothing made before the file is checked


def test_same_ring_twice_and_no_guest_refused(tmp_path):
    p = tmp_path / "f.toml"
    p.write_text('[fleet]\ndb = "/tmp/s"\n')
    with pytest.raises(F.FleetError, match="no \\[\\[guest\\]\\]"):
        F.load(str(p))
    p.write_text('[fleet]\ndb = "/tmp/s"\n[[guest]]\nname = "a"\nworkload = "w"\nring = "/r"\n'
                 '[[guest]]\nname = "b"\nworkload = "w"\nring = "/r"\n')
    with pytest.raises(F.FleetError, match="share the ring"):
        F.load(str(p))


# ---------------------------------------------------------------------------------- guest test
def _shape(conn, target: str) -> list[tuple]:
    """A lineage walk with what differs between two runs of one workload left out: pids, times,
    ids, and how many versions an object went through (a pipe read before or after its writer's
    next write gets one version more or fewer: the guests' scheduling decides that, not the
    store). What stays is one entry per object -- its kind and the names its versions had -- so
    a lost object, or one of the other guest's taken in, changes the shape."""
    from examiner import query as Q

    res = Q.lineage(conn, target, up=True)
    objects: dict[tuple, set[str]] = {}
    for d in res.nodes.values():
        label = re.sub(r" v\d+$", "", re.sub(r"process \d+", "process N", d["label"]))
        objects.setdefault((d["kind"], d["object_id"]), set()).add(label)
    return sorted((kind, tuple(sorted(labels))) for (kind, _), labels in objects.items())


@pytest.mark.guest
@pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="needs QEMU")
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_two_guests_same_workload_graphs_apart_and_complete(shm_dir, tmp_path, request,
                                                            backend):
    from examiner import query as Q
    from pmem import ring as R

    db = request.getfixturevalue("pg_url") if backend == "postgresql" else str(shm_dir / "st")
    p = fleet_file(shm_dir, db, ["alpha", "beta"])
    r = provisor("fleet", str(p), "--nokaslr")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert [x.split()[0] for x in lines] == ["alpha", "beta"] and all(" ok " in x for x in lines)
    fl = F.load(str(p))
    shapes, uuids = {}, {}
    for g in fl.guests:
        assert "web done" in Path(f"{g.ring}.serial.log").read_text(errors="replace")
        with R.Consumer.open(g.ring, readonly=True) as c:
            released, uuid = c.checkpoint, c.header.uuid_str
        conn = Q.connect(fl.store_of(g), g.name)
        try:
            m = dict(conn.execute("SELECT key, value FROM meta").fetchall())
            # the store of this guest is this guest's ring, all of it, and no other's
            assert m["ring_uuid"] == uuid and m.get("machine_name") == g.name
            assert int(m["applied_seq"]) == released > 100
            assert conn.execute("SELECT max(seq), count(*) FROM events").fetchone()[0] \
                <= released
            shapes[g.name] = _shape(conn, "/root/www/index.html.gz")
        finally:
            conn.close()
        uuids[g.name] = uuid
    assert uuids["alpha"] != uuids["beta"]
    # complete: the page's history reaches its template, its data and the tools that made it
    labels = " | ".join(" | ".join(names) for _, names in shapes["alpha"])
    for want in ("/root/page.tmpl", "/root/body.txt", "/root/www/index.html", "sed", "gzip",
                 "init"):
        assert want in labels, (want, labels)
    # and the same on both guests: neither lost a part, neither took the other's
    assert shapes["alpha"] == shapes["beta"]


def test_status_shows_every_guest(shm_dir, tmp_path):
    """Three guests' rings (synthetic records): one drained and stopped, one with a live
    daemon, one never stored. Status reads each figure from its ring, store and process."""
    import json
    import signal
    import time

    from crashutil import filled_ring, payloads

    from pmem import ring as R

    store = shm_dir / "st"
    p = shm_dir / "fleet.toml"
    p.write_text(f'[fleet]\ndb = "{store}"\n' + "".join(
        f'[[guest]]\nname = "{g}"\nworkload = "{WEB}"\nring = "{shm_dir}/{g}.ring"\n'
        for g in ("a", "b", "c")))
    for i, g in enumerate("abc"):
        filled_ring(f"{shm_dir}/{g}.ring", payloads(300 + 100 * i, i), size=2 << 20)
    store.mkdir(mode=0o700)
    r = provisor("daemon", "--ring", f"{shm_dir}/a.ring", "--db", f"{store}/a.db", "--machine",
                 "a", "--once", "-q")
    assert r.returncode == 0, r.stderr
    live = subprocess.Popen([sys.executable, "-m", "provisor.cli", "daemon", "--ring",
                             f"{shm_dir}/b.ring", "--db", f"{store}/b.db", "--machine", "b",
                             "-q"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(300):  # until b's daemon released everything
            with R.Consumer.open(f"{shm_dir}/b.ring", readonly=True) as c:
                if c.checkpoint == 400:
                    break
            time.sleep(0.1)
        r = provisor("status", "--fleet", str(p), "--json")
        assert r.returncode == 0, r.stderr
        rows = {x["machine"]: x for x in json.loads(r.stdout)}
        text = provisor("status", "--fleet", str(p)).stdout
    finally:
        live.send_signal(signal.SIGTERM)
        live.wait(30)
    a, b, c = rows["a"], rows["b"], rows["c"]
    assert (a["applied_seq"], a["lag"], a["daemon"]["alive"]) == (300, 0, False)
    assert (b["applied_seq"], b["lag"], b["daemon"]["alive"]) == (400, 0, True)
    assert b["daemon"]["pids"] == [live.pid]
    assert c["applied_seq"] is None and c["note"] == "no store yet" and c["ring_last_seq"] == 500
    assert all(x["lost"] == 0 and not x["guest"]["running"] for x in rows.values())
    assert c["ring_fill"] > a["ring_fill"] == 0
    lines = text.splitlines()
    assert lines[0].split()[:3] == ["machine", "guest", "daemon"]
    assert [x.split()[0] for x in lines[2:]] == ["a", "b", "c"] and "alive" in lines[3]
