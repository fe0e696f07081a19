"""Capacity at equal compute: accuracy against the active hidden width, SAL-K against DFA and BP.

A SAL layer with K areas holds K area matrices (plus the shared dense path) but each sample goes through one
area: the compute per sample is that of a dense layer of the same width (two with the dual path), the
parameters are about K + 1 times as many. This sweep trains input-W-10 MLPs on Fashion-MNIST for every width W:

- `bp`, `dfa`, `sal` (SAL-16 with fixed feedback; `sal-kp` with SALConfig's default Kolen-Pollack) at the same active width W;
- `bp@params`, `dfa@params`: a dense layer wide enough to hold as many parameters as SAL-16 at width W;
- `bp-ln`, `dfa-stream`, `sal-stream`: the same with a layer norm before the hidden and the output layer, the local
  rules with residual-stream feedback (learned; SAL-1 for DFA), which passes the error through that norm's Jacobian.

    python scripts/width.py run --widths 16 32 64 256 --methods bp dfa sal --seeds 0 --epochs 5
    python scripts/width.py report                 # docs/WIDTH.md (generated part) and docs/width.png

AdamW lr 1e-3 (not tuned per width or rule), no weight decay, batch 128, clipping 1.0, full training set
(60,000) and test set (10,000); one torch thread per run (scripts/local_train.py).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import torch
from local_train import ROOT, build, load_tensors, predict, train_epoch
from machine import cpu_name, machines
from report_page import write_generated


# The runs recorded before `router_lr_scale` existed trained the routing projection at the full lr: the methods
# that predate it pin that, so their records stay reproducible; the `-r` methods take the default (0.01).
FULL_LR_ROUTER = {"router_lr_scale": 1.0}
METHODS = {
    "bp": {"learning_rule": "bp", "num_areas": 1},
    "dfa": {"learning_rule": "dfa", "num_areas": 1},
    "dfa-kp": {"learning_rule": "dfa", "num_areas": 1, "feedback_alignment": "kolen_pollack"},
    # Fixed feedback (SAL as published, the default when the sweep ran); `sal-kp` the default since 2026-11-29.
    "sal": {"learning_rule": "sal", "num_areas": 16, "feedback_alignment": "fixed", **FULL_LR_ROUTER},
    "sal-kp": {"learning_rule": "sal", "num_areas": 16, "feedback_alignment": "kolen_pollack", **FULL_LR_ROUTER},
    "bp@params": {"learning_rule": "bp", "num_areas": 1},
    "dfa@params": {"learning_rule": "dfa", "num_areas": 1},
    # Layer norm before the hidden and the output layer, and residual-stream feedback (learned): with one hidden
    # layer its signal is the direct one taken back through the output norm's parameter-free Jacobian. BP gets the
    # same norms; `dfa-stream` is SAL with one area and this feedback.
    "bp-ln": {"learning_rule": "bp", "num_areas": 1, "norm": "layernorm"},
    "dfa-stream": {"learning_rule": "sal", "num_areas": 1, "norm": "layernorm", "feedback": "stream"},
    "sal-stream": {
        "learning_rule": "sal",
        "num_areas": 16,
        "norm": "layernorm",
        "feedback": "stream",
        **FULL_LR_ROUTER,
    },
    # The same with the router at SALConfig's default pace (router_lr_scale 0.01: docs/ROUTING.md), and with the areas
    # at the full lr too (area_lr_scale 1 instead of 1/16).
    "sal-kp-r": {"learning_rule": "sal", "num_areas": 16},
    "sal-stream-r": {"learning_rule": "sal", "num_areas": 16, "norm": "layernorm", "feedback": "stream"},
    "sal-stream-r-a1": {
        "learning_rule": "sal",
        "num_areas": 16,
        "norm": "layernorm",
        "feedback": "stream",
        "area_lr_scale": 1.0,
    },
    # Fewer and more areas of the same width (each sees 1/K of the data; K times the area parameters).
    "sal4-stream-r-a1": {
        "learning_rule": "sal",
        "num_areas": 4,
        "norm": "layernorm",
        "feedback": "stream",
        "area_lr_scale": 1.0,
    },
    "sal64-stream-r-a1": {
        "learning_rule": "sal",
        "num_areas": 64,
        "norm": "layernorm",
        "feedback": "stream",
        "area_lr_scale": 1.0,
    },
    # Areas by k-means on the input instead of the learned projection (router="claim" with one claim of every area:
    # the first batch claims all 16, so routing is online k-means, 4 prototypes an area, on the pixels).
    "sal-kmeans-stream-a1": {
        "learning_rule": "sal",
        "num_areas": 16,
        "norm": "layernorm",
        "feedback": "stream",
        "area_lr_scale": 1.0,
        "router": "claim",
        "routing_scope": "shared",
        "claim_areas": 16,
        "claim_prototypes": 4,
    },
}
LABELS = {
    "bp": "BP",
    "dfa": "DFA",
    "dfa-kp": "DFA, Kolen-Pollack",
    "sal": "SAL-16 (fixed feedback)",
    "sal-kp": "SAL-16, Kolen-Pollack (the default before router_lr_scale)",
    "bp@params": "BP, SAL-16's parameters",
    "dfa@params": "DFA, SAL-16's parameters",
    "bp-ln": "BP, layer norm",
    "dfa-stream": "DFA, layer norm, stream feedback (SAL-1)",
    "sal-stream": "SAL-16, layer norm, stream feedback",
    "sal-kp-r": "SAL-16, Kolen-Pollack, router lr x0.01 (the defaults since router_lr_scale)",
    "sal-stream-r": "SAL-16, layer norm, stream feedback, router lr x0.01",
    "sal-stream-r-a1": "SAL-16, layer norm, stream feedback, router lr x0.01, area lr x1",
    "sal4-stream-r-a1": "SAL-4, layer norm, stream feedback, router lr x0.01, area lr x1",
    "sal64-stream-r-a1": "SAL-64, layer norm, stream feedback, router lr x0.01, area lr x1",
    "sal-kmeans-stream-a1": "SAL-16, layer norm, stream feedback, area lr x1, k-means router (4 prototypes an area)",
}
RESULTS = ROOT / "docs" / "results" / "width"
START = "<!-- generated by scripts/width.py report: start -->"


def trainable_parameters(model) -> int:
    """Forward parameters (feedback matrices and routers excluded: they are not capacity of the forward map)."""
    return sum(p.numel() for n, p in model.named_parameters() if not n.startswith("feedback") and "router" not in n)


def dense_width_for(width: int, input_size: int, num_labels: int) -> int:
    """The hidden width of a dense input-W'-labels MLP with as many forward parameters as SAL-16 at `width`."""
    model, _, _ = build(
        METHODS["sal"], input_size=input_size, num_labels=num_labels, hidden_sizes=[width], seed=0, lr=1e-3
    )
    target = trainable_parameters(model)
    return max(1, round((target - num_labels) / (input_size + 1 + num_labels)))


