"""Helpers shared by the mail sources."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

from syncd.source import Folder


def folder_list(received: Iterable[str], sent: Iterable[str]) -> list[Folder]:
    """Received folders then sent ones, each once; a folder that is both counts as sent."""
    sent_names = list(dict.fromkeys(sent))
    folders = [Folder(name, sent=name in sent_names) for name in dict.fromkeys(received)]
    listed = {f.name for f in folders}
    return folders + [Folder(name, sent=True) for name in sent_names if name not in listed]


def batches(uids: Sequence[int], size: int) -> Iterator[list[int]]:
    """``uids`` deduplicated, ascending, in lists of at most ``size``."""
    ordered = sorted(set(uids))
    for start in range(0, len(ordered), size):
        yield ordered[start : start + size]
