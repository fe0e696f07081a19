"""The generated part of a docs page, for the report commands of the scripts beside this file."""

from __future__ import annotations

from pathlib import Path


END = "<!-- generated: end -->"


def write_generated(path: Path, text: str, start: str) -> None:
    """Write ``text`` between the markers ``start`` and ``END`` of ``path``; the hand-written text outside them is
    kept. A page without the markers gets the block first, above whatever it held."""
    block = f"{start}\n{text}\n{END}"
    old = path.read_text() if path.exists() else ""
    if start in old and END in old:
        page = old[: old.index(start)] + block + old[old.index(END) + len(END) :]
    else:
        page = block + ("\n" + old if old else "")
    path.write_text(page + ("" if page.endswith("\n") else "\n"))