def claims_before(model):
    """For `router="claim"` methods, what SALTrainer does before each training batch (the model may claim areas);
    None for the others."""
    if model.config.router != "claim":
        return None
    return lambda xb, yb: model.observe_claims({"pixel_values": xb, "labels": yb})


def run(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    data = load_tensors("fashion_mnist")
    x_train, y_train = data["train"]
    x_test, y_test = data["test"]
    if args.max_train:
        index = torch.randperm(len(y_train), generator=torch.Generator().manual_seed(0))[: args.max_train]
        x_train, y_train = x_train[index], y_train[index]
    for seed in args.seeds:
        for width in args.widths:
            for method in args.methods:
                active = dense_width_for(width, x_train.shape[1], 10) if method.endswith("@params") else width
                budget = f"e{args.epochs}" + (f"_n{args.max_train}" if args.max_train else "")
                path = results / f"{method}__w{width}__lr{args.lr:g}__b{args.batch_size}__{budget}__s{seed}.json"
                if path.exists():
                    continue
                model, rule, optimizer = build(
                    METHODS[method],
                    input_size=x_train.shape[1],
                    num_labels=10,
                    hidden_sizes=[active],
                    seed=seed,
                    lr=args.lr,
                )
                generator = torch.Generator().manual_seed(seed)
                start, curve = time.perf_counter(), []
                for _ in range(args.epochs):
                    train_epoch(
                        model, rule, optimizer, x_train, y_train, args.batch_size, generator, claims_before(model)
                    )
                    logits, _ = predict(model, x_test)
                    curve.append(float((logits.argmax(-1) == y_test).float().mean()) * 100)
                record = {
                    "method": method,
                    "width": width,
                    "hidden_width": active,
                    "parameters": trainable_parameters(model),
                    "seed": seed,
                    "lr": args.lr,
                    "batch_size": args.batch_size,
                    "epochs": args.epochs,
                    "train_size": len(y_train),
                    "accuracy": curve[-1],
                    "curve": curve,
                    "wall_seconds": round(time.perf_counter() - start, 1),
                    "hardware": f"{cpu_name()}, {os.cpu_count()} logical CPUs, 1 torch thread",
                }
                path.write_text(json.dumps(record))
                print(f"{path.stem}: {curve[-1]:.2f} ({record['wall_seconds']} s)", flush=True)


def cell_table(records: list[dict], epochs: int) -> tuple[dict[tuple[str, int], list[dict]], list[int], list[str]]:
    """The runs of one epoch budget by (method, width), with the widths and methods present."""
    cells: dict[tuple[str, int], list[dict]] = {}
    for r in records:
        if r["epochs"] == epochs:
            cells.setdefault((r["method"], r["width"]), []).append(r)
    widths = sorted({width for _, width in cells})
    return cells, widths, [m for m in METHODS if any(key[0] == m for key in cells)]


def table_lines(cells: dict[tuple[str, int], list[dict]], widths: list[int], methods: list[str]) -> list[str]:
    lines = ["| method | " + " | ".join(f"active width {w}" for w in widths) + " |", "|---|" + "---|" * len(widths)]
    for method in methods:
        row = []
        for w in widths:
            runs = cells.get((method, w), [])
            if not runs:
                row.append("-")
                continue
            accs = [r["accuracy"] for r in runs]
            mean = sum(accs) / len(accs)
            spread = (
                f" ± {math.sqrt(sum((a - mean) ** 2 for a in accs) / (len(accs) - 1)):.2f}"
                if len(accs) > 1
                else " (n=1)"
            )
            row.append(
                f"{mean:.2f}{spread} [{runs[0]['hidden_width']}; {runs[0]['parameters']:,}; {runs[0]['wall_seconds']:.0f} s]"
            )
        lines.append(f"| {LABELS[method]} | " + " | ".join(row) + " |")
    return lines


def report(args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [json.loads(p.read_text()) for p in sorted(Path(args.results).glob("*.json"))]
    if not records:
        raise SystemExit(f"No records in {args.results}; run `python scripts/width.py run` first.")
    # The sweep's budget (the one most records ran with) makes the main table and the plot; each other budget, such
    # as a longer run at one width, gets a table of its own below, so that budgets never mix in one cell.
    budgets = sorted({r["epochs"] for r in records}, key=lambda e: -sum(r["epochs"] == e for r in records))
    cells, widths, methods = cell_table(records, budgets[0])
    seeds = sorted({r["seed"] for r in records if r["epochs"] == budgets[0]})
    first = next(r for r in records if r["epochs"] == budgets[0])
    reduced = "REDUCED, " if first["train_size"] < 60000 or first["epochs"] < 25 else ""
    lines = ["# Capacity at equal compute: Fashion-MNIST width sweep", ""]
    lines += [
        f"Generated by `scripts/width.py report` from `docs/results/width/*.json`. {reduced}{first['train_size']:,}"
        f" training / 10,000 test images, {first['epochs']} epochs, AdamW lr {first['lr']:g} (not tuned), batch"
        f" {first['batch_size']}, clipping 1.0; test accuracy %, mean ± sample std over seeds (n=1: one seed), in"
        f" brackets the hidden width, forward parameters and one run's wall seconds. Hardware: {machines(records)}.",
        "",
        *table_lines(cells, widths, methods),
    ]
    lines += ["", "![accuracy against active width](width.png)", ""]
    for budget in budgets[1:]:
        lines += [f"### The same at {budget} epochs", "", *table_lines(*cell_table(records, budget)), ""]
    page = ROOT / "docs" / "WIDTH.md"
    write_generated(page, "\n".join(lines), START)

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for method in methods:
        points = [(w, [r["accuracy"] for r in cells[(method, w)]]) for w in widths if (method, w) in cells]
        xs = [w for w, _ in points]
        means = [sum(a) / len(a) for _, a in points]
        ax.plot(xs, means, marker="o", label=LABELS[method], linestyle="--" if method.endswith("@params") else "-")
    ax.set_xscale("log", base=2)
    ax.set_xticks(widths, [str(w) for w in widths])
    ax.set_xlabel("active hidden width (units a sample goes through)")
    ax.set_ylabel("test accuracy %")
    ax.set_title(f"Fashion-MNIST, {first['epochs']} epochs, seeds: {seeds}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(ROOT / "docs" / "width.png", dpi=110)
    plt.close(fig)
    print(f"wrote {page}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["run", "report"])
    parser.add_argument("--widths", nargs="+", type=int, default=[16, 32, 64, 256])
    parser.add_argument("--methods", nargs="+", default=["bp", "dfa", "sal"], choices=list(METHODS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--max-train", type=int, default=None, help="REDUCED: a random subset (seed 0)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--results", default=str(RESULTS))
    args = parser.parse_args()
    run(args) if args.command == "run" else report(args)


if __name__ == "__main__":
    main()
