"""A progress bar for long work (export, verify, recovery), on a terminal only."""

from __future__ import annotations

import click


class _NoBar:
    def __enter__(self) -> _NoBar:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def update(self, n: int) -> None:
        pass


def progress(label: str, total: int):
    """A progress bar on stderr when it is a terminal (else nothing: logs stay clean)."""
    err = click.get_text_stream("stderr")
    if not err.isatty():
        return _NoBar()
    return click.progressbar(length=max(total, 1), label=label, file=err)
