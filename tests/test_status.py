"""provisor status: ring, store, lag, daemon liveness (found by scanning processes) and the
last verification."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
from test_query import drained_ring

from examiner import status as S
from examiner import verify as V

CLI = [sys.executable, "-c", "from provisor.cli import main; main()"]


@pytest.fixture
def setup(shm_dir):
    from pmem import ring

    rpath, dpath = drained_ring(shm_dir, "s")
    with ring.Producer.open(rpath, "fail") as prod:
        prod.note("one")
        prod.note("two")
    return rpath, dpath


def test_status_reports_ring_store_lag_and_verification(setup):
    rpath, dpath = setup
    s = S.status(dpath, rpath, "/nonexistent/default.db")
    r, d = s["ring"], s["db"]
    assert r["mode"] and r["checkpoint_seq"] == 59 and r["last_seq"] == 61
    assert 0 < r["fill"] < 1 and r["lost_total"] == 0
    assert d["applied_seq"] == 59 and d["outcome_unknown"] == 1 and d["relations"] > 0
    assert s["lag"] == 2 and s["same_ring"]
    assert s["daemon"] == {"alive": False, "pids": []}
    assert s["verification"]["state"] == "never verified"
    V.run(dpath)
    v = S.status(dpath, rpath, "")["verification"]
    assert v["state"] == "ok" and v["batches_since"] == 0
    text = S.render(S.status(dpath, rpath, ""))
    for word in ("mode", "fill", "checkpoint seq 59", "applied seq 59", "lag       2 records",
                 "not running", "verified  ok"):
        assert word in text


def test_daemon_detected_by_its_db(setup):
    rpath, dpath = setup
    p = subprocess.Popen([*CLI, "daemon", "--ring", rpath, "--db", dpath, "-q"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            s = S.status(dpath, rpath, "")
            if s["daemon"]["alive"]:
                break
            time.sleep(0.2)
        assert s["daemon"]["pids"] == [p.pid]
        # another DB's status does not claim this daemon
        assert S.find_daemons(dpath + ".other", "") == []
    finally:
        p.terminate()
        p.wait(timeout=30)
    assert not S.status(dpath, rpath, "")["daemon"]["alive"]


def test_cli_json_and_errors(setup, tmp_path):
    rpath, dpath = setup
    r = subprocess.run([*CLI, "status", "--ring", rpath, "--db", dpath, "--json", "--verify"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["verification"]["state"] == "ok" and s["lag"] == 2
    for bad in (["status", "--ring", str(tmp_path / "none.ring"), "--db", dpath],
                ["status", "--db", str(tmp_path)]):
        r = subprocess.run([*CLI, *bad], capture_output=True, text=True)
        assert r.returncode == 2 and r.stderr.startswith("provisor: error:"), r.stderr
        assert r.stderr.count("\n") == 1
