"""The kernel profile: symbol addresses and struct member offsets of one guest kernel.

Written as JSON in the shape of Volatility 3's ISF (``metadata``, ``base_types``, ``user_types``,
``enums``, ``symbols``) so that Volatility 3 or LibVMI can read the same members from it, but
limited to what provisor reads. Built from the kernel's vmlinux with pyelftools, fast because it
never walks all compilation units: ``.debug_aranges`` maps a few anchor functions straight to the
CUs that define the types (kernel/fork.c holds task_struct and most of the VFS, fs/namespace.c
holds struct mount). Members inside anonymous structs/unions are flattened into their parent
with accumulated offsets, as a reader wants them.
"""

from __future__ import annotations

import base64
import json
import struct
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from provisor import __version__
from provisor.errors import ProvisorError
from provisor.syscalls import PROVENANCE_SET


class ProfileError(ProvisorError):
    pass


class ProfileLookupError(ProfileError, LookupError):
    """A symbol, type or member the profile lacks (also a LookupError for callers probing)."""


@dataclass(frozen=True)
class Spec:
    """What to put in a profile: types (with members that must exist), symbols, anchor functions."""

    types: dict[str, tuple[str, ...]]
    symbols: tuple[str, ...]
    optional_symbols: tuple[str, ...] = ()
    anchors: tuple[str, ...] = ()
    # types a kernel may lack (a config option off: CONFIG_UNIX); left out of the profile then
    optional_types: dict[str, tuple[str, ...]] = field(default_factory=dict)


KERNEL_SPEC = Spec(
    types={
        "task_struct": ("pid", "tgid", "comm", "real_parent", "parent", "cred", "start_time",
                        "fs", "files", "mm", "group_leader", "thread_pid", "flags"),
        "cred": ("uid", "gid", "suid", "sgid", "euid", "egid", "fsuid", "fsgid"),
        "fs_struct": ("pwd", "root"),
        "path": ("mnt", "dentry"),
        "dentry": ("d_name", "d_parent", "d_inode", "d_sb"),
        "qstr": ("name", "len"),
        "inode": ("i_ino", "i_sb", "i_mode"),
        "super_block": ("s_dev", "s_root"),
        "files_struct": ("fdt",),
        "fdtable": ("max_fds", "fd"),
        "file": ("f_path", "f_inode", "f_flags", "f_pos", "private_data"),
        "mount": ("mnt_parent", "mnt_mountpoint", "mnt", "mnt_id"),
        "vfsmount": ("mnt_root", "mnt_sb"),
        "mm_struct": ("pgd", "exe_file"),
        "pt_regs": ("di", "si", "dx", "r10", "r8", "r9", "ax", "orig_ax", "ip", "sp", "cs",
                    "flags", "bx", "cx", "bp", "r11", "r12", "r13", "r14", "r15", "ss"),
        "list_head": ("next", "prev"),
        "socket": ("sk", "type"),
        "sock": ("__sk_common", "sk_type"),
        "sock_common": ("skc_family", "skc_daddr", "skc_rcv_saddr", "skc_dport", "skc_num"),
    },
    symbols=("entry_SYSCALL_64", "do_syscall_64", "current_task", "__per_cpu_offset",
             "init_task", "linux_banner", "init_mm", "_text")
    + tuple(sorted(f"__x64_sys_{n}" for n in PROVENANCE_SET)),
    optional_symbols=("syscall_exit_to_user_mode", "entry_SYSCALL_64_after_hwframe",
                      "x64_sys_call", "sys_call_table", "init_top_pgt", "page_offset_base",
                      "phys_base", "_stext", "_etext", "__start___ex_table", "swapper_pg_dir",
                      "init_fs", "init_files", "pcpu_hot", "kstack_offset",
                      "cpu_current_top_of_stack", "cpu_tss_rw", "kernel_init"),
    anchors=("copy_process", "do_syscall_64", "path_mount", "do_mount", "copy_mnt_ns",
             "do_sys_openat2", "__d_alloc", "__sys_socket", "unix_getname"),
    optional_types={"unix_sock": ("addr", "peer"), "unix_address": ("len", "name"),
                    "sockaddr_un": ("sun_path",)},
)

