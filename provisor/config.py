"""Configuration: embedded defaults (config/provisor.toml), overlaid by a user file."""

from __future__ import annotations

import os
import tomllib
from importlib import resources
from typing import Any

from provisor.errors import ProvisorError


class ConfigError(ProvisorError):
    pass


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load(path: str | None = None) -> dict[str, Any]:
    cfg = tomllib.loads(resources.files("provisor").joinpath("defaults.toml").read_text())
    path = path or os.environ.get("PROVISOR_CONFIG")
    if path:
        try:
            with open(path, "rb") as f:
                cfg = _merge(cfg, tomllib.load(f))
        except OSError as e:
            raise ConfigError(f"{path}: {e.strerror}") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: not valid TOML ({e})") from None
    return cfg


def parse_size(text: str | int) -> int:
    """'64M' -> 67108864; plain integers are bytes."""
    if isinstance(text, int):
        return text
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    try:
        if t and t[-1] in mult:
            return int(float(t[:-1]) * mult[t[-1]])
        return int(t)
    except ValueError:
        raise ConfigError(f"not a size: {text!r} (try 64M)") from None
