"""Guest paths: lexical only (the guest's symlinks and mounts are not known here)."""

from __future__ import annotations


def normpath(path: str) -> str:
    """Lexical normalisation of an absolute guest path (the guest's symlinks are unknown)."""
    parts: list[str] = []
    for seg in path.split("/"):
        if seg in ("", "."):
            continue
        if seg == "..":
            if parts:
                parts.pop()
        else:
            parts.append(seg)
    return "/" + "/".join(parts)
