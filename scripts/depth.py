"""Depth study: SAL, DFA and BP on residual, normalised stacks of 2, 8, 32 and 128 layers.

A "D-layer" model is D - 1 residual hidden blocks of the same width plus the output layer (the paper's "2-layer
MLP" is input-256-labels). Every rule trains the same architecture (``residual=True``, pre-norm) with the same
optimizer, learning rate, batch size and number of epochs, one step at a time through the very code SALTrainer
runs (``SALTrainer.compute_loss``, one backward, the optimizer step, the routing statistics callback), driven by
a plain loop so the script can look inside between steps. It reports per depth and rule:

- final test accuracy, and whether a NaN / Inf appeared in any loss, activation or parameter;
- the mean per-sample L2 norm of the first / middle / last hidden layer's output on a probe batch;
- the norm of each of those layers' update (the rule's gradient on the probe batch, before the optimizer);
- the cosine between that update and the true BP gradient of the same layer on the same probe batch.

Writes ``<out>/DEPTH.md`` (table) and ``<out>/depth.png`` (accuracy and norms against depth), and the raw
numbers to ``docs/results/depth/depth<tag>.json`` (commit them with the page: the pages' earlier runs wrote to
``outputs/``, which is not committed, and those records are lost).

    python scripts/depth.py --quick --threads 1        # digits, ~8 min on the shared 2-core box
    python scripts/depth.py --dataset fashion_mnist    # once sal_hf.data can load it
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import tempfile
import time
from pathlib import Path

import torch
from machine import cpu_name  # scripts/machine.py, beside this file
from transformers import TrainingArguments

from sal_hf import SALConfig, SALForImageClassification, SALTrainer
from sal_hf.data import load_image_dataset
from sal_hf.feedback import FEEDBACK_MODES
from sal_hf.optim import lr_scaled_parameters


ROOT = Path(__file__).resolve().parent.parent


def load(
    name: str, seed: int, max_train: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_train, y_train, x_test, y_test), images flattened; with ``max_train`` a class-balanced subset of the
    training set (the first ``max_train / classes`` images of each class in a permutation seeded by 0, so every
    seed and rule sees the same images)."""
    data = load_image_dataset(name)
    train, test = data["train"][:], data["test"][:]  # dicts of whole-split tensors
    flat = lambda split: split["pixel_values"].reshape(len(split["labels"]), -1).float()  # noqa: E731  (N, H*W)
    x_train, y_train = flat(train), train["labels"].long()
    if max_train is not None and max_train < len(y_train):
        classes = int(y_train.max()) + 1
        order = torch.randperm(len(y_train), generator=torch.Generator().manual_seed(0))
        keep = torch.cat([order[y_train[order] == c][: max_train // classes] for c in range(classes)])
        x_train, y_train = x_train[keep.sort().values], y_train[keep.sort().values]
    return x_train, y_train, flat(test), test["labels"].long()


def layer_groups(model: SALForImageClassification) -> list[torch.nn.Module]:
    return [*model.sal.layers, model.classifier]


def flat_grad(module: torch.nn.Module, router: bool = True) -> torch.Tensor:
    """The layer's gradient as one vector; an area that got no gradient counts as zeros. ``router=False`` leaves out
    the router's projection, which learns from its own local objective and gets no gradient from BP (top-1
    routing is not differentiable), so it only dilutes a cosine to BP."""
    return torch.cat(
        [
            (p.grad if p.grad is not None else torch.zeros_like(p)).flatten()
            for name, p in module.named_parameters()
            if router or not name.startswith("router.")
        ]
    )


@torch.no_grad()
def hidden_norms(model: SALForImageClassification, x: torch.Tensor) -> list[float]:
    model.eval()
    states = model.sal(x, output_hidden_states=True).hidden_states[1:]
    return [float(h.norm(dim=-1).mean()) for h in states]


def probe(model: SALForImageClassification, trainer: SALTrainer, x: torch.Tensor, y: torch.Tensor, picks: list[int]):
    """Update norms and cosine to BP of the picked hidden layers, on one probe batch. The routing statistics
    are not touched (eval-mode routing), so probing does not change training."""
    model.eval()
    batch = {"pixel_values": x, "labels": y}
    layers = layer_groups(model)
    model.zero_grad(set_to_none=True)
    if trainer.learning_rule is not None:
        # compute_loss runs the local rule only in training mode; routers in eval mode accumulate nothing.
        model.training = True
        loss = trainer.compute_loss(model, batch)
        model.training = False
    else:
        loss = model(**batch).loss
    loss.backward()
    rule = [flat_grad(layers[i]) for i in picks]
    rule_forward = [flat_grad(layers[i], router=False) for i in picks]
    model.zero_grad(set_to_none=True)
    model(**batch).loss.backward()
    bp = [flat_grad(layers[i]) for i in picks]
    bp_forward = [flat_grad(layers[i], router=False) for i in picks]
    model.zero_grad(set_to_none=True)
    cos = [float(torch.nn.functional.cosine_similarity(r, b, dim=0)) for r, b in zip(rule, bp)]
    cos_forward = [float(torch.nn.functional.cosine_similarity(r, b, dim=0)) for r, b in zip(rule_forward, bp_forward)]
    return [float(r.norm()) for r in rule], cos, cos_forward


def run(rule: str, depth: int, data, args) -> dict:
    x_train, y_train, x_test, y_test = data
    torch.manual_seed(args.seed)
    config = SALConfig(
        input_size=x_train.shape[1],
        hidden_sizes=[args.width] * (depth - 1),
        num_labels=int(y_train.max()) + 1,
        num_areas=args.areas if rule == "sal" else 1,
        learning_rule=rule,
        residual=True,
        residual_scale=args.residual_scale,
        norm=args.norm,
        # The area design docs/DEPTH.md was measured with (SALConfig's defaults before docs/ABLATIONS.md), unless
        # --area-defaults asks for today's (shared dense path beside the areas, identical start). The AdamW below
        # steps every parameter at --lr, as when the depth pages were measured, unless --lr-groups applies the
        # config's multipliers (area_lr_scale, router_lr_scale) as SALTrainer does.
        **({} if args.area_defaults else {"dual_path": False, "area_init": "independent", "area_lr_scale": 1.0}),
        # --feedback applies to SAL (FA is layer-wise and DFA direct by definition); --feedback-alignment to every
        # local rule (docs/FEEDBACK.md).
        **({"feedback": args.feedback} if rule == "sal" else {}),
        **({"feedback_alignment": args.feedback_alignment} if rule != "bp" else {}),
    )
    model = SALForImageClassification(config)
    with tempfile.TemporaryDirectory() as tmp:
        options = {"learning_rate": args.lr, "weight_decay": 0.0, "optim": "adamw_torch"}
        trainer = SALTrainer(
            model=model,
            args=TrainingArguments(output_dir=tmp, report_to="none", use_cpu=True, disable_tqdm=True, **options),
        )
    # SALTrainer.create_optimizer, as in training, registers the pre-step hook that drops the zero gradients the
    # masked area kernel (the default on CUDA) gives unselected areas. With --lr-groups it makes the AdamW (torch's,
    # the same betas and eps) with the config's multipliers; without, it keeps this flat one.
    lr_groups = lr_scaled_parameters(model, config) if args.lr_groups else {}
    if not args.lr_groups:
        trainer.optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    optimizer = trainer.create_optimizer()
    hidden = depth - 1
    picks = sorted({0, hidden // 2, hidden - 1})
    probe_x, probe_y = x_train[: args.batch_size], y_train[: args.batch_size]
    init_update, init_cos, init_cos_forward = probe(model, trainer, probe_x, probe_y, picks)

    nonfinite, steps, start = 0, 0, time.perf_counter()
    generator = torch.Generator().manual_seed(args.seed)
    for _ in range(args.epochs):
        order = torch.randperm(len(x_train), generator=generator)
        for begin in range(0, len(order) - args.batch_size + 1, args.batch_size):
            index = order[begin : begin + args.batch_size]
            model.train()
            optimizer.zero_grad(set_to_none=True)
            loss = trainer.compute_loss(model, {"pixel_values": x_train[index], "labels": y_train[index]})
            if not torch.isfinite(loss):
                nonfinite += 1  # skip the step, as SALTrainer would refuse it
                continue
            loss.backward()
            optimizer.step()
            model.update_routing_statistics()
            steps += 1
    seconds = time.perf_counter() - start

    model.eval()
    with torch.no_grad():
        logits = torch.cat([model(pixel_values=x_test[i : i + 512]).logits for i in range(0, len(x_test), 512)])
    accuracy = float((logits.argmax(-1) == y_test).float().mean())
    norms = hidden_norms(model, probe_x)
    update, cos, cos_forward = probe(model, trainer, probe_x, probe_y, picks)
    finite = bool(torch.isfinite(logits).all()) and all(torch.isfinite(p).all() for p in model.parameters())
    finite = finite and all(math.isfinite(v) for v in [*norms, *update])
    return {
        "rule": rule,
        "feedback": "-" if rule == "bp" else f"{config.feedback_mode}, {config.effective_feedback_alignment}",
        "areas": "-" if rule != "sal" else "defaults" if args.area_defaults else "foundation",
        "num_areas": config.num_areas,
        "lr_groups": {name: scale for name, (scale, _) in lr_groups.items()},
        "depth": depth,
        "seed": args.seed,
        "accuracy": accuracy,
        "nan_or_inf": nonfinite > 0 or not finite,
        "nonfinite_steps": nonfinite,
        "steps": steps,
        "seconds": seconds,
        "layers": picks,
        "activation_norm": [norms[i] for i in picks],
        "update_norm": update,
        "cos_to_bp": cos,
        "update_norm_init": init_update,
        "cos_to_bp_init": init_cos,
        "cos_to_bp_forward": cos_forward,
        "cos_to_bp_forward_init": init_cos_forward,
        "parameters": model.num_parameters(),
        "train_size": len(y_train),
        "test_size": len(y_test),
    }


def mean_table(results: list[dict], rules: list[str]) -> list[str]:
    """Per rule (with its feedback) and depth: test accuracy over seeds, its change from the same rule at 2 layers,
    and the cosine to BP of the middle and last hidden layer's update after training. Empty with one seed."""
    if len({r.get("seed", 0) for r in results}) < 2:
        return []
    lines = [
        "Mean over seeds (± sample std); *vs 2 layers*: the change of the mean from the same rule at 2 layers.",
        "",
        "| rule | layers | seeds | test acc % | vs 2 layers | cos to BP (end), middle / last | without router |",
        "|---|---|---|---|---|---|---|",
    ]
    for rule in rules:
        runs = [r for r in results if variant(r) == rule]
        by_depth = {d: [r for r in runs if r["depth"] == d] for d in sorted({r["depth"] for r in runs})}
        base = by_depth.get(2)
        for depth, rs in by_depth.items():
            acc = torch.tensor([100 * r["accuracy"] for r in rs])
            spread = f" ± {acc.std():.1f}" if len(rs) > 1 else ""
            change = "-"
            if base:
                change = (
                    f"{round(float(acc.mean()) - 100 * sum(r['accuracy'] for r in base) / len(base), 1) + 0.0:+.1f}"
                )
            cos = forward = "-"
            if depth > 2:
                cos = " / ".join(f"{sum(r['cos_to_bp'][i] for r in rs) / len(rs):.2f}" for i in (1, 2))
                if all("cos_to_bp_forward" in r for r in rs):
                    forward = " / ".join(f"{sum(r['cos_to_bp_forward'][i] for r in rs) / len(rs):.2f}" for i in (1, 2))
            lines.append(f"| {rule} | {depth} | {len(rs)} | {acc.mean():.1f}{spread} | {change} | {cos} | {forward} |")
    return [*lines, ""]


# Hand-written reading of docs/DEPTH_FEEDBACK.md (issue 12, item 5: depth with the refined feedback). The page is
# written by `--from-json outputs/depth_fb*.json --quick --name DEPTH_FEEDBACK --out docs` from the runs above.
FEEDBACK_NOTES = [
    "**Reading (hand-written).** Digits is small (360 test images: one image is 0.28 points) and the spread over "
    "three seeds is 1-4 points, so only differences of a few points mean anything here. The runs above wrote "
    "`outputs/depth_fb*.json` (2026-11-29, 10:05-10:35 UTC, the stream rows 15:55-16:05 UTC, the `sal+ (direct, "
    "kolen_pollack)` rows rerun at 16:05 with the router-free cosine, bit for bit the same accuracies; next to other "
    "jobs, so the times are rough); this page is `python scripts/depth.py --quick --name DEPTH_FEEDBACK --out docs "
    "--from-json outputs/depth_fb*.json`.",
    "",
    '- **Residual-stream feedback makes depth pay** (`feedback="stream"`, docs/FEEDBACK.md: every layer receives the '
    "output error through one matrix at the last hidden state, taken back through the output norm's parameter-free "
    "Jacobian). With today's area design and Kolen-Pollack, `sal+ (stream, kolen_pollack)` reaches 91.4 ± 0.5 at 2 "
    "layers, 94.8 ± 0.6 at 8 and 93.4 ± 2.4 at 32: 8 layers beat 2 by +3.4 points, and beat direct Kolen-Pollack "
    "at 8 layers (88.4 ± 2.3) by +6.4; BP is at 96.9 ± 0.5. A fixed stream matrix does as well at 8 layers "
    "(94.8 ± 0.3) and a little worse at 2 and 32 (89.5 ± 0.2, 93.1 ± 2.6). With one hidden layer the two kinds "
    "differ only by the output norm's Jacobian, and with the same fixed draw SAL-4 scores 89.5 ± 0.2 with stream "
    "feedback against 84.9 ± 0.8 with direct feedback; without areas it changes nothing measurable at 2 layers "
    "(`sal-1` 89.4 against DFA's 89.4 fixed, 89.8 Kolen-Pollack): the Jacobian rescues SAL's direct feedback.",
    "- **The deep blocks learn in BP's direction.** Leaving out the router's projection (BP does not train it; the "
    "*without router* column), the cosine between a middle / last block's update and its BP gradient is 0.55 / 0.36 "
    "at 8 layers and 0.51 / 0.39 at 32 with stream Kolen-Pollack, against 0.22 / 0.15 and 0.20 / 0.16 with direct "
    "Kolen-Pollack. With the router included (the older column) SAL's deep cosines at 32 layers look near 0: the "
    "router's own update, which the residual scale 1/31 does not shrink, dominates that vector.",
    "- **The areas add little**: SAL with one area and the same feedback (`sal-1 (stream, kolen_pollack)`, i.e. DFA "
    "with it) scores 89.4 / 94.5 / 93.6: SAL-4 is 2.0 points above it at 2 layers (one std of `sal-1`), level at 8 "
    "and 32.",
    "- **With direct feedback**, today's area design (`sal+`) gains +2.0 (fixed) and +2.2 (Kolen-Pollack) from 2 to 8 "
    "layers, about one std; the foundation's areas (`sal`, the design docs/DEPTH.md measured) do not (-1.6 to -1.9). "
    "BP gains +2.8 at 8 layers; DFA +0.5 with fixed feedback and +1.9 with Kolen-Pollack.",
    "- **Layer-wise Kolen-Pollack hurts deep residual stacks** (-12 to -13 points for `sal`, -4 for `fa`): its "
    "feedback matrices learn from the un-normalised block outputs while the next block reads their layer norm "
    "(docs/FEEDBACK.md, caveats), and the first layer's update norm grows by orders of magnitude (the table). This "
    "is why unset `feedback_alignment` derives Kolen-Pollack only with direct or stream feedback.",
    "- **Against the issue's item 5**: a deep SAL beats its own 2-layer accuracy on Digits (1,437 / 360, the whole "
    "set) by +3.4 points with stream feedback (3 seeds); on all of Fashion-MNIST see docs/DEPTH_FASHION.md.",
    "",
]


# Hand-written reading of docs/DEPTH_FASHION.md (issue 12, item 5, on all of Fashion-MNIST), written by
# `--dataset fashion_mnist --name DEPTH_FASHION --out docs --from-json outputs/depth_ff*.json`.
FASHION_NOTES = [
    "**Reading (hand-written).** All of Fashion-MNIST (60,000 / 10,000), 9 layers (8 hidden: the first maps the "
    "image to width 64, 7 residual blocks) against 2 (one hidden layer), 3 seeds, one lr (1e-3, not tuned) for every "
    "rule. The runs wrote `outputs/depth_ff*.json` (2026-11-29, 15:54-16:35 UTC, two or three runs sharing the two "
    "cores, so the times are rough); this page is `python scripts/depth.py --dataset fashion_mnist --name "
    "DEPTH_FASHION --out docs --from-json outputs/depth_ff*.json`.",
    "",
    "- **Depth buys little here, for any rule.** With stream feedback SAL-4 reaches 88.43 ± 0.33 at 9 layers against "
    "88.18 ± 0.60 at 2 (+0.25; paired by seed -0.17, +0.55, +0.38): the deep SAL beats its 2-layer self on the mean, "
    "within the seeds' spread, so not established. BP gains as little (87.97 ± 0.17 to 88.14 ± 0.49): at this width "
    "and budget an MLP on Fashion-MNIST is not limited by depth, which is why Digits (docs/DEPTH_FEEDBACK.md, +3.4 "
    "points from 2 to 8 layers, where BP gains +2.8) is where depth can be seen to pay.",
    "- **The deep blocks learn in BP's direction**: the cosine of their update to the BP gradient, router left out, "
    "is 0.78-0.89 in the first and middle hidden layer and 0.70-0.76 in the last, for SAL-4 and SAL-1 alike.",
    "- **SAL-4 matches BP of the same active width** (88.43 vs 88.14 at 9 layers, 88.18 vs 87.97 at 2, both within "
    "one std; not of the same size: SAL-4 holds 440k / 279k parameters against BP's 83k / 53k, and with the "
    "dual path a sample goes through its area and the shared path, two width-64 maps per layer) and beats SAL with one area and the same feedback (DFA with it: 87.76 ± 0.13 and 87.79 ± 0.23) by "
    "+0.67 at 9 layers (paired by seed +0.65, +0.46, +0.91) and +0.39 at 2: at width 64 the four areas' extra "
    "parameters pay a little, the one place in this study where the areas add something beyond the seeds' spread.",
    "",
]


# Hand-written reading of docs/DEPTH_mnist1d.md (issue 12, item 5, on MNIST-1D, where depth pays under BP), written by
# `--name DEPTH_mnist1d --out docs --from-json docs/results/depth/depth_m1d_*.json`.
MNIST1D_NOTES = [
    "**Reading (hand-written).** MNIST-1D at its full generated size (4,000 / 1,000), 25 epochs (the benchmark's "
    "budget), one lr (1e-3, not tuned) for every rule, 3 seeds; 2, 8 and 16 layers. The runs ran 2026-11-30 12:57-13:08 "
    "UTC, two at a time on the two cores next to other jobs (the times are rough); their records are "
    "docs/results/depth/depth_m1d_*.json.",
    "",
    "- **Here depth pays under BP, and not under SAL.** BP gains +10.3 points from 2 to 8 layers (39.2 ± 0.5 to "
    "49.5 ± 2.9) and +11.9 at 16; SAL-4 with today's defaults (stream Kolen-Pollack feedback, area lr x0.25, router "
    "lr x0.01) stays at 40.0 ± 1.0 / 40.0 ± 0.8 / 39.8 ± 2.5, and so does SAL with one area and the same feedback "
    "(40.0 / 40.5 / 39.9). DFA with fixed direct feedback gains +1.2 / +1.6, from a lower start (34.4). At 2 layers "
    "SAL is level with BP (40.0 vs 39.2); at 8 it is 9.5 points behind.",
    "- **Why not: the deep blocks' updates point roughly the right way, and still add nothing.** Router left out, "
    "the cosine between a middle / last block's update and its BP gradient after training is 0.72 / 0.72 at 8 layers "
    "and 0.75 / 0.74 at 16 for SAL-4 (0.72 / 0.68 and 0.75 / 0.66 for SAL-1), against 0.11 / 0.12 for fixed direct "
    "feedback. Stream feedback gives every block the same signal, the output error taken back to the end of the "
    "residual stream (docs/FEEDBACK.md): each block is trained as if the blocks after it were not there, so the "
    "blocks learn side by side, each reducing the same error, and none learns features for a later block to "
    "build on. That is what depth gives BP here. A cosine of 0.7 per block measures how well each block's step "
    "matches its gradient, not whether the blocks compose; the flat accuracy says they do not. (A hypothesis "
    "consistent with these runs, not tested by them: a feedback path that carries the later blocks' Jacobians, "
    "as layer-wise feedback does, would be the test, and layer-wise Kolen-Pollack hurt deep stacks on Digits, "
    "docs/DEPTH_FEEDBACK.md.)",
    "- **Against the issue's item 5**: a deep SAL does not beat its 2-layer self on MNIST-1D (+0.0 at 8 layers, -0.2 "
    "at 16), though BP shows that depth can pay on this set; on Fashion-MNIST (docs/DEPTH_FASHION.md) depth pays "
    "no rule; on Digits (docs/DEPTH_FEEDBACK.md) the same SAL-4 (stream Kolen-Pollack, today's lr multipliers) gains "
    "+4.2 at 8 layers.",
    "",
]


# Hand-written reading of docs/DEPTH_DEFAULTS.md (Digits, 2-128 layers, with what SALConfig() gives a residual stack),
# written by `--name DEPTH_DEFAULTS --out docs --from-json docs/results/depth/depth_def_s*.json`.
DEFAULTS_NOTES = [
    "**Reading (hand-written).** docs/DEPTH.md's study (Digits, 2 to 128 layers, the same blocks, budget and seeds "
    "0 and 1) with today's `SALConfig()` learning settings instead of the foundation design it was measured with: "
    "Kolen-Pollack direct feedback, the shared dense path beside the areas, identical area start, areas at lr x0.25 "
    "(1/K) and routers at lr x0.01. Run 2026-11-30 13:29-13:35 UTC next to two other jobs (the times are rough).",
    "",
    "- **128 layers train and keep their accuracy**: no NaN or Inf at any depth; 90.8 / 86.9 at 128 layers against "
    "89.4 / 88.6 at 2 (seeds 0 / 1): the 128-layer target (within 2 points of the 2-layer model) is met for both "
    "seeds, by +1.4 and -1.7.",
    "- **About 4 points above the foundation design at every depth** (DEPTH.md: 85.3-85.8 from 2 to 128 layers, "
    "seeds 0 and 1), and 8 and 32 layers a little above 2 (89.7 / 90.6 and 90.3 / 91.1 against 89.4 / 88.6), within "
    "what two seeds on 360 test images can tell. BP reaches 96-97 at 8-128 layers (DEPTH.md).",
    "- **The deep blocks still do not learn in BP's direction with direct feedback**: router left out, the middle "
    "and last blocks' cosine to their BP gradient is 0.07-0.27 at 8 to 128 layers (seed means 0.14-0.18), as in "
    'DEPTH.md; residual-stream feedback (`feedback="stream"`, docs/DEPTH_FEEDBACK.md) is what raises it.',
    "",
]


# Hand-written notes under the generated Digits table (docs/DEPTH.md).
DIGITS_NOTES = [
    "How a deep SAL model is built (`SALConfig(residual=True, norm=...)`): layer 0 maps the input to the "
    "width; every later hidden layer is a block `h_l = h_{l-1} + s f(A_l(norm_l(h_{l-1})))`, the output layer "
    "reads `norm(h_L)`. In SAL mode each block runs on a detached `h_{l-1}`, so its pre-activation `a_l` has a "
    "graph to its own norm, areas (and shared path) and nothing else; its router learns from its own local "
    "loss (tests/test_locality.py walks both graphs). "
    "The feedback `g_l = e B_l` is the signal at the block output; since `dh_l/da_l = s f'(a_l)` the local "
    "delta is `s g_l f'(a_l)`, and autograd inside the block turns it into updates of the block's areas and "
    "its norm. With layer-wise feedback the skip path also carries `g_{l+1}` back "
    "(tests/test_depth.py checks that feedback through the forward weights then equals BP exactly).",
    "",
    "`residual_scale` s defaults to `1/(number of blocks)`. With direct feedback every block receives an "
    "aligned signal, so the residual stream moves by the sum of all blocks' steps (Adam gives each about lr): "
    "with s = 1 that sum grows with depth, and deep DFA/SAL stacks trained worse. SAL test accuracy on "
    "digits, 10 epochs, the settings above, by branch scale (2 layers have no blocks: 85.3 seed 0, "
    "85.6 seed 1):",
    "",
    "| s | 8 layers | 32 layers | 128 layers |",
    "|---|---|---|---|",
    "| 1 | 79.2 (DFA 85.0) | - | - |",
    "| 1/sqrt(blocks) | 84.2 (DFA 86.9) | 85.3 | 83.9 (seed 1: 82.2; DFA 88.9 / 87.2) |",
    "| 1/blocks (default; the table above) | see above | see above | see above |",
    "",
    "Reading the table: nothing diverged (no NaN/Inf in any loss, activation or parameter, any depth, rule or "
    "seed). SAL stays flat from 2 to 128 layers (85.3 -> 85.3 seed 0, 85.6 -> 85.8 seed 1), DFA loses up to "
    "2.8 points at 128 layers and BP gains 2.5-2.8. The cosine between a deep block's update and its BP gradient "
    "stays near 0 (|cos| <= 0.15 in the middle and last hidden layer, against 0.2-0.45 for the first layer), so "
    "with direct feedback the deep blocks do not learn in BP's direction: s = 1/blocks keeps them from hurting, "
    "but depth buys SAL nothing here. Output norms grow mildly with depth (last hidden layer 28-31 at 2 "
    "layers, 41-44 at 128; 198 with s = 1/sqrt(blocks)). Two seeds, digits (1,437 training images): "
    "differences of a point or two are within seed noise.",
    "",
]


def sizes(result: dict) -> str:
    if "train_size" not in result:  # results saved before the sizes were recorded (the full Digits split)
        return ""
    return f" ({result['train_size']:,} training images, {result['test_size']:,} test images)"


def fmt(values: list[float], digits: int = 2) -> str:
    return " / ".join(f"{v:.{digits}g}" if abs(v) < 1e-2 or abs(v) >= 1e3 else f"{v:.{digits}f}" for v in values)


def variant(result: dict) -> str:
    """The rule, with its feedback where it is not the published one (direct, fixed): `sal (layerwise, ...)`."""
    feedback = result.get("feedback", "direct, fixed")
    plain = feedback in ("-", "direct, fixed") or (result["rule"] == "fa" and feedback == "layerwise, fixed")
    rule = rule_name(result)
    return rule if plain else f"{rule} ({feedback})"


def rule_name(result: dict) -> str:
    """`sal-1` for SAL with one area (DFA's architecture with SAL's feedback choice), `sal+` for SAL with today's area
    design, else the rule."""
    if result["rule"] == "sal" and result.get("num_areas") == 1:
        return "sal-1"
    name = result["rule"] + ("+" if result.get("areas") == "defaults" else "")
    scales = ", ".join(
        f"{group.removesuffix('_lr_scale')} lr x{scale:g}" for group, scale in result.get("lr_groups", {}).items()
    )
    return f"{name} [{scales}]" if scales else name


def write_report(results: list[dict], args, out: Path, command: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rules = list(dict.fromkeys(variant(r) for r in results))
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for rule in rules:
        depths = sorted({r["depth"] for r in results if variant(r) == rule})

        def mean(key, depth, index=None, rule=rule):  # over seeds
            values = [
                r[key] if index is None else r[key][index] for r in results if (variant(r), r["depth"]) == (rule, depth)
            ]
            return sum(values) / len(values)

        axes[0].plot(depths, [100 * mean("accuracy", d) for d in depths], "o-", label=rule)
        axes[1].plot(depths, [mean("activation_norm", d, -1) for d in depths], "o-", label=f"{rule} last")
        axes[1].plot(depths, [mean("activation_norm", d, 0) for d in depths], "x--", label=f"{rule} first")
        axes[2].plot(depths, [mean("update_norm", d, -1) for d in depths], "o-", label=f"{rule} last")
        axes[2].plot(depths, [mean("update_norm", d, 0) for d in depths], "x--", label=f"{rule} first")
    titles = ["test accuracy % (mean over seeds)", "hidden output norm (probe)", "update norm (probe)"]
    for ax, title in zip(axes, titles):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("layers")
        ax.set_title(title)
        ax.legend(fontsize=7)
    axes[1].set_yscale("log")
    axes[2].set_yscale("log")
    fig.tight_layout()
    fig.savefig(out / f"{args.name.lower()}.png", dpi=110)

    lines = [
        f"# Depth: {min(r['depth'] for r in results)} to {max(r['depth'] for r in results)} layers",
        "",
        f"Dataset `{args.dataset}`{sizes(results[0])}; residual pre-norm ({args.norm}) blocks of width {args.width}; SAL with "
        f"K={args.areas} areas (`sal`: the foundation's areas only, independent start; `sal+`: SALConfig's area "
        "defaults, a shared dense path beside the areas, identical start; in both every parameter steps at the full lr "
        "unless the rule names its lr groups, `sal+ [area lr x0.25, router lr x0.01]`: `--lr-groups` applies the "
        "config's `area_lr_scale` and `router_lr_scale` as SALTrainer does), `sal-1`: SAL with one area (DFA with "
        f"SAL's feedback choice), DFA and BP with K=1 (*feedback*: each local rule's feedback path and matrices, docs/FEEDBACK.md); AdamW lr {args.lr}, batch {args.batch_size}, "
        f"{args.epochs} epochs; the same budget for every depth, rule and seed. Page written on {cpu_name()}, torch "
        f"{torch.__version__}; each run used the `--threads` of its command (the records, docs/results/depth/, name "
        "their machine).",
        "",
        f"Reproduce: {command if command.startswith('`') else f'`{command}`'}",
        "",
        "Columns: first / middle / last hidden layer. *act norm*: mean per-sample L2 norm of the layer's output "
        "on a probe batch (the first training batch) after training. *update norm*: norm of the rule's update "
        "(its gradient, before AdamW) of the layer's parameters on the probe batch. *cos to BP*: cosine between "
        "that update and the true backprop gradient of the same parameters, at initialisation and after "
        "training (BP's is 1 by definition). *without router*: the same cosine leaving out the router's projection, "
        "which learns from its own local objective and gets no gradient from BP (top-1 routing is not "
        "differentiable), so in the first cosine it only dilutes the alignment of the layer's other parameters "
        "(recorded since 2026-11-29 16:00 UTC; `-` for older runs).",
        "",
        "| layers | rule | feedback | seed | test acc % | NaN/Inf | act norm | update norm | cos to BP (init) "
        "| cos to BP (end) | cos to BP without router (end) | time s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['depth']} | {rule_name(r)} | {r.get('feedback', 'direct, fixed')} | {r.get('seed', 0)} "
            f"| {100 * r['accuracy']:.1f} | "
            f"{'yes' if r['nan_or_inf'] else 'no'} | "
            f"{fmt(r['activation_norm'])} | {fmt(r['update_norm'])} | {fmt(r['cos_to_bp_init'])} | "
            f"{fmt(r['cos_to_bp'])} | {fmt(r['cos_to_bp_forward']) if 'cos_to_bp_forward' in r else '-'} | "
            f"{r['seconds']:.0f} |"
        )
    lines += ["", f"![accuracy and norms against depth]({args.name.lower()}.png)", ""]
    if args.name == "DEPTH":  # the design notes and the reading of the committed Digits run
        lines += [
            "The same study on Fashion-MNIST (a class-balanced training subset): "
            "[DEPTH_fashion_mnist.md](DEPTH_fashion_mnist.md).",
            "",
            *DIGITS_NOTES,
        ]
    else:
        lines += ["The Digits study, with the design notes and the residual-scale sweep: [DEPTH.md](DEPTH.md).", ""]
    lines += mean_table(results, rules)
    lines += FEEDBACK_NOTES if args.name == "DEPTH_FEEDBACK" else []
    lines += FASHION_NOTES if args.name == "DEPTH_FASHION" else []
    lines += MNIST1D_NOTES if args.name == "DEPTH_mnist1d" else []
    lines += DEFAULTS_NOTES if args.name == "DEPTH_DEFAULTS" else []
    sals = [rule for rule in rules if rule.startswith("sal")]
    for rule, seed in [(rule, seed) for rule in sals for seed in sorted({r.get("seed", 0) for r in results})]:
        sal = {r["depth"]: r for r in results if variant(r) == rule and r.get("seed", 0) == seed}
        name = "SAL" if rule == "sal" else rule.replace("sal", "SAL", 1)
        if not (sal and min(sal) == 2 and max(sal) >= 128):
            continue
        deep, shallow = sal[max(sal)], sal[2]
        gap = 100 * (shallow["accuracy"] - deep["accuracy"])
        met = not deep["nan_or_inf"] and gap <= 2.0
        lines += [
            f"Target, {name}, seed {seed} (at {deep['depth']} layers: no NaN/Inf, within 2 points of its 2-layer "
            f"accuracy): {'met' if met else 'NOT met'}: {100 * deep['accuracy']:.1f}% vs "
            f"{100 * shallow['accuracy']:.1f}% ({gap:+.1f} points lost), NaN/Inf "
            f"{'seen' if deep['nan_or_inf'] else 'none'}.",
            "",
        ]
    (out / f"{args.name}.md").write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="fashion_mnist", help="a name sal_hf.data.load_image_dataset knows")
    parser.add_argument("--quick", action="store_true", help="digits instead of --dataset")
    parser.add_argument("--depths", type=int, nargs="+", default=[2, 8, 32, 128])
    parser.add_argument("--rules", nargs="+", default=["sal", "dfa", "bp"], choices=["sal", "dfa", "fa", "bp"])
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--areas", type=int, default=4)
    parser.add_argument("--norm", default="layernorm", choices=["layernorm", "rmsnorm"])
    parser.add_argument(
        "--area-defaults",
        action="store_true",
        help="SAL with SALConfig's area defaults (shared path, identical start) instead of the foundation's (areas "
        "only, independent start, area lr x1), which docs/DEPTH.md was measured with",
    )
    parser.add_argument(
        "--lr-groups",
        action="store_true",
        help="apply the config's area_lr_scale and router_lr_scale as SALTrainer does (today's defaults: the router "
        "at lr x0.01); without it every parameter steps at --lr, as when the depth pages were measured",
    )
    parser.add_argument("--feedback", default="direct", choices=FEEDBACK_MODES, help="SAL's feedback path")
    parser.add_argument(
        "--feedback-alignment",
        default="fixed",
        choices=["fixed", "kolen_pollack", "sign"],
        help="how the local rules' feedback matrices are made (docs/FEEDBACK.md)",
    )
    parser.add_argument("--residual-scale", type=float, default=None, help="default: SALConfig's 1/blocks")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-train", type=int, default=None, help="class-balanced training subset (reduced run)")
    parser.add_argument(
        "--name",
        default=None,
        help="report <out>/<name>.md and <name>.png (default: DEPTH for digits, DEPTH_<dataset> otherwise)",
    )
    parser.add_argument("--out", type=Path, default=Path("docs"))
    parser.add_argument("--tag", default="", help="suffix of outputs/depth<tag>.json")
    parser.add_argument(
        "--from-json", type=Path, nargs="+", default=None, help="only rewrite the report from saved results"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.dataset = "digits"
    given_name = args.name
    args.name = args.name or ("DEPTH" if args.dataset == "digits" else f"DEPTH_{args.dataset}")
    if min(args.depths) < 2:
        raise ValueError(f"--depths counts layers including the output layer, so each must be >= 2; got {args.depths}.")
    command = "python " + shlex.join(sys.argv)  # quoted: --from-json parses it back
    if args.from_json:
        args.out.mkdir(parents=True, exist_ok=True)
        saved = [json.loads(path.read_text()) for path in args.from_json]
        # The page's header describes the runs (their epochs, lr, ...), not this call's defaults.
        recorded = [parser.parse_args(shlex.split(record["command"])[2:]) for record in saved]
        for record in recorded:
            record.dataset = "digits" if record.quick else record.dataset
        for field in ("dataset", "norm", "width", "epochs", "batch_size", "lr", "max_train"):
            values = {getattr(record, field) for record in recorded}
            if len(values) > 1:
                raise SystemExit(f"--from-json: the records ran with different --{field.replace('_', '-')}: {values}.")
            setattr(args, field, values.pop())
        args.areas = max(record.areas for record in recorded)
        if not given_name:  # named after the records' dataset
            args.name = "DEPTH" if args.dataset == "digits" else f"DEPTH_{args.dataset}"
        results = [r for record in saved for r in record["results"]]
        results.sort(
            key=lambda r: (r["depth"], ["sal", "dfa", "fa", "bp"].index(r["rule"]), variant(r), r.get("seed", 0))
        )
        write_report(results, args, args.out, " and ".join(f"`{record['command']}`" for record in saved))
        return
    data = load(args.dataset, args.seed, args.max_train)
    results = []
    for depth in args.depths:
        for rule in args.rules:
            result = run(rule, depth, data, args)
            results.append(result)
            print(json.dumps(result), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    records = ROOT / "docs" / "results" / "depth"
    records.mkdir(parents=True, exist_ok=True)
    hardware = f"{cpu_name()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}"
    payload = {"command": command, "hardware": hardware, "results": results}
    (records / f"depth{args.tag}.json").write_text(json.dumps(payload, indent=1))
    write_report(results, args, args.out, command)
    print((args.out / f"{args.name}.md").read_text())


if __name__ == "__main__":
    main()
