"""Configuration: embedded defaults (config/provisor.toml), overlaid by a user file.

``SCHEMA`` declares every key once, with its type and range; :func:`load` checks the merged
configuration against it, so a bad value or a misspelt key is one line naming the file and the
key (``c.toml: daemon.batch_min must be an integer >= 1, got 0``) instead of a crash, a
silently ignored setting, or a daemon that spins applying nothing.
"""

from __future__ import annotations

import math
import os
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any

from provisor.errors import ProvisorError


class ConfigError(ProvisorError):
    pass


def parse_size(text: str | int) -> int:
    """'64M' -> 67108864; plain integers are bytes. Refuses zero, negative, NaN and infinite
    sizes."""
    if isinstance(text, bool) or not isinstance(text, str | int):
        raise ConfigError(f"not a size: {text!r} (try 64M)")
    if isinstance(text, int):
        n = text
    else:
        t = text.strip().upper().removesuffix("B").removesuffix("I")
        mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
        try:
            if t and t[-1] in mult:
                f = float(t[:-1]) * mult[t[-1]]
                if not math.isfinite(f):
                    raise ValueError
                n = int(f)
            else:
                n = int(t)
        except (ValueError, OverflowError):
            raise ConfigError(f"not a size: {text!r} (try 64M)") from None
    if n <= 0:
        raise ConfigError(f"not a size: {text!r} (must be positive; try 64M)")
    return n


# -- the schema ------------------------------------------------------------------------------
Check = Callable[[Any], str | None]  # the value -> what is wrong with it, or None


def _integer(lo: int) -> Check:
    def check(v: Any) -> str | None:
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            return f"must be an integer >= {lo}"
        return None
    return check


def _number(lo: float, hi: float | None = None) -> Check:
    """A finite number above ``lo`` (and at most ``hi``)."""
    rng = f"a finite number > {lo:g}" if hi is None else f"a number in ({lo:g}, {hi:g}]"

    def check(v: Any) -> str | None:
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) \
                or v <= lo or (hi is not None and v > hi):
            return f"must be {rng}"
        return None
    return check


def _text(v: Any) -> str | None:
    if not isinstance(v, str) or not v.strip():
        return "must be a non-empty string"
    if "\0" in v:
        return "must not contain a NUL character"
    return None


def _group(v: Any) -> str | None:
    if not isinstance(v, str) or "\0" in v or v != v.strip():
        return 'must be a group name, or "" for private files'
    return None


def _boolean(v: Any) -> str | None:
    return None if isinstance(v, bool) else "must be true or false"


def _choice(*names: str) -> Check:
    def check(v: Any) -> str | None:
        return None if isinstance(v, str) and v in names else f"must be one of {', '.join(names)}"
    return check


def _size(v: Any) -> str | None:
    try:
        parse_size(v)
    except ConfigError:
        return "must be a positive size such as 64M or a number of bytes"
    return None


@dataclass(frozen=True)
class Key:
    check: Check
    required: bool = True  # in defaults.toml; optional keys have built-in fallbacks


SCHEMA: dict[str, dict[str, Key]] = {
    "ring": {
        "path": Key(_text),
        "size": Key(_size),
        "full_policy": Key(_choice("block", "drop", "fail")),
    },
    "daemon": {
        "db": Key(_text),
        "batch_min": Key(_integer(1)),
        "batch_max": Key(_integer(1)),  # and >= batch_min (checked below)
        "status_interval": Key(_number(0)),
        "fill_warn": Key(_number(0, 1)),
        "record_envp": Key(_boolean),
    },
    "guest": {
        "cache": Key(_text),
        "debian_abi": Key(_text),
        "kvm": Key(_choice("auto", "on", "off")),
        "busybox": Key(_text, required=False),  # hv/guest.py: /bin/busybox
        "init": Key(_text, required=False),  # hv/guest.py: config/guest/init.sh
    },
    "files": {
        "group": Key(_group),  # provisor/files.py: "" keeps created files private (0600)
    },
}


def _show(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, dict):
        return "a table"
    if isinstance(v, list):
        return "a list"
    return repr(v) if isinstance(v, str) else str(v)


DEFAULTS = "defaults.toml"


def validate(cfg: dict[str, Any], origin: Callable[[str, str], str] = lambda s, k: DEFAULTS
             ) -> None:
    """Raise ConfigError (one line: file, key, what is wrong) unless ``cfg`` fits SCHEMA.
    ``origin(section, key)`` names the file a value came from."""
    for section, body in cfg.items():
        keys = SCHEMA.get(section)
        if keys is None:
            raise ConfigError(f"{origin(section, '')}: unknown section [{section}] (known: "
                              f"{', '.join(SCHEMA)})")
        if not isinstance(body, dict):
            raise ConfigError(f"{origin(section, '')}: {section} must be a table "
                              f"([{section}]), got {_show(body)}")
        for key, value in body.items():
            spec = keys.get(key)
            if spec is None:
                raise ConfigError(f"{origin(section, key)}: unknown key {section}.{key} "
                                  f"(known: {', '.join(keys)})")
            why = spec.check(value)
            if why:
                raise ConfigError(f"{origin(section, key)}: {section}.{key} {why}, got "
                                  f"{_show(value)}")
    for section, keys in SCHEMA.items():
        for key, spec in keys.items():
            if spec.required and key not in cfg.get(section, {}):
                raise ConfigError(f"{origin(section, key)}: {section}.{key} is missing")
    d = cfg["daemon"]
    if d["batch_max"] < d["batch_min"]:
        where = origin("daemon", "batch_max")
        if where != origin("daemon", "batch_min") and where == DEFAULTS:
            where = origin("daemon", "batch_min")
        raise ConfigError(f"{where}: daemon.batch_max must be >= daemon.batch_min "
                          f"({d['batch_min']}), got {d['batch_max']}")


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load(path: str | None = None) -> dict[str, Any]:
    """The embedded defaults overlaid with ``path`` (or $PROVISOR_CONFIG), validated."""
    cfg = tomllib.loads(resources.files("provisor").joinpath(DEFAULTS).read_text())
    path = path or os.environ.get("PROVISOR_CONFIG")
    user: dict[str, Any] = {}
    if path:
        try:
            with open(path, "rb") as f:
                user = tomllib.load(f)
        except OSError as e:
            raise ConfigError(f"{path}: {e.strerror}") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: not valid TOML ({e})") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{path}: not valid TOML (not UTF-8)") from None
        cfg = _merge(cfg, user)

    def origin(section: str, key: str) -> str:
        body = user.get(section)
        if path and section in user and (not key or not isinstance(body, dict) or key in body):
            return path
        return DEFAULTS

    validate(cfg, origin)
    return cfg