_ISF_FORMAT = "6.2.0"
# Bumped whenever the builder's output changes, so cached profiles get rebuilt (hv.guest.kit)
BUILDER_VERSION = 4
# A synthetic symbol: where every __x64_sys_* returns in do_syscall_64 (see _return_site)
SYSCALL_RETURN = "__provisor_syscall_return"
_DEPTH = 3  # how deep embedded struct types of needed members are pulled in (cred.uid -> kuid_t)


# ----------------------------------------------------------------------------------- ELF input

def _open_elf(path: Path):
    from elftools.common.exceptions import ELFError
    from elftools.elf.elffile import ELFFile

    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise ProfileError(f"{path}: no such file") from None
    except OSError as e:
        raise ProfileError(f"{path}: {e.strerror}") from None
    try:
        return ELFFile(f)
    except ELFError:
        f.close()
        raise ProfileError(f"{path}: not an ELF file (want the vmlinux with DWARF, not a vmlinuz)") from None


def _read_symtab(elf) -> dict[str, int]:
    """Every named symbol -> address; parsed straight from the raw table (pyelftools' per-symbol
    objects are slow on a kernel's 150k symbols)."""
    sec = elf.get_section_by_name(".symtab")
    if sec is None:
        return {}
    strtab = elf.get_section(sec["sh_link"]).data()
    data = sec.data()
    out: dict[str, int] = {}
    if elf.elfclass == 64 and elf.little_endian:
        entries = ((n, v, info) for n, info, _o, _s, v, _z in struct.iter_unpack("<IBBHQQ", data))
    else:
        entries = ((s["st_name"], s["st_value"], 0) for s in sec.iter_symbols())
    for name_off, value, info in entries:
        if not name_off or (info & 0xF) == 4:  # unnamed or STT_FILE
            continue
        name = strtab[name_off:strtab.index(b"\0", name_off)].decode("utf-8", "replace")
        out.setdefault(name, value)
    return out


def _read_system_map(path: Path) -> dict[str, int]:
    out: dict[str, int] = {}
    try:
        text = path.read_text(errors="replace")
    except OSError as e:
        raise ProfileError(f"{path}: {e.strerror}") from None
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 3:
            try:
                out.setdefault(parts[2], int(parts[0], 16))
            except ValueError:
                continue
    if len(out) < 100 and "linux_banner" not in out:
        raise ProfileError(f"{path}: not a usable System.map (the one in the non-dbg package is a stub)")
    return out


def _read_at(elf, addr: int, n: int) -> bytes | None:
    """Up to ``n`` bytes of the loaded image at virtual ``addr`` (None outside file-backed sections)."""
    for sec in elf.iter_sections():
        start, size = sec["sh_addr"], sec["sh_size"]
        if start and start <= addr < start + size and sec["sh_type"] != "SHT_NOBITS":
            elf.stream.seek(sec["sh_offset"] + addr - start)
            return elf.stream.read(min(n, start + size - addr))
    return None


def _read_cstring_at(elf, addr: int, limit: int = 512) -> bytes | None:
    raw = _read_at(elf, addr, limit)
    return None if raw is None else raw.split(b"\0", 1)[0]


def _return_site(elf, syms: dict[str, int], caller: str, callee: str, span: int = 1024) -> int | None:
    """The address right after ``call callee`` (E8 rel32) in ``caller``. On 6.1 kernels with the
    x64_sys_call switch, every __x64_sys_* is tail-called from there, so this one address is
    where all of them return (do_syscall_64 + 0x55 on 6.1.0-47)."""
    if caller not in syms or callee not in syms:
        return None
    base, target = syms[caller], syms[callee]
    code = _read_at(elf, base, span) or b""
    for i in range(len(code) - 4):
        if code[i] == 0xE8:
            rel = struct.unpack_from("<i", code, i + 1)[0]
            if base + i + 5 + rel == target:
                return base + i + 5
    return None


# --------------------------------------------------------------------------------- DWARF types

def _attr(die, name: str, default: Any = None) -> Any:
    a = die.attributes.get(name)
    return default if a is None else a.value


def _name(die) -> str | None:
    v = _attr(die, "DW_AT_name")
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else v


