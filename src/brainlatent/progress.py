"""Progress of long loops: a tqdm bar on a terminal, about ten plain log lines in batch jobs."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


def progress(iterable: Iterable[T], total: int, desc: str) -> Iterator[T]:
    """Yield from ``iterable``, showing progress (tqdm on a terminal, log lines otherwise)."""
    if sys.stderr.isatty():
        from tqdm import tqdm

        yield from tqdm(iterable, total=total, desc=desc, leave=False)
        return
    every = max(1, total // 10)
    for i, item in enumerate(iterable):
        if i % every == 0 or i == total - 1:
            log.info("%s: %d/%d", desc, i + 1, total)
        yield item
