"""ProvMark-style fidelity in real guests (issue 14, docs/FIDELITY.md).

One guest boot per producer (session fixtures): the native plugin, then the gdbstub fallback
(``--trap gdb``), each runs every case of tests/fidelity/cases.py (about 10 and 20 s). For each
case the action run's PROV-JSON export, minus its control's after normalization
(tests/fidelity/harness.py), must be non-empty and show its group's pattern (issue 14's
contract, recorded in docs/FIDELITY.md); for failed calls it must hold no relation and no new
version.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import harness as H
import pytest
from cases import CASES, GROUP_OF, XFAIL, Case

from hv import native

pytestmark = [
    pytest.mark.guest,
    pytest.mark.skipif(not native.PLUGIN.is_file(), reason="plugin not built (make plugin)"),
]

UID, GID, GID2 = 1000, 1000, 1001
SIGUSR1 = 10


@pytest.fixture(scope="session")
def boot_plugin() -> Iterator[H.Boot]:
    yield from _boot("plugin")


@pytest.fixture(scope="session")
def boot_gdb() -> Iterator[H.Boot]:
    yield from _boot("gdb")


def _boot(trap: str) -> Iterator[H.Boot]:
    """One boot running every case; its directory (ring, store, export, console) is removed
    afterwards unless PROVISOR_FIDELITY_KEEP is set (then its path is printed)."""
    base = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    d = Path(tempfile.mkdtemp(prefix=f"provisor-fidelity-{trap}-", dir=base))
    try:
        yield H.boot(d, H.all_cases(), trap)
    finally:
        if os.environ.get("PROVISOR_FIDELITY_KEEP"):
            print(f"fidelity {trap} boot kept in {d}")
        else:
            shutil.rmtree(d, ignore_errors=True)


# -- what a pattern check sees: the action run's records, the difference's relations -------
class View:
    def __init__(self, d: H.Diff) -> None:
        self.d, self.run = d, d.action

    def S(self, name: str) -> str:
        return f"{self.run.stage}/{name}"

    def rec(self, ident: str) -> dict:
        return self.run.elements.get(ident, ("", {}))[1]

    def sec(self, ident: str) -> str:
        return self.run.elements.get(ident, ("", {}))[0]

    def paths(self, ident: str) -> list[str]:
        r = self.rec(ident)
        return [str(p) for k in ("provisor:path", "provisor:name", "provisor:names")
                for p in H.values(r, k)]

    def attr(self, ident: str, key: str) -> list:
        return H.values(self.rec(ident), f"provisor:{key}")

    def kind(self, ident: str) -> str:
        k = self.attr(ident, "kind")
        return str(k[0]) if k else ""

    def artifact(self, ident: str):
        a = self.attr(ident, "artifact")
        return a[0] if a else None

    # predicates on record ids
    def at(self, name: str) -> Callable[[str], bool]:
        return lambda i: self.sec(i) == "entity" and self.S(name) in self.paths(i)

    def path_is(self, path: str) -> Callable[[str], bool]:
        return lambda i: self.sec(i) == "entity" and path in self.paths(i)

    def of_kind(self, kind: str) -> Callable[[str], bool]:
        return lambda i: self.sec(i) == "entity" and self.kind(i) == kind

    def root(self, i: str) -> bool:
        return self.run.is_root_activity(i)

    def child(self, i: str) -> bool:
        return self.run.is_child_activity(i)

    def named(self, name: str) -> Callable[[str], bool]:
        """Entities that carry ``name``, or whose label does, or of an artifact that did (a
        version made by unlinking the last name may carry none)."""
        art = self.artifact_of(name)
        return lambda i: self.sec(i) == "entity" and (
            self.S(name) in self.paths(i) or self.S(name) in str(self.rec(i).get("prov:label"))
            or art(i))

    def has(self, ident: str, key: str, value) -> bool:
        """Whether attribute ``key`` of ``ident`` has ``value`` among its values."""
        return str(value) in {str(x) for x in self.attr(ident, key)}

    def artifact_of(self, name: str) -> Callable[[str], bool]:
        """Entities of the artifact that (some version of) ``name`` is."""
        arts = {self.artifact(i) for i in self.run.elements if self.at(name)(i)} - {None}
        return lambda i: self.sec(i) == "entity" and self.artifact(i) in arts

    # relations in the difference
    def rels(self, sec: str, a: str, b: str, pa, pb) -> list[tuple[str, str]]:
        out = []
        for rec in self.d.rels(sec):
            for x in H.values(rec, a):
                for y in H.values(rec, b):
                    if pa(str(x)) and pb(str(y)):
                        out.append((str(x), str(y)))
        return out

    def generated(self, ent, act) -> list[tuple[str, str]]:
        return self.rels("wasGeneratedBy", "prov:entity", "prov:activity", ent, act)

    def used(self, act, ent) -> list[tuple[str, str]]:
        return self.rels("used", "prov:activity", "prov:entity", act, ent)

    def derived(self, new, old) -> list[tuple[str, str]]:
        return self.rels("wasDerivedFrom", "prov:generatedEntity", "prov:usedEntity", new, old)

    def informed(self, informed, informant) -> list[tuple[str, str]]:
        return self.rels("wasInformedBy", "prov:informed", "prov:informant", informed, informant)

    def new_elements(self, pred) -> list[str]:
        return [i for i in self.d.elements if pred(i)]

    def fd_event(self, who, *words: str) -> list[str]:
        """Activities in the difference with an fd_event naming all of ``words``."""
        return [i for i in self.d.elements if self.sec(i) == "activity" and who(i)
                and any(all(w in str(t) for w in words) for t in self.attr(i, "fd_event"))]


def both(*preds) -> Callable[[str], bool]:
    return lambda i: all(p(i) for p in preds)


def _octal(v) -> int | None:
    try:
        return v if isinstance(v, int) else int(str(v).removeprefix("0o"), 8)
    except ValueError:
        return None


# -- the patterns, one per group (cases of a group differ in names only) -------------------
def p_creat(v: View, c: Case) -> None:
    assert v.generated(v.at("new.txt"), v.root), "new.txt wasGeneratedBy the probe"


def p_open(v: View, c: Case) -> None:
    if c.name == "open-after-fork":  # the child opens test.txt by a path it has not touched
        assert v.fd_event(v.child, "openat", "test.txt"), \
            "an fd_event 'openat ... test.txt' on the child's activity"
        # (the stage dir itself is an artifact of every run: the setup chowns it)
        bad = [p for i in v.d.elements for p in v.paths(i) if p == v.run.stage]
        assert not bad, "a new artifact named after the cwd (the path read as '')"
        return
    assert v.fd_event(v.root, c.syscalls[0], "test.txt"), \
        f"an fd_event '{c.syscalls[0]} ... test.txt' on the probe's activity"
    if c.name == "open-trunc":
        assert v.generated(v.at("test.txt"), v.root), "O_TRUNC: test.txt wasGeneratedBy"


def p_close(v: View, c: Case) -> None:
    assert v.fd_event(v.root, "close"), "an fd_event 'close fd=N' on the probe's activity"


def p_read(v: View, c: Case) -> None:
    assert v.used(v.root, v.at("test.txt")), "the probe used test.txt"


def p_write(v: View, c: Case) -> None:
    assert v.generated(v.at("test.txt"), v.root), "test.txt wasGeneratedBy the probe"


def p_dup(v: View, c: Case) -> None:
    assert v.fd_event(v.root, c.syscalls[0]), f"an fd_event '{c.syscalls[0]} ...' on the probe"


def p_link(v: View, c: Case) -> None:
    name = "link.txt" if c.name == "link" else "linkat-test.txt"
    assert v.generated(both(v.at(name), v.artifact_of("test.txt")), v.root), \
        f"{name}: a version of test.txt's artifact wasGeneratedBy the probe"
    bad = [p for i in v.run.elements for p in v.paths(i) if p.startswith(v.S("test.txt/"))]
    assert not bad, f"a dirfd's identity given to the path: {bad}"
    gone = [i for i in v.run.elements if v.at("test.txt")(i) and v.attr(i, "deleted")]
    assert not gone, "test.txt, still linked, exported as deleted"


def p_symlink(v: View, c: Case) -> None:
    if c.name == "open-symlink":
        assert v.used(v.root, v.artifact_of("test.txt")), \
            "read through sym.txt: the probe used test.txt (the link's target)"
        return
    gen = v.generated(both(v.at("sym.txt"), v.of_kind("symlink")), v.root)
    assert gen, "sym.txt (a symlink) wasGeneratedBy the probe"
    assert any("test.txt" in str(t) for e, _ in gen for t in v.attr(e, "link_target")), \
        "the symlink's link_target attribute"


def p_mknod(v: View, c: Case) -> None:
    if c.name == "fifo-data":
        gen = v.generated(v.at("fifo"), v.child)
        assert gen, "the writer (the child) generated the fifo"
        arts = {v.artifact(e) for e, _ in gen}
        assert v.used(v.root, lambda i: v.artifact(i) in arts), \
            "the reader (the probe) used the same fifo"
        return
    gen = v.generated(both(v.at("fifo"), v.of_kind("fifo")), v.root)
    assert gen, "the fifo (kind fifo) wasGeneratedBy the probe"
    assert any(v.has(e, "file_type", "fifo") for e, _ in gen), "file_type fifo"


def p_rename(v: View, c: Case) -> None:
    d = v.derived(v.at("renamed.txt"), v.at("test.txt"))
    assert d, "renamed.txt wasDerivedFrom test.txt"
    assert v.generated(lambda i: i in {n for n, _ in d}, v.root), \
        "the renamed version wasGeneratedBy the probe"


def p_truncate(v: View, c: Case) -> None:
    assert v.generated(v.at("test.txt"), v.root), "test.txt wasGeneratedBy the probe"


def p_unlink(v: View, c: Case) -> None:
    """The last name removed: the current version wasInvalidatedBy the probe and carries the
    name it lost (no new version: nothing of the file changed)."""
    name = "dir" if c.name == "rmdir" else "test.txt"
    inv = v.rels("wasInvalidatedBy", "prov:entity", "prov:activity", v.named(name), v.root)
    assert inv, f"{name} wasInvalidatedBy the probe"
    assert any(v.has(e, "unlinked", v.S(name)) for e, _ in inv), "the lost name is recorded"


def _changed(v: View, name: str, key: str, want: int) -> None:
    new = both(v.at(name), lambda i: any(_octal(x) == want if key == "mode" else
                                         str(x) == str(want) for x in v.attr(i, key)))
    assert v.derived(new, v.at(name)), f"{name} with {key} {want:o}" if key == "mode" else \
        f"{name} with {key} {want} wasDerivedFrom its previous version"
    assert v.generated(new, v.root), f"the {key} change wasGeneratedBy the probe"


def p_chmod(v: View, c: Case) -> None:
    _changed(v, "test.txt", "mode", 0o600)


def p_chown(v: View, c: Case) -> None:
    _changed(v, "sym.txt" if c.name == "lchown" else "test.txt", "owner_gid", GID2)


def p_credentials(v: View, c: Case) -> None:
    key = "gid" if "gid" in c.name else "uid"
    new = both(v.root, lambda i: v.has(i, key, UID) and not v.has(i, key, 0))
    old = both(v.root, lambda i: not v.has(i, key, UID))
    assert v.informed(new, old), \
        f"a new version of the probe with {key} 1000 wasInformedBy one without it"
    assert [i for i in v.run.elements if v.root(i) and v.has(i, key, 0)], \
        f"the probe's versions before the change show {key} 0"


def p_process(v: View, c: Case) -> None:
    if c.name == "thread":
        assert v.used(v.root, v.at("test.txt")), "the thread's read: the probe process used it"
        assert not [i for i in v.d.elements if v.child(i)], "a thread is no new process"
        return
    assert v.informed(v.child, v.root), "the child's activity wasInformedBy the probe's"
    kids = {v.run.process_of(i) for i in v.d.elements if v.child(i)}
    assert len(kids) == 1, f"one child process, not {len(kids)} (the same task twice?)"


def p_exec(v: View, c: Case) -> None:
    execs = [i for i in v.run.elements if v.root(i) and v.has(i, "reason", "execve")]
    assert len(execs) == 2, "two execve versions of the probe: the shell's exec, the action's"
    last = max(execs, key=lambda i: int(v.attr(i, "version")[0]))
    assert v.informed(lambda i: i == last, v.root), \
        "the action's execve version of the probe wasInformedBy the previous one"
    assert v.used(lambda i: i == last, v.path_is("/bin/probe")), "it used the binary /bin/probe"
    assert v.has(last, "exe", "/bin/probe"), f"exe /bin/probe, not {v.attr(last, 'exe')}"
    assert any("exec-target" in str(a) for a in v.attr(last, "argv")), "the argv attribute"


def p_exit(v: View, c: Case) -> None:
    assert v.new_elements(both(v.root, lambda i: v.has(i, "exit_status", 7))), \
        "exit_status 7 on the probe's activity"


def p_signal(v: View, c: Case) -> None:
    got = v.informed(v.child, v.root)
    assert got, "the receiver's (the child's) new version wasInformedBy the sender"
    assert any(v.has(i, "signal", SIGUSR1) for i, _ in got), "signal 10 (SIGUSR1)"


def p_pipe(v: View, c: Case) -> None:
    if c.name == "pipe-io":
        gen = v.generated(v.of_kind("pipe"), v.child)
        assert gen, "the writer (the child) generated the pipe"
        arts = {v.artifact(e) for e, _ in gen}
        assert v.used(v.root, lambda i: v.artifact(i) in arts), "the reader used the same pipe"
        return
    assert v.generated(v.of_kind("pipe"), v.root), "a pipe wasGeneratedBy the probe"


def p_transfer(v: View, c: Case) -> None:
    if c.name == "tee":
        gen = v.generated(v.of_kind("pipe"), v.root)
        assert gen, "the second pipe wasGeneratedBy the probe"
        news = {e for e, _ in gen}
        assert v.derived(lambda i: i in news,
                         both(v.of_kind("pipe"), lambda i: v.artifact(i) not in
                              {v.artifact(e) for e in news})), "derived from the first pipe"
        return
    assert v.generated(v.at("out.txt"), v.root), "out.txt wasGeneratedBy the probe"
    src = v.of_kind("pipe") if c.name == "splice" else v.at("test.txt")
    assert v.derived(v.at("out.txt"), src), "out.txt wasDerivedFrom the source"


def p_mmap(v: View, c: Case) -> None:
    if c.name == "mmap-read":
        assert v.used(v.root, v.at("test.txt")), "the probe used test.txt (mapped readable)"
    else:
        assert v.generated(v.at("test.txt"), v.root), "MAP_SHARED write: test.txt generated"


def p_socket(v: View, c: Case) -> None:
    sock = v.of_kind("socket")
    if c.name == "socket":
        assert v.generated(sock, v.root), "a socket wasGeneratedBy the probe"
    elif c.name == "socketpair":
        assert len({e for e, _ in v.generated(sock, v.root)}) == 2, "two sockets generated"
    elif c.name == "unix-bind":
        assert v.fd_event(v.root, "bind"), "an fd_event 'bind ...' on the probe"
    elif c.name.endswith("-connect"):
        assert v.fd_event(v.child, "connect"), "an fd_event 'connect ...' on the client"
        assert v.fd_event(v.root, "accept"), "an fd_event 'accept ...' on the server"
    else:
        sent = {e for e, _ in v.generated(sock, v.child)}
        got = {e for _, e in v.used(v.root, sock)}
        assert sent, "the sender's (the child's) endpoint wasGeneratedBy it"
        assert got, "the receiver (the probe) used its endpoint"
        assert v.derived(lambda i: i in got, lambda i: i in sent), \
            "the receiving endpoint's version wasDerivedFrom the sending one's"


def p_failed(v: View, c: Case) -> None:
    assert not v.d.relations, f"a failed call made relations:\n{v.d.describe()}"
    # an element of the difference is a new version unless the control has one of the same
    # object and version (then only an attribute differs)
    ctl = {H.norm_label(v.d.control, i) for i in v.d.control.elements}
    new = [i for i in v.d.elements if H.norm_label(v.run, i) not in ctl]
    assert not new, f"a failed call made versions: {new}\n{v.d.describe()}"


PATTERNS: dict[str, Callable[[View, Case], None]] = {
    name.removeprefix("p_"): f for name, f in list(globals().items()) if name.startswith("p_")}


def check(b: H.Boot, case: Case) -> None:
    for m in H.MODES:
        want = case.exit_status if m == "action" else 0
        assert b.rcs.get((case.name, m)) == want, \
            f"probe {case.name} {m}: exit {b.rcs.get((case.name, m))} (console: {b.serial[-800:]})"
        assert b.run(case.name, m).root is not None, f"{case.name} {m}: no probe process found"
    d = H.diff(b, case.name)
    group = GROUP_OF[case.name].name
    if group != "failed":
        assert d, f"{case.name}: the action run's export has nothing its control lacks"
    try:
        PATTERNS[group](View(d), case)
    except AssertionError as e:
        raise AssertionError(f"{case.name} ({group}): {e}\ndifference: {d.describe()}") from None


def _params() -> list:
    out = []
    for c in CASES.values():
        why = XFAIL.get(c.name)
        marks = [pytest.mark.xfail(reason=why, strict=True)] if why else []
        out.append(pytest.param(c, id=c.name, marks=marks))
    return out


@pytest.mark.parametrize("case", _params())
def test_plugin(boot_plugin, case: Case) -> None:
    check(boot_plugin, case)


@pytest.mark.parametrize("case", _params())
def test_gdbstub(boot_gdb, case: Case) -> None:
    check(boot_gdb, case)


def test_every_group_has_a_pattern() -> None:
    assert set(PATTERNS) == {g.name for g in GROUP_OF.values()}


# -- "where did this file come from", by its path alone, with nothing but prov --------------
_READ: dict[tuple[str, str], object] = {}


def _prov_doc(b: H.Boot, fmt: str):
    """The boot's export in ``fmt`` as ``prov.read`` gives it (read once per boot)."""
    import prov

    key = (b.db, fmt)
    if key not in _READ:
        path = Path(b.db).with_suffix(".json" if fmt == "json" else ".provn")
        _READ[key] = prov.read(str(path), format=fmt)
    return _READ[key]


