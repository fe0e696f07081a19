"""The docs and docstrings name only files that exist (a docstring once pointed to a config that was never written)."""

import re
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parents[1]
PATH = re.compile(r"(?<![\w/.-])((?:examples|scripts|docs|tests|sal_hf)/[\w./-]*\w\.(?:py|yaml|md|sh|png|json))")
SOURCES = sorted(
    [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]
    + [p for folder in ("sal_hf", "examples", "scripts", "tests") for p in (ROOT / folder).rglob("*.py")]
)


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_named_file_exists(source):
    text = source.read_text(encoding="utf-8")
    named = set(PATH.findall(text))
    # Placeholders (`scripts/NAME.py`) and transformers' own example paths (`examples/pytorch/...`) are not ours.
    ours = {name for name in named if "NAME" not in name and not name.startswith("examples/pytorch/")}
    missing = sorted(name for name in ours if not (ROOT / name).exists())
    assert not missing, f"{source.relative_to(ROOT)} names files that do not exist: {missing}"
