"""Progress bars on stderr for the jobs that take more than a few seconds (dataset
checks, calibration and parity of an export, building the model zoo).

Bars are drawn with rich on stderr, so stdout keeps only the results (tables, JSON). By
default they are shown only when stderr is a terminal: a log file or a pipe gets no
redraw noise. ``SINET_PROGRESS=1`` forces them on, ``SINET_PROGRESS=0`` off.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Callable, Iterable, Iterator, TypeVar

__all__ = ["progress", "progress_bar", "progress_enabled"]

T = TypeVar("T")


def progress_enabled(enabled: bool | None = None) -> bool:
    """``enabled`` if given; else ``SINET_PROGRESS`` (1/0) if set; else whether stderr is a terminal."""
    if enabled is not None:
        return bool(enabled)
    forced = os.environ.get("SINET_PROGRESS")
    if forced in ("0", "1"):
        return forced == "1"
    return bool(getattr(sys.stderr, "isatty", lambda: False)())


@contextlib.contextmanager
def progress_bar(description: str, total: int | None = None, enabled: bool | None = None
                 ) -> Iterator[Callable[..., None]]:
    """A bar for ``total`` steps (a spinner when ``total`` is None); yields ``advance(n=1,
    description=None)``."""
    if not progress_enabled(enabled):
        yield lambda n=1, description=None: None
        return
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)

    columns = [SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TimeRemainingColumn()] if total is not None else [
               SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn()]
    with Progress(*columns, console=Console(stderr=True)) as bar:
        task = bar.add_task(description, total=total)

        def advance(n: int = 1, description: str | None = None):
            bar.update(task, advance=n, **({"description": description} if description else {}))

        yield advance


def progress(items: Iterable[T], description: str, total: int | None = None, enabled: bool | None = None,
             item: Callable[[T], str] | None = None) -> Iterator[T]:
    """Iterate over ``items`` with a bar; ``item(x)`` names the current one in the description."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with progress_bar(description, total, enabled) as advance:
        for x in items:
            if item is not None:
                advance(0, f"{description}: {item(x)}")
            yield x
            advance()
