"""``provisor ring ...``: create, inspect, dump and append to ring images."""

from __future__ import annotations

import json
import sys
from collections import Counter

import click

from pmem import layout as L
from pmem.ring import Consumer, Producer, RingError, create
from provisor.config import parse_size


@click.group("ring")
def ring() -> None:
    """Create and inspect persistent-memory rings.

    \b
    Example:
      provisor ring create /dev/shm/p.ring --size 64M
      echo hello | provisor ring append /dev/shm/p.ring
      provisor ring info /dev/shm/p.ring
    """


@ring.command("create")
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--size", default=None, help="Total image size, e.g. 64M (default: config).")
@click.option("--ring-id", default=0, show_default=True, type=click.IntRange(0, (1 << 32) - 1),
              help="Ring id (one ring per vCPU).")
@click.option("--overwrite", is_flag=True,
              help="Re-create an existing ring, discarding its records (never while a "
              "producer or consumer has it open).")
@click.pass_obj
def ring_create(cfg: dict, path: str, size: str | None, ring_id: int, overwrite: bool) -> None:
    """Create a ring image at PATH (an existing one only with --overwrite).

    Example: provisor ring create /dev/shm/p.ring --size 64M
    """
    hdr = create(path, parse_size(size or cfg["ring"]["size"]), ring_id=ring_id,
                 overwrite=overwrite)
    click.echo(f"created {path}: ring {hdr.uuid_str}, {hdr.data_size} data bytes")


def ring_summary(path: str) -> dict:
    """Header, mode and a full scan of the valid chain: what ``ring info`` shows."""
    with Consumer.open(path, readonly=True) as c:
        hdr = c.header
        counts: Counter[str] = Counter()
        first = last = None
        nbytes = 0
        while batch := c.read(65536):
            for r in batch:
                counts[_type_name(r.type)] += 1
                first = r.seq if first is None else first
                last = r.seq
                nbytes += L.padded(len(r.payload))
        end = c.last_end
        prod = L.read_producer_state(c.buf)
        return {
            "path": path,
            "uuid": hdr.uuid_str,
            "format_version": hdr.version,
            "ring_id": hdr.ring_id,
            "mode": _live_mode(path),
            "data_size": hdr.data_size,
            "generation": hdr.generation,
            "checkpoint_seq": hdr.checkpoint_seq,
            "checkpoint_offset": hdr.checkpoint_off,
            "records": dict(counts),
            "first_seq": first,
            "last_seq": last,
            "fill": nbytes / hdr.data_size,
            "lost_total": prod.lost_total,
            "lost_reported": prod.lost_reported,
            "chain_end": {"reason": end.reason, "offset": end.offset, "expected_seq": end.seq}
            if end else None,
        }


def _live_mode(path: str) -> str:
    from pmem.region import Region

    try:
        r = Region(path)
    except Exception:
        return "read-only"
    try:
        return r.mode.value
    finally:
        r.close()


def _describe(mode: str) -> str:
    from pmem.region import Mode

    try:
        return Mode(mode).describe()
    except ValueError:
        return mode


def _type_name(t: int) -> str:
    try:
        return L.RecType(t).name
    except ValueError:
        return f"type{t}"


@ring.command("info")
@click.argument("path", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def ring_info(path: str, as_json: bool) -> None:
    """Header, mode, checkpoint and a full scan of PATH.

    Example: provisor ring info /dev/shm/p.ring --json
    """
    info = ring_summary(path)
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    end = info["chain_end"]
    recs = ", ".join(f"{k}={v}" for k, v in sorted(info["records"].items())) or "none"
    click.echo(
        f"ring {info['uuid']} (format {info['format_version']}, id {info['ring_id']})\n"
        f"mode        {_describe(info['mode'])}\n"
        f"data area   {info['data_size']} bytes, {info['fill']:.1%} unreleased\n"
        f"checkpoint  seq {info['checkpoint_seq']} at offset {info['checkpoint_offset']}\n"
        f"records     {recs}; seq {info['first_seq']}..{info['last_seq']}\n"
        f"lost        {info['lost_total']} (reported {info['lost_reported']})\n"
        f"chain end   {end['reason']} at offset {end['offset']} (expected seq "
        f"{end['expected_seq']})")


@ring.command("dump")
@click.argument("path", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.option("--from", "from_seq", type=click.IntRange(min=0), default=None,
              help="First sequence number.")
def ring_dump(path: str, as_json: bool, from_seq: int | None) -> None:
    """Print the valid records of PATH after its checkpoint.

    Example: provisor ring dump /dev/shm/p.ring --from 100 --json
    """
    from provisor.events import EventDecodeError, decode
    from provisor.guesttext import escape

    with Consumer.open(path, readonly=True) as c:
        while batch := c.read(4096):
            for r in batch:
                if from_seq is not None and r.seq < from_seq:
                    continue
                kind = _type_name(r.type)
                if r.type == L.RecType.NOTE:
                    body: object = escape(r.payload)  # no raw control bytes on the terminal
                elif r.type == L.RecType.LOSS:
                    body = {"lost": int.from_bytes(r.payload[:8], "little"),
                            "lost_total": int.from_bytes(r.payload[8:16], "little")}
                elif r.type == L.RecType.EVENT:
                    try:
                        ev = decode(r.payload, r.seq)
                        body = {"syscall": ev.name, "phase": "exit" if ev.phase else "entry",
                                "tgid": ev.tgid, "pid": ev.pid, "comm": ev.comm,
                                "paths": ev.paths, "ret": ev.ret}
                    except EventDecodeError as e:
                        body = {"error": str(e)}
                else:
                    body = r.payload.hex()
                if as_json:
                    click.echo(json.dumps({"seq": r.seq, "type": kind, "offset": r.offset,
                                           "payload": body}))
                else:
                    click.echo(f"{r.seq}\t{kind}\t{body}")


@ring.command("append")
@click.argument("path", type=click.Path())
@click.option("--policy", type=click.Choice(["block", "drop", "fail"]), default=None,
              help="Ring-full policy (default: config).")
@click.pass_obj
def ring_append(cfg: dict, path: str, policy: str | None) -> None:
    """Append each stdin line as a NOTE record; print each acknowledged sequence number.

    A line's bytes are the payload exactly as read (without the newline), whatever their
    encoding.

    Example: printf 'a\\nb\\n' | provisor ring append /dev/shm/p.ring
    """
    with Producer.open(path, policy or cfg["ring"]["full_policy"]) as prod:
        out = sys.stdout
        for line in sys.stdin.buffer:
            seq = prod.append(L.RecType.NOTE, line.removesuffix(b"\n"))
            out.write(f"{seq}\n" if seq is not None else "dropped\n")
            out.flush()


COMMANDS = [ring]
__all__ = ["COMMANDS", "RingError", "ring_summary"]
