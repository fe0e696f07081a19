"""scripts/benchmark.py end to end on a tiny Digits subset: runs through SALTrainer, stores records, writes the
report with the paper's numbers in their own column."""

import importlib
import json
import sys
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def benchmark():
    # As when run as a script: scripts/ on the path, so `benchmark` and its `machine` helper import by name
    # (dataclasses and the worker processes look the module up by name too).
    sys.path.insert(0, str(ROOT / "scripts"))
    return importlib.import_module("benchmark")


def run(benchmark, tmp_path, *extra):
    results, docs = tmp_path / "results", tmp_path / "docs"
    benchmark.main(["--quick", "--results", str(results), "--docs", str(docs), "--workers", "1", *extra])
    return results, docs


def test_quick_paper_protocol_smoke(benchmark, tmp_path):
    results, docs = run(benchmark, tmp_path, "--suite", "main", "--methods", "bp", "sal", "--protocols", "paper")
    records = [json.loads(p.read_text()) for p in (results / "runs").glob("*.json")]
    assert sorted(r["job"]["method"] for r in records) == ["bp", "sal"]
    for r in records:
        assert r["sizes"] == {"train": 300, "eval": 100} and r["eval_split"] == "test"
        assert len(r["curve"]) == 2 and 0.0 <= r["accuracy"] <= 1.0 and r["seconds_per_epoch"] > 0
    sal = next(r for r in records if r["job"]["method"] == "sal")
    assert sal["config"]["num_areas"] == 16 and sal["area_health"]
    page = (docs / "RESULTS.md").read_text()
    assert "REDUCED, 300 train / 100 test, 2 epochs" in page and "71.63" in page
    assert (docs / "learning_curves.png").stat().st_size > 0 and (results / "main_digits.json").is_file()


def test_fair_protocol_tunes_on_validation_then_retrains(benchmark, tmp_path):
    results, _ = run(benchmark, tmp_path, "--suite", "main", "--methods", "dfa", "--protocols", "fair")
    records = [json.loads(p.read_text()) for p in (results / "runs").glob("*.json")]
    tune = [r for r in records if r["job"]["stage"] == "tune"]
    final = [r for r in records if r["job"]["stage"] == "final"]
    assert sorted(r["job"]["lr"] for r in tune) == [3e-4, 1e-3, 3e-3]
    assert all(r["eval_split"] == "validation" and r["sizes"] == {"train": 270, "eval": 30} for r in tune)
    best = max(tune, key=lambda r: (r["accuracy"], -r["job"]["lr"]))
    assert len(final) == 1 and final[0]["job"]["lr"] == best["job"]["lr"] and final[0]["eval_split"] == "test"


@pytest.mark.slow
def test_quick_runs_every_suite(benchmark, tmp_path):
    _, docs = run(benchmark, tmp_path)
    assert "area_mode=partition" in (docs / "ABLATIONS.md").read_text()
