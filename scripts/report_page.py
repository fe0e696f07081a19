"""The generated part of a docs page, for the report commands of the scripts beside this file."""

from __future__ import annotations

from pathlib import Path


END = "<!-- generated: end -->"


def write_generated(path: Path, text: str, start: str) -> None:
    """Write ``text`` between the markers ``start`` and the ``END`` that follows it in ``path`` (a page may hold
    several generated blocks); the hand-written text outside them is kept. A page without the markers gets the block
    first, above whatever it held."""
    block = f"{start}\n{text}\n{END}"
    old = path.read_text() if path.exists() else ""
    if start in old and END in old[old.index(start) :]:  # the end marker that follows this block's start
        begin = old.index(start)
        page = old[:begin] + block + old[old.index(END, begin) + len(END) :]
    else:
        page = block + ("\n" + old if old else "")
    path.write_text(page + ("" if page.endswith("\n") else "\n"))