def _member_offset(die) -> int:
    a = die.attributes.get("DW_AT_data_member_location")
    if a is None:
        return 0
    if isinstance(a.value, int):
        return a.value
    # an expression: gcc only ever emits DW_OP_plus_uconst <n> here
    expr = list(a.value)
    if expr and expr[0] == 0x23:
        val, shift = 0, 0
        for b in expr[1:]:
            val |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                break
        return val
    raise ProfileError(f"unsupported member location expression {expr!r}")


_QUALIFIERS = {"DW_TAG_typedef", "DW_TAG_const_type", "DW_TAG_volatile_type",
               "DW_TAG_restrict_type", "DW_TAG_atomic_type", "DW_TAG_immutable_type"}
_AGGREGATES = {"DW_TAG_structure_type": "struct", "DW_TAG_union_type": "union",
               "DW_TAG_class_type": "struct"}


class _Builder:
    """Turns DWARF DIEs into ISF type descriptors, collecting the definitions they need."""

    def __init__(self, dwarf) -> None:
        self.dwarf = dwarf
        self.base_types: dict[str, dict] = {
            "pointer": {"kind": "int", "size": 8, "signed": False, "endian": "little"},
            "void": {"kind": "void", "size": 0, "signed": False, "endian": "little"},
        }
        self.user_types: dict[str, dict] = {}
        self.enums: dict[str, dict] = {}
        self._anon_names: dict[int, str] = {}

    # -- naming
    def agg_name(self, die, typedef: str | None = None) -> str:
        n = _name(die)
        if n:
            return n
        if die.offset not in self._anon_names:
            self._anon_names[die.offset] = typedef or f"unnamed_{die.offset:x}"
        return self._anon_names[die.offset]

    @staticmethod
    def target(die):
        return die.get_DIE_from_attribute("DW_AT_type") if "DW_AT_type" in die.attributes else None

    def strip(self, die):
        """Follow typedefs and qualifiers; remember a typedef name for an anonymous aggregate."""
        td = None
        while die is not None and die.tag in _QUALIFIERS:
            if die.tag == "DW_TAG_typedef" and td is None:
                td = _name(die)
            die = self.target(die)
        return die, td

    # -- descriptors
    def ref(self, die, embedded_want: int = 0) -> dict:
        die, td = self.strip(die)
        if die is None:
            return {"kind": "base", "name": "void"}
        tag = die.tag
        if tag == "DW_TAG_base_type":
            name = _name(die) or "int"
            enc = _attr(die, "DW_AT_encoding", 5)
            kind = {2: "bool", 4: "float", 6: "char", 8: "char"}.get(enc, "int")
            self.base_types.setdefault(name, {"kind": kind, "size": _attr(die, "DW_AT_byte_size", 0),
                                              "signed": enc in (5, 6, 0xD), "endian": "little"})
            return {"kind": "base", "name": name}
        if tag in ("DW_TAG_pointer_type", "DW_TAG_reference_type"):
            return {"kind": "pointer", "subtype": self.ref(self.target(die))}
        if tag == "DW_TAG_array_type":
            return self._array(die, embedded_want)
        if tag in _AGGREGATES:
            name = self.agg_name(die, td)
            if embedded_want and name not in self.user_types:
                self.define(die, name, (), embedded_want - 1)
            return {"kind": _AGGREGATES[tag], "name": name}
        if tag == "DW_TAG_enumeration_type":
            name = _name(die) or td or f"unnamed_{die.offset:x}"
            self._enum(die, name)
            return {"kind": "enum", "name": name}
        if tag == "DW_TAG_subroutine_type":
            return {"kind": "function"}
        return {"kind": "base", "name": "void"}

    def _array(self, die, embedded_want: int) -> dict:
        counts = []
        for sub in die.iter_children():
            if sub.tag != "DW_TAG_subrange_type":
                continue
            if "DW_AT_count" in sub.attributes:
                counts.append(_attr(sub, "DW_AT_count"))
            elif "DW_AT_upper_bound" in sub.attributes and isinstance(_attr(sub, "DW_AT_upper_bound"), int):
                counts.append(_attr(sub, "DW_AT_upper_bound") + 1)
            else:
                counts.append(0)  # flexible array member
        desc = self.ref(self.target(die), embedded_want)
        for c in reversed(counts or [0]):
            desc = {"kind": "array", "count": c, "subtype": desc}
        return desc

    def _enum(self, die, name: str) -> None:
        if name in self.enums:
            return
        consts = {(_name(c) or ""): _attr(c, "DW_AT_const_value", 0)
                  for c in die.iter_children() if c.tag == "DW_TAG_enumerator"}
        size = _attr(die, "DW_AT_byte_size", 4)
        base = {1: "unsigned char", 2: "short unsigned int", 4: "unsigned int", 8: "long unsigned int"}
        bname = base.get(size, "unsigned int")
        self.base_types.setdefault(bname, {"kind": "int", "size": size, "signed": False, "endian": "little"})
        self.enums[name] = {"size": size, "base": bname, "constants": consts}

    def _fields(self, die, base: int, out: dict, want: set[str], depth: int) -> None:
        for m in die.iter_children():
            if m.tag != "DW_TAG_member":
                continue
            off = base + _member_offset(m)
            name = _name(m)
            if name is None:  # anonymous struct/union: its members belong to the parent
                inner, _ = self.strip(self.target(m))
                if inner is not None and inner.tag in _AGGREGATES:
                    self._fields(inner, off, out, want, depth)
                continue
            deep = depth if (name in want or not want) and depth > 0 else 0
            desc = self.ref(self.target(m), deep)
            if "DW_AT_bit_size" in m.attributes:
                bits = _attr(m, "DW_AT_bit_size")
                if "DW_AT_data_bit_offset" in m.attributes:
                    bitpos = _attr(m, "DW_AT_data_bit_offset")
                    tsize = (self.strip(self.target(m))[0] or m).attributes.get("DW_AT_byte_size")
                    unit = (tsize.value if tsize else 4) * 8
                    off = base + (bitpos // unit) * (unit // 8)
                    bitpos %= unit
                else:  # DWARF 2/3 big-endian-style numbering
                    unit = _attr(m, "DW_AT_byte_size", 4) * 8
                    bitpos = unit - _attr(m, "DW_AT_bit_offset", 0) - bits
                desc = {"kind": "bitfield", "bit_position": bitpos, "bit_length": bits, "type": desc}
            out.setdefault(name, {"offset": off, "type": desc})

    def define(self, die, name: str, required: Iterable[str], depth: int = _DEPTH) -> None:
        required = tuple(required)
        self.user_types[name] = {}  # placeholder: breaks cycles
        fields: dict[str, dict] = {}
        self._fields(die, 0, fields, set(required), depth)
        missing = [m for m in required if m not in fields]
        if missing:
            raise ProfileError(f"struct {name} has no member {', '.join(missing)} in this kernel's DWARF")
        self.user_types[name] = {"kind": _AGGREGATES[die.tag], "size": _attr(die, "DW_AT_byte_size", 0),
                                 "fields": fields}


def _cu_index(cu) -> dict[str, Any]:
    """Top-level complete struct/union definitions of one CU by name (typedef names too)."""
    idx: dict[str, Any] = {}
    for die in cu.get_top_DIE().iter_children():
        if die.tag in _AGGREGATES and not _attr(die, "DW_AT_declaration", False):
            n = _name(die)
            if n and _attr(die, "DW_AT_byte_size") is not None:
                idx.setdefault(n, die)
        elif die.tag == "DW_TAG_typedef":
            n = _name(die)
            t = die.get_DIE_from_attribute("DW_AT_type") if "DW_AT_type" in die.attributes else None
            if n and t is not None and t.tag in _AGGREGATES and not _attr(t, "DW_AT_declaration", False):
                idx.setdefault(n, t)
    return idx


# ------------------------------------------------------------------------------------ building

def build(vmlinux: str | Path, system_map: str | Path | None = None, spec: Spec = KERNEL_SPEC,
          log=None) -> dict:
    """Build the ISF-shaped profile of ``vmlinux`` (ELF with DWARF) for ``spec``."""
    say = log or (lambda _m: None)
    path = Path(vmlinux)
    t0 = time.monotonic()
    elf = _open_elf(path)
    if not elf.has_dwarf_info() or elf.get_section_by_name(".debug_info") is None:
        raise ProfileError(f"{path}: no DWARF debug info (want the vmlinux from the -dbg package)")

    syms = _read_symtab(elf)
    if system_map is not None:
        smap = _read_system_map(Path(system_map))
        if "linux_banner" in syms and smap.get("linux_banner", syms["linux_banner"]) != syms["linux_banner"]:
            raise ProfileError(f"{system_map}: does not match {path} (linux_banner differs)")
        for k, v in smap.items():
            syms.setdefault(k, v)
    missing = [s for s in spec.symbols if s not in syms]
    if missing:
        raise ProfileError(f"{path}: symbol(s) not found: {', '.join(missing[:5])}")
    say(f"symbols: {len(syms)} in {time.monotonic() - t0:.1f}s")

    t1 = time.monotonic()
    dwarf = elf.get_dwarf_info(relocate_dwarf_sections=False)
    aranges = dwarf.get_aranges()
    cu_offsets: list[int] = []
    for anchor in spec.anchors:
        addr = syms.get(anchor)
        if addr is None or aranges is None:
            continue
        try:
            off = aranges.cu_offset_at_addr(addr)
        except (ValueError, KeyError):
            continue
        if off is not None and off not in cu_offsets:
            cu_offsets.append(off)
    if not cu_offsets:
        raise ProfileError(f"{path}: none of the anchor functions ({', '.join(spec.anchors)}) "
                           "is covered by .debug_aranges")

    b = _Builder(dwarf)
    todo = {**spec.types, **spec.optional_types}
    searched: list[str] = []
    for off in cu_offsets:
        if not todo:
            break
        cu = dwarf.get_CU_at(off)
        searched.append(_name(cu.get_top_DIE()) or hex(off))
        idx = _cu_index(cu)
        for tname in list(todo):
            die = idx.get(tname)
            if die is not None and tname not in b.user_types:
                b.define(die, tname, todo.pop(tname))
            elif tname in b.user_types and b.user_types[tname]:
                todo.pop(tname)
    todo = {t: m for t, m in todo.items() if t not in spec.optional_types}
    if todo:
        raise ProfileError(f"type(s) {', '.join(sorted(todo))} not found in CU(s) {', '.join(searched)}")
    say(f"types: {len(b.user_types)} from {len(searched)} CU(s) in {time.monotonic() - t1:.1f}s")

    wanted = list(spec.symbols) + [s for s in spec.optional_symbols if s in syms]
    symbols: dict[str, dict] = {s: {"address": syms[s]} for s in wanted}
    ret = _return_site(elf, syms, "do_syscall_64", "x64_sys_call")
    if ret is not None:
        symbols[SYSCALL_RETURN] = {"address": ret}
    banner = b""
    if "linux_banner" in syms:
        banner = _read_cstring_at(elf, syms["linux_banner"]) or b""
        symbols["linux_banner"]["constant_data"] = base64.b64encode(banner + b"\0").decode()
    text = banner.decode("utf-8", "replace")
    release = text.split()[2] if text.startswith("Linux version ") and len(text.split()) > 2 else ""

    elf.stream.close()
    return {
        "metadata": {
            "format": _ISF_FORMAT,
            "producer": {"name": "provisor", "version": __version__, "builder": BUILDER_VERSION,
                         "datetime": datetime.now(UTC).isoformat(timespec="seconds")},
            "linux": {"release": release, "banner": text,
                      "symbols": [{"kind": "symtab", "name": path.name}],
                      "types": [{"kind": "dwarf", "name": path.name, "cus": searched}]},
        },
        "base_types": b.base_types,
        "user_types": {k: v for k, v in b.user_types.items() if v},
        "enums": b.enums,
        "symbols": symbols,
    }


def is_current(path: str | Path) -> bool:
    """Whether the profile at ``path`` exists and was written by this builder version."""
    try:
        meta = json.loads(Path(path).read_text())["metadata"]
        return meta["producer"].get("builder") == BUILDER_VERSION
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def write(profile: dict, out: str | Path) -> Path:
    """Write atomically through a private temporary file (0600, O_EXCL|O_NOFOLLOW)."""
    from provisor import files

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with files.output(str(out)) as f:
        f.write(json.dumps(profile, indent=1, sort_keys=True))
    return out


# ------------------------------------------------------------------------------------- loading

@dataclass
class Profile:
    """Read access to a profile: ``p.symbol("init_task")``, ``p.offset("task_struct.comm")``."""

    data: dict
    path: Path | None = None
    _cache: dict = field(default_factory=dict, repr=False)

    @classmethod
    def load(cls, path: str | Path) -> Profile:
        p = Path(path)
        try:
            data = json.loads(p.read_text())
        except FileNotFoundError:
            raise ProfileError(f"{p}: no such profile (run: provisor guest fetch)") from None
        except (OSError, ValueError) as e:
            raise ProfileError(f"{p}: not a readable profile ({e})") from None
        if not isinstance(data, dict) or "user_types" not in data or "symbols" not in data:
            raise ProfileError(f"{p}: not a provisor/ISF profile")
        return cls(data, p)

    @property
    def release(self) -> str:
        return self.data["metadata"].get("linux", {}).get("release", "")

    @property
    def banner(self) -> str:
        return self.data["metadata"].get("linux", {}).get("banner", "")

    @property
    def banner_bytes(self) -> bytes:
        return self.banner.encode()

    def has_symbol(self, name: str) -> bool:
        return name in self.data["symbols"]

    def symbol(self, name: str) -> int:
        try:
            return int(self.data["symbols"][name]["address"])
        except KeyError:
            raise ProfileLookupError(f"symbol {name} not in profile {self.path or ''}".rstrip()) from None

    @property
    def syscall_return(self) -> int | None:
        """Where the traced __x64_sys_* functions return to (one site), if the builder found it."""
        return self.symbol(SYSCALL_RETURN) if self.has_symbol(SYSCALL_RETURN) else None

    def symbols(self, prefix: str = "") -> dict[str, int]:
        return {k: int(v["address"]) for k, v in self.data["symbols"].items() if k.startswith(prefix)}

    def _type(self, name: str) -> dict:
        try:
            return self.data["user_types"][name]
        except KeyError:
            raise ProfileLookupError(f"type {name} not in profile {self.path or ''}".rstrip()) from None

    def has_member(self, type_name: str, member: str) -> bool:
        return member in self._type(type_name)["fields"]

    def member(self, type_name: str, member: str) -> dict:
        """The ISF field ``{offset, type}`` of ``type_name.member`` (one level)."""
        fields = self._type(type_name)["fields"]
        if member not in fields:
            raise ProfileLookupError(f"struct {type_name} has no member {member} in the profile")
        return fields[member]

    def offset(self, path: str, member: str | None = None) -> int:
        """Offset of a member, following embedded structs: ``offset("cred.uid.val")``,
        ``offset("task_struct", "comm")``. Array indices are not supported (compute them)."""
        key = path if member is None else f"{path}.{member}"
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        parts = key.split(".")
        if len(parts) < 2:
            raise ProfileError(f"offset needs type.member, got {key!r}")
        tname, total = parts[0], 0
        for i, m in enumerate(parts[1:]):
            f = self.member(tname, m)
            total += int(f["offset"])
            if i < len(parts) - 2:
                t = f["type"]
                if t.get("kind") not in ("struct", "union"):
                    raise ProfileError(f"{tname}.{m} is not an embedded struct (it is {t.get('kind')})")
                tname = t["name"]
        self._cache[key] = total
        return total

    def size(self, type_name: str) -> int:
        if type_name in self.data["user_types"]:
            return int(self.data["user_types"][type_name]["size"])
        if type_name in self.data["base_types"]:
            return int(self.data["base_types"][type_name]["size"])
        raise ProfileLookupError(f"type {type_name} not in profile {self.path or ''}".rstrip())

    def member_size(self, type_name: str, member: str) -> int:
        """Byte size of a member (base, pointer, array or struct)."""
        return self._desc_size(self.member(type_name, member)["type"])

    def _desc_size(self, t: dict) -> int:
        k = t.get("kind")
        if k == "pointer":
            return int(self.data["base_types"]["pointer"]["size"])
        if k == "array":
            return int(t["count"]) * self._desc_size(t["subtype"])
        if k in ("struct", "union", "base"):
            return self.size(t["name"])
        if k == "enum":
            return int(self.data["enums"][t["name"]]["size"])
        if k == "bitfield":
            return self._desc_size(t["type"])
        raise ProfileError(f"no size for a {k} member")


# ----------------------------------------------------------------------------------------- CLI

@click.group("profile")
def profile_group() -> None:
    """Kernel profiles: symbols and struct offsets of the guest kernel (Volatility 3 ISF shape)."""


@profile_group.command("build")
@click.option("--vmlinux", required=True, type=click.Path(dir_okay=False),
              help="The guest kernel's ELF with DWARF (from the -dbg package).")
@click.option("--system-map", type=click.Path(dir_okay=False), help="Its System.map (optional).")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Profile JSON to write.")
def profile_build_cmd(vmlinux: str, system_map: str | None, output: str) -> None:
    """Build the kernel profile of VMLINUX.

    \b
    Example:
      provisor profile build --vmlinux vmlinux-6.1.0-47-cloud-amd64 -o profile.json
    """
    t0 = time.monotonic()
    prof = build(vmlinux, system_map, log=lambda m: click.echo(f"profile: {m}", err=True))
    write(prof, output)
    meta = prof["metadata"]["linux"]
    click.echo(f"{output}: {meta['release'] or 'unknown release'}, {len(prof['user_types'])} types, "
               f"{len(prof['symbols'])} symbols, {time.monotonic() - t0:.1f}s")


# ------------------------------------------------------------------- the plugin's offsets file

# What the native plugin reads (hv/plugin/offsets.c parses exactly these keys; a test compares).
PLUGIN_MEMBERS = (
    "task_struct.pid", "task_struct.tgid", "task_struct.comm", "task_struct.real_parent",
    "task_struct.cred", "task_struct.start_time", "task_struct.fs", "task_struct.files",
    "task_struct.mm", "cred.uid", "fs_struct.pwd", "fs_struct.root", "path.mnt", "path.dentry",
    "dentry.d_name", "dentry.d_parent", "dentry.d_inode", "qstr.name", "qstr.len",
    "inode.i_ino", "inode.i_sb", "super_block.s_dev", "files_struct.fdt", "fdtable.max_fds",
    "fdtable.fd", "file.f_path", "file.f_inode", "mount.mnt", "mount.mnt_parent",
    "mount.mnt_mountpoint", "mount.mnt_id", "vfsmount.mnt_root",
    "cred.gid", "cred.suid", "cred.sgid", "cred.euid", "cred.egid", "cred.fsuid", "cred.fsgid",
    "inode.i_mode", "file.private_data", "socket.sk", "sock.__sk_common", "sock.sk_type",
    "sock_common.skc_family", "sock_common.skc_daddr", "sock_common.skc_rcv_saddr",
    "sock_common.skc_dport", "sock_common.skc_num",
)
# Members a kernel may lack (CONFIG_IPV6, CONFIG_UNIX off): absent from the file, the plugin
# does without (hv/linux.py: SOCK_OPTIONAL)
PLUGIN_OPTIONAL = ("mm_struct.exe_file", "sock_common.skc_v6_daddr",
                   "sock_common.skc_v6_rcv_saddr", "unix_sock.addr", "unix_sock.peer",
                   "unix_address.len", "unix_address.name", "sockaddr_un.sun_path")
OFFSETS_VERSION = 1


def plugin_offsets(profile: Profile) -> str:
    """The compact offsets file of the native plugin (docs/HYPERVISORS.md): the member offsets
    it reads, the per-cpu offset of ``current_task``, and ``linux_banner``'s link address and
    bytes (the plugin finds the KASLR slide, and checks the profile, by finding them)."""
    banner = profile.banner_bytes
    if not banner:
        raise ProfileError(f"{profile.path or 'profile'}: no kernel banner in the profile")
    if len(banner) > 512:
        banner = banner[:512]
    lines = [f"provisor-offsets {OFFSETS_VERSION}",
             f"# {profile.release or 'unknown release'}; written by provisor {__version__}",
             f"current_task {profile.symbol('current_task')}",
             f"linux_banner {profile.symbol('linux_banner')}",
             f"banner {banner.hex()}"]
    for m in PLUGIN_MEMBERS:
        lines.append(f"{m} {profile.offset(m)}")
    for m in PLUGIN_OPTIONAL:
        try:
            lines.append(f"{m} {profile.offset(m)}")
        except ProfileLookupError:
            pass
    return "\n".join(lines) + "\n"
