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
    results, docs = run(benchmark, tmp_path, "--suite", "main", "--methods", "bp", "sal+", "--protocols", "paper")
    records = [json.loads(p.read_text()) for p in (results / "runs").glob("*.json")]
    assert sorted(r["job"]["method"] for r in records) == ["bp", "sal+"]
    for r in records:
        assert r["sizes"] == {"train": 300, "eval": 100} and r["eval_split"] == "test"
        assert len(r["curve"]) == 2 and r["accuracy"] == r["curve"][-1] and r["seconds_per_epoch"] > 0
        # Whole samples of the 100 test and 300 training digits. (Plain SGD at lr 1e-4 for 2 epochs leaves every
        # rule near chance, so the values themselves cannot be checked against a margin here.)
        assert r["accuracy"] * 100 == pytest.approx(round(r["accuracy"] * 100), abs=1e-9)
        assert r["train_accuracy"] * 300 == pytest.approx(round(r["train_accuracy"] * 300), abs=1e-9)
        assert r["input_range"] == [-1.0, 1.0] and r["max_grad_norm"] == 0.0  # plain SGD on [-1, 1] pixels
    sal = next(r for r in records if r["job"]["method"] == "sal+")
    assert sal["config"]["num_areas"] == 16
    # The area health of the last epoch: its 300 training samples at each router (not the whole run's 600).
    assert sal["area_health"]["area/router_0/samples"] == 300
    page = (docs / "RESULTS.md").read_text()
    assert "REDUCED, 300 train / 100 test, 2 epochs" in page and "71.63" in page
    assert (docs / "learning_curves.png").stat().st_size > 0 and (results / "main_digits.json").is_file()


def test_fair_protocol_tunes_on_validation_then_retrains(benchmark, tmp_path):
    results, _ = run(benchmark, tmp_path, "--suite", "main", "--methods", "dfa", "--protocols", "fair")
    records = [json.loads(p.read_text()) for p in (results / "runs").glob("*.json")]
    tune = [r for r in records if r["job"]["stage"] == "tune"]
    final = [r for r in records if r["job"]["stage"] == "final"]
    assert sorted(r["job"]["lr"] for r in tune) == [1e-4, 3e-4, 1e-3, 3e-3, 1e-2]
    assert all(r["input_range"] == [0.0, 1.0] and r["max_grad_norm"] == 1.0 for r in records)
    assert all(r["eval_split"] == "validation" and r["sizes"] == {"train": 270, "eval": 30} for r in tune)
    best = max(tune, key=lambda r: (r["accuracy"], -r["job"]["lr"]))
    assert len(final) == 1 and final[0]["job"]["lr"] == best["job"]["lr"] and final[0]["eval_split"] == "test"


def test_paper_protocol_scales_image_pixels_only(benchmark):
    job = lambda dataset, protocol: benchmark.Job("main", dataset, "bp", protocol, "final", 0, 1e-4, 1, None, None)  # noqa: E731
    assert benchmark.input_range(job("digits", "paper")) == (-1.0, 1.0)
    assert benchmark.input_range(job("digits", "fair")) == (0.0, 1.0)
    assert benchmark.input_range(job("wine", "paper")) == (0.0, 1.0)  # standardised features stay as they are


def test_report_keeps_only_the_finals_of_the_chosen_lr(benchmark):
    """A wider grid can change the chosen lr; finals of the old choice must not be averaged in."""

    def record(stage, lr, seed, accuracy):
        job = benchmark.Job("main", "digits", "dfa", "fair", stage, seed, lr, 25, None, None)
        return {
            "job": dict(vars(job)),
            "accuracy": accuracy,
            "train_accuracy": 1.0,
            "curve": [accuracy],
            "seconds_per_epoch": 1.0,
            "area_health": {},
            "sizes": {"train": 1, "eval": 1},
            "config": {"num_areas": 1},
        }

    records = [record("tune", 1e-3, 0, 0.9), record("tune", 1e-2, 0, 0.95)]
    records += [record("final", 1e-3, s, 0.5) for s in range(3)] + [record("final", 1e-2, s, 0.8) for s in range(3)]
    (entry,) = benchmark.summarise(records).values()
    assert entry["lr"] == 1e-2 and entry["accuracies"] == [80.0, 80.0, 80.0]


@pytest.mark.slow
def test_quick_runs_every_suite(benchmark, tmp_path):
    _, docs = run(benchmark, tmp_path)
    assert "area_mode=partition" in (docs / "ABLATIONS.md").read_text()
    assert "foundation, area lr x16, output areas" in (docs / "RESULTS.md").read_text()  # the paper-protocol variants


def test_record_names_tell_reduced_runs_apart(benchmark):
    """Resuming skips a job whose record file exists, so two budgets must never share a name."""

    def job(epochs, train, test):
        return benchmark.Job("main", "fashion_mnist", "bp", "fair", "final", 0, 1e-3, epochs, train, test)

    names = {job(25, None, None).name, job(10, None, None).name, job(25, 2000, 2000).name, job(25, 2000, None).name}
    assert len(names) == 4


def test_a_page_with_two_generated_blocks_keeps_both_and_the_hand_written_text(benchmark, tmp_path):
    """ABLATIONS.md holds two generated blocks (the KP-based ablations above the foundation's): rewriting either
    replaces its own block only, up to the end marker that follows its start."""
    from report_page import END, write_generated

    page = tmp_path / "page.md"
    page.write_text(
        f"{benchmark.START_KP}\nold kp\n{END}\nreading of kp\n{benchmark.START}\nold base\n{END}\nreading of base\n"
    )
    write_generated(page, "new base", benchmark.START)
    write_generated(page, "new kp", benchmark.START_KP)
    assert page.read_text() == (
        f"{benchmark.START_KP}\nnew kp\n{END}\nreading of kp\n{benchmark.START}\nnew base\n{END}\nreading of base\n"
    )