def _where_from(doc, path: str) -> set:
    """The records the entity now carrying ``path`` (its latest version) came from, through
    used / wasGeneratedBy / wasInformedBy / wasDerivedFrom: what a PROV consumer can do."""
    from prov.model import (
        ProvCommunication,
        ProvDerivation,
        ProvEntity,
        ProvGeneration,
        ProvRelation,
        ProvUsage,
    )

    named = [e for e in doc.get_records(ProvEntity) if path in e.get_attribute("provisor:path")]
    assert named, f"no entity carries {path}"
    start = max(named, key=lambda e: next(iter(e.get_attribute("provisor:seq"))))
    up: dict = {}
    for r in doc.get_records(ProvRelation):
        if isinstance(r, ProvDerivation | ProvGeneration | ProvUsage | ProvCommunication):
            up.setdefault(r.args[0], []).append(r.args[1])
    seen, todo = {start.identifier}, [start.identifier]
    while todo:
        for cause in up.get(todo.pop(), ()):
            if cause not in seen:
                seen.add(cause)
                todo.append(cause)
    return seen


@pytest.mark.parametrize("fmt", ["json", "provn"])
@pytest.mark.parametrize("case", [pytest.param(c, id=c.name) for c in CASES.values()])
def test_where_each_file_came_from(boot_plugin, case: Case, fmt: str) -> None:
    """For every file of every case's action run, its current path alone leads a PROV
    consumer (``prov.read`` of the PROV-JSON and PROV-N exports) back to a process of that
    run: the one that made or changed it (the probe, or the child that wrote test.txt)."""
    from prov.model import ProvActivity

    run = boot_plugin.run(case.name, "action")
    paths = {str(p) for _sec, rec in run.elements.values()
             for p in H.values(rec, "provisor:path") if str(p).startswith(run.stage + "/")}
    assert paths, f"{case.name}: no file of the run's stage dir in the export"
    doc = _prov_doc(boot_plugin, fmt)
    acts = {a.identifier: a for a in doc.get_records(ProvActivity)}
    for p in sorted(paths):
        came = _where_from(doc, p)
        procs = {int(next(iter(acts[i].get_attribute("provisor:process"))))
                 for i in came if i in acts}
        assert procs & run.procs, f"{case.name}: {p} leads back to no process of the run"
