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


def test_the_loop_of_your_own_in_training_md_runs_and_trains_locally(caplog, tmp_path):
    """docs/TRAINING.md's loop, run as written on a saved model with the shipped defaults (from_pretrained returns
    it in eval mode, where routers learn nothing): it trains block-locally (no backprop warning) and applies the
    routers' statistics."""
    import torch
    from conftest import as_dataset, defaults_config, tiny_batch

    from sal_hf import SALForImageClassification

    text = (ROOT / "docs" / "TRAINING.md").read_text(encoding="utf-8")
    code = text.split("## A loop of your own", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    torch.manual_seed(0)
    SALForImageClassification(defaults_config()).save_pretrained(tmp_path)
    model = SALForImageClassification.from_pretrained(tmp_path)
    rows = as_dataset(*tiny_batch(64))
    loader = [
        {
            "pixel_values": torch.stack([r["pixel_values"] for r in rows[i : i + 16]]),
            "labels": torch.tensor([r["labels"] for r in rows[i : i + 16]]),
        }
        for i in range(0, 64, 16)
    ]
    before = [router.area_bias.clone() for router in model.routers]
    with caplog.at_level("WARNING"):
        exec(code, {"model": model, "loader": loader, "torch": torch})
    assert "backpropagation" not in caplog.text
    assert all(int(router.num_updates) == 4 for router in model.routers)
    assert not any(torch.equal(b, router.area_bias) for b, router in zip(before, model.routers))
