"""Benchmark the SAL transformer on real text against BP and DFA, through `SALTrainer` (the path users take).

One architecture, one flag apart: `bp` (end-to-end backprop, dense MLP), `dfa` (block-local direct feedback,
dense MLP) and `sal` with K = 1, 4 and 16 areas per block. Two tasks, both offline on Debian's fortunes
(`sal_hf.text_data`): causal language modelling (validation loss and bits per byte) and text classification (which
category file a quote comes from; accuracy). Protocol, the same for every variant: AdamW (no weight decay),
constant lr, the same batch and number of optimizer steps; each variant's lr is picked from `--lr-grid` by the
validation split with seed `--seeds[0]` (lowest validation loss; highest validation accuracy for classification),
then the remaining seeds are trained with that lr (the tuning run of the first seed is reused). Test-split numbers
are reported beside the validation ones, since the validation split chose the lr.

Everything runs in one process, one run after another, so tokens per second are comparable within the run
(relative to BP); step time excludes evaluation. Each finished run is stored at once under
`docs/results/runs/text/` (ignored by git), so an interrupted benchmark keeps what it finished; `report` turns the
records into `docs/results/text_{lm,cls}.json`, `docs/img/text_*.png` and `docs/RESULTS_TEXT.md`.

    python scripts/benchmark_text.py run                          # the issue's full size: 4 blocks, d 256, ctx 128
    python scripts/benchmark_text.py run --hidden-size 128 --layers 2 --context 64 --lm-steps 300 \\
        --cls-steps 200 --seeds 0 --lr-grid 1e-3 3e-3 --label REDUCED    # a reduced run (labelled in the page)
    python scripts/benchmark_text.py report
    python scripts/benchmark_text.py --quick                      # smoke test of run + report, 2-4 minutes

A full-size run on 2 CPU cores takes many hours; see docs/RESULTS_TEXT.md for what was run and how long it took.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from machine import cpu_name  # scripts/machine.py, beside this file


ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# name -> (learning_rule, num_areas): every variant shares the architecture flags of the run. `sal-1` is the same
# model and rule as `dfa` (`learning_rule="dfa"` names the dense K = 1 case; `--quick` shows identical numbers), so
# it is left out of the default list.
VARIANTS = {
    "bp": ("bp", 1),
    "dfa": ("dfa", 1),
    "sal-1": ("sal", 1),
    "sal-4": ("sal", 4),
    "sal-16": ("sal", 16),
}
# Ablations of the best SAL variant (K > 1, by validation bits per byte), language modelling, first seed, at that
# variant's tuned lr: name suffix -> (SALTransformerConfig fields changed, what the page says of it)
# (SAL-METHOD.md section 5's switches). `shared` puts back the shared dense path beside the areas: the config's
# default until 2026-11-29, when unset `dual_path` derived `num_areas > 1`; `shared+...` name the records of the
# other switches made on top of it then.
ABLATIONS = {
    "micro": ({"feedback_points": "micro"}, "adds a feedback point after each attention sublayer"),
    "vocab": (
        {"error_source": "vocab"},
        "projects the vocabulary error through a fixed random V x d matrix instead of the error at the final hidden "
        "state",
    ),
    "shared": ({"dual_path": True}, "adds the shared dense path beside the areas (the previous default)"),
    "shared+micro": ({"dual_path": True, "feedback_points": "micro"}, "both `shared` and `micro`"),
    "shared+vocab": ({"dual_path": True, "error_source": "vocab"}, "both `shared` and `vocab`"),
    "kp": (
        {"feedback_alignment": "kolen_pollack"},
        "learns the feedback matrices by direct Kolen-Pollack (each gets the outer product of the error and its "
        "point's output; local signals only, no weight transport) instead of keeping them fixed",
    ),
    "identity": (
        {"feedback_alignment": "identity"},
        "sends the error at the final hidden state to every block unprojected (B_l = I: the true gradient at the last "
        "block's output, the residual skip path's for earlier blocks; no forward weight read)",
    ),
    "identity+micro": ({"feedback_alignment": "identity", "feedback_points": "micro"}, "both `identity` and `micro`"),
    "identity+slow-router": (
        {"feedback_alignment": "identity", "router_lr_scale": 0.01},
        "`identity` with the routing projections at lr x0.01 (`router_lr_scale`, the MLP's default since "
        "docs/ROUTING.md; the transformer's stays 1.0)",
    ),
}
DEFAULT_ABLATIONS = ["micro", "vocab", "shared"]
# Records made before a record stored its model's effective `dual_path` (see `record_dual_path`).
LEGACY_DUAL_PATH = "records without a `dual_path` field predate 2026-11-29, when unset dual_path derived num_areas > 1"
PROMPTS = ["A bore is", "Computers are", "The secret of"]
RECORDS = ROOT / "docs" / "results" / "runs" / "text"


@dataclass
class Setup:
    """What every run of one benchmark shares; stored in each record so a report never mixes setups."""

    hidden_size: int = 256
    layers: int = 4
    heads: int = 4
    context: int = 128
    vocab_size: int = 1024
    batch_size: int = 32
    lm_steps: int = 2000
    cls_steps: int = 1000
    cls_max_length: int = 64
    eval_every: int = 100
    curve_eval_blocks: int = 128
    config_overrides: dict = field(default_factory=dict)
    label: str = ""

    def key(self) -> str:
        text = json.dumps({k: v for k, v in asdict(self).items() if k != "label"}, sort_keys=True)
        return hashlib.sha1(text.encode()).hexdigest()[:10]


def run_key(task: str, variant: str, lr: float, seed: int) -> str:
    return f"{task}_{variant}_lr{lr:g}_seed{seed}"


def build_lm_data(setup: Setup):
    from sal_hf.text_data import group_texts, load_fortunes_lm, token_byte_lengths, train_tokenizer

    raw = load_fortunes_lm(seed=0)
    tokenizer = train_tokenizer(list(raw["train"]["text"]), vocab_size=setup.vocab_size)

    def tokenize(batch):
        ids = tokenizer(batch["text"], add_special_tokens=False)["input_ids"]
        return {"input_ids": [row + [tokenizer.eos_token_id] for row in ids]}

    grouped = raw.map(tokenize, batched=True, remove_columns=["text"]).map(
        group_texts, batched=True, fn_kwargs={"block_size": setup.context}
    )
    data = {split: grouped[split].with_format("torch") for split in grouped}
    return tokenizer, data, token_byte_lengths(tokenizer)


def build_cls_data(setup: Setup):
    from sal_hf.text_data import load_fortunes_classification, train_tokenizer

    raw = load_fortunes_classification(seed=0)
    tokenizer = train_tokenizer(
        list(raw["train"]["text"]), vocab_size=setup.vocab_size, model_max_length=setup.cls_max_length
    )

    def tokenize(batch):
        encoded = tokenizer(batch["text"], truncation=True, max_length=setup.cls_max_length)
        return {**encoded, "labels": batch["label"]}

    data = raw.map(tokenize, batched=True, remove_columns=["text", "label"])
    return tokenizer, data, raw["train"].features["label"].names


def base_variant(variant: str) -> tuple[str, dict]:
    """`sal-4+micro` -> (`sal-4`, the ablation's config fields)."""
    base, _, ablation = variant.partition("+")  # an ablation's own name may hold "+" too
    return base, dict(ABLATIONS[ablation][0]) if ablation else {}


def explicit_dual_path(setup: Setup, variant: str) -> bool | None:
    """`dual_path` as the variant (its ablation) or `--config-overrides` set it; None = the config derives it."""
    value = {**setup.config_overrides, **base_variant(variant)[1]}.get("dual_path")
    return value.lower() == "true" if isinstance(value, str) else value


def record_dual_path(setup: Setup, record: dict) -> bool:
    """The effective `dual_path` of the model a record was made with: stored in the record since 2026-11-29; older
    records derived an unset `dual_path` as `num_areas > 1` (the default then)."""
    if "dual_path" in record:
        return bool(record["dual_path"])
    explicit = explicit_dual_path(setup, record["variant"])
    return bool(explicit) if explicit is not None else VARIANTS[base_variant(record["variant"])[0]][1] > 1


def check_records(setup: Setup, folder: Path) -> None:
    """Refuse a folder holding a record whose model's `dual_path` differs from what its variant gives now (a
    default changed since): reused or reported, it would silently stand for another model."""
    import sal_hf

    for path in sorted(folder.glob("*_seed*.json")):
        record = json.loads(path.read_text())
        rule, areas = VARIANTS[base_variant(record["variant"])[0]]
        now = sal_hf.SALTransformerConfig(
            hidden_size=setup.hidden_size, num_attention_heads=setup.heads, num_areas=areas, learning_rule=rule,
            dual_path=explicit_dual_path(setup, record["variant"]),
        ).effective_dual_path  # fmt: skip
        if record_dual_path(setup, record) != now:
            raise SystemExit(
                f"{path} was made with dual_path={record_dual_path(setup, record)}, but {record['variant']} now gives "
                f"dual_path={now} (a default changed; {LEGACY_DUAL_PATH}). Move the record aside, or rename it (and "
                "its `variant`) to the ablation it now is, e.g. `sal-4+shared`."
            )


def make_config(setup: Setup, variant: str, tokenizer, **extra):
    import sal_hf

    base, ablation = base_variant(variant)
    rule, areas = VARIANTS[base]
    # Fixed feedback unless the ablation says otherwise: every `sal-K` / `dfa` record was made with it (before
    # 2026-11-29 it was the only kind); SALTransformerConfig's default for `sal` is now `identity`: `sal-K+identity`.
    extra = {"feedback_alignment": "fixed", **setup.config_overrides, **ablation, **extra}
    return sal_hf.SALTransformerConfig(
        vocab_size=len(tokenizer),
        hidden_size=setup.hidden_size,
        num_hidden_layers=setup.layers,
        num_attention_heads=setup.heads,
        max_position_embeddings=max(setup.context, setup.cls_max_length),
        num_areas=areas,
        learning_rule=rule,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **extra,
    )


def step_timer():
    """A callback that sums the wall time of optimizer steps (forward, update, routing statistics), not evals."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        seconds = 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            self._start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.seconds += time.perf_counter() - self._start

    return StepTimer()


def training_args(setup: Setup, lr: float, seed: int, steps: int, output_dir: str, eval_batch: int = 64):
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=output_dir,
        max_steps=steps,
        learning_rate=lr,
        per_device_train_batch_size=setup.batch_size,
        per_device_eval_batch_size=eval_batch,
        lr_scheduler_type="constant",
        weight_decay=0.0,
        max_grad_norm=1.0,
        eval_strategy="steps",
        eval_steps=setup.eval_every,
        logging_steps=setup.eval_every,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        seed=seed,
        data_seed=seed,
        dataloader_num_workers=0,
    )


def area_health(trainer) -> dict[str, float]:
    """The area statistics of the last training log (SALTrainer adds `area/...` keys to every log)."""
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    return {k: v for k, v in (logs[-1] if logs else {}).items() if k.startswith("area/")}


def lm_run(setup: Setup, data, tokenizer, byte_lengths, variant: str, lr: float, seed: int, samples: bool) -> dict:
    import tempfile

    import torch
    from transformers import AutoModelForCausalLM, default_data_collator, set_seed

    import sal_hf
    from sal_hf.text_data import bits_per_byte, predicted_bytes

    set_seed(seed)
    model = AutoModelForCausalLM.from_config(make_config(setup, variant, tokenizer))
    curve_set = data["validation"].select(range(min(setup.curve_eval_blocks, len(data["validation"]))))
    timer = step_timer()
    with tempfile.TemporaryDirectory() as output_dir:
        trainer = sal_hf.SALTrainer(
            model=model,
            args=training_args(setup, lr, seed, setup.lm_steps, output_dir),
            train_dataset=data["train"],
            eval_dataset=curve_set,
            data_collator=default_data_collator,
            callbacks=[timer],
        )
        start = time.perf_counter()
        trainer.train()
        wall = time.perf_counter() - start

        def score(split) -> dict:
            loss = trainer.evaluate(split, metric_key_prefix="x")["x_loss"]
            tokens = len(split) * (setup.context - 1)
            text_bytes = predicted_bytes(split[:]["labels"], byte_lengths)
            return {"loss": loss, "bits_per_byte": bits_per_byte(loss * tokens, text_bytes), "bytes": text_bytes}

        curve_bytes = predicted_bytes(curve_set[:]["labels"], byte_lengths)
        curve_tokens = len(curve_set) * (setup.context - 1)
        curve = [
            {
                "step": e["step"],
                "loss": e["eval_loss"],
                "bits_per_byte": bits_per_byte(e["eval_loss"] * curve_tokens, curve_bytes),
            }
            for e in trainer.state.log_history
            if "eval_loss" in e
        ]
        train_losses = [{"step": e["step"], "loss": e["loss"]} for e in trainer.state.log_history if "loss" in e]
        validation, test = score(data["validation"]), score(data["test"])
        record = {
            "task": "lm",
            "variant": variant,
            "lr": lr,
            "seed": seed,
            "validation": validation,
            "test": test,
            "curve": curve,
            "train_loss": train_losses,
            "train_tokens_per_second": setup.lm_steps * setup.batch_size * setup.context / max(timer.seconds, 1e-9),
            "step_seconds": timer.seconds / setup.lm_steps,
            "wall_seconds": wall,
            "area_health": area_health(trainer),
            "parameters": model.num_parameters(),
            "dual_path": model.config.effective_dual_path,
            "finite": bool(math.isfinite(validation["loss"])),
        }
    if samples:
        model.eval()
        texts = []
        for i, prompt in enumerate(PROMPTS):
            torch.manual_seed(i)
            ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
            out = model.generate(
                ids, max_new_tokens=40, do_sample=True, top_k=40, temperature=0.8, pad_token_id=tokenizer.pad_token_id
            )
            texts.append(tokenizer.decode(out[0], skip_special_tokens=True))
        record["samples"] = texts
    return record


def cls_run(setup: Setup, data, tokenizer, names, variant: str, lr: float, seed: int) -> dict:
    import tempfile

    import numpy as np
    from transformers import AutoModelForSequenceClassification, DataCollatorWithPadding, set_seed

    import sal_hf

    set_seed(seed)
    config = make_config(
        setup, variant, tokenizer, num_labels=len(names), id2label=dict(enumerate(names)),
        label2id={n: i for i, n in enumerate(names)},
    )  # fmt: skip
    model = AutoModelForSequenceClassification.from_config(config)

    def accuracy(prediction) -> dict:
        return {"accuracy": float((np.argmax(prediction.predictions, -1) == prediction.label_ids).mean())}

    timer = step_timer()
    with tempfile.TemporaryDirectory() as output_dir:
        trainer = sal_hf.SALTrainer(
            model=model,
            args=training_args(setup, lr, seed, setup.cls_steps, output_dir, eval_batch=128),
            train_dataset=data["train"],
            eval_dataset=data["validation"],
            data_collator=DataCollatorWithPadding(tokenizer),
            compute_metrics=accuracy,
            callbacks=[timer],
        )
        start = time.perf_counter()
        trainer.train()
        wall = time.perf_counter() - start
        validation = trainer.evaluate(data["validation"], metric_key_prefix="x")
        test = trainer.evaluate(data["test"], metric_key_prefix="x")
        curve = [
            {"step": e["step"], "loss": e["eval_loss"], "accuracy": e["eval_accuracy"]}
            for e in trainer.state.log_history
            if "eval_accuracy" in e
        ]
        return {
            "task": "cls",
            "classes": len(names),
            "variant": variant,
            "lr": lr,
            "seed": seed,
            "validation": {"loss": validation["x_loss"], "accuracy": validation["x_accuracy"]},
            "test": {"loss": test["x_loss"], "accuracy": test["x_accuracy"]},
            "curve": curve,
            "step_seconds": timer.seconds / setup.cls_steps,
            "wall_seconds": wall,
            "area_health": area_health(trainer),
            "parameters": model.num_parameters(),
            "dual_path": model.config.effective_dual_path,
            "finite": bool(math.isfinite(validation["x_loss"])),
        }


def better(task: str, a: dict, b: dict | None) -> bool:
    """Is run `a` a better tuning result than `b` on the validation split?"""
    if b is None:
        return True
    if task == "lm" or not math.isfinite(b["validation"]["loss"]):
        return a["validation"]["loss"] < b["validation"]["loss"]
    return (a["validation"]["accuracy"], -a["validation"]["loss"]) > (
        b["validation"]["accuracy"],
        -b["validation"]["loss"],
    )


def run(args: argparse.Namespace) -> None:
    import torch

    setup = Setup(
        hidden_size=args.hidden_size,
        layers=args.layers,
        heads=args.heads,
        context=args.context,
        vocab_size=args.vocab_size,
        batch_size=args.batch_size,
        lm_steps=args.lm_steps,
        cls_steps=args.cls_steps,
        cls_max_length=args.cls_max_length,
        eval_every=args.eval_every,
        curve_eval_blocks=args.curve_eval_blocks,
        config_overrides=dict(kv.split("=", 1) for kv in args.config_overrides) if args.config_overrides else {},
        label=args.label,
    )
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.set_verbosity_error()
    if args.threads:
        torch.set_num_threads(args.threads)
    folder = Path(args.records) / setup.key()
    folder.mkdir(parents=True, exist_ok=True)
    # One folder per setup; a later invocation (more seeds, another lr, the ablations) adds to it, reusing what
    # exists, and the meta data records every invocation.
    previous = json.loads((folder / "meta.json").read_text()) if (folder / "meta.json").exists() else {}

    def union(key: str, values: list) -> list:
        return list(dict.fromkeys([*previous.get(key, []), *values]))

    invocation = {
        "command": "python scripts/benchmark_text.py " + " ".join(sys.argv[1:]),
        "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    }
    invocations = previous.get("invocations") or (
        [{k: previous[k] for k in ("command", "started", "finished", "run_seconds") if k in previous}]
        if previous
        else []
    )
    meta = {
        "setup": asdict(setup),
        "seeds": union("seeds", args.seeds),
        "lr_grid": union("lr_grid", args.lr_grid),
        "variants": union("variants", args.variants),
        "ablations": union("ablations", args.ablations),
        "tasks": union("tasks", args.tasks),
        "hardware": {
            "cpu": cpu_name(),
            "logical_cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "platform": platform.platform(),
        },
        "versions": versions(),
        "invocations": [*invocations, invocation],
        **({"notes": previous["notes"]} if previous.get("notes") else {}),  # what was done to the records by hand
    }
    check_records(setup, folder)
    (folder / "meta.json").write_text(json.dumps(meta, indent=2))
    start = time.perf_counter()
    built = {task: build_lm_data(setup) if task == "lm" else build_cls_data(setup) for task in args.tasks}
    # Phase 1, every task first: the lr of each variant on the validation split, first seed. Phase 2: the other
    # seeds at that lr. An interrupted run so keeps a tuned result of every variant of every task.
    best: dict[tuple[str, str], dict] = {}
    for phase in (1, 2):
        for task in args.tasks:
            tokenizer, data, extra = built[task]
            if phase == 1:
                plan = [(v, lr, args.seeds[0]) for v in args.variants for lr in args.lr_grid]
            else:
                plan = [(v, best[task, v]["lr"], s) for v in args.variants for s in args.seeds[1:]]
            for variant, lr, seed in plan:
                path = folder / f"{run_key(task, variant, lr, seed)}.json"
                if path.exists():
                    record = json.loads(path.read_text())
                else:
                    t0 = time.perf_counter()
                    if task == "lm":
                        record = lm_run(setup, data, tokenizer, extra, variant, lr, seed, samples=True)
                    else:
                        record = cls_run(setup, data, tokenizer, extra, variant, lr, seed)
                    record["run_seconds"] = time.perf_counter() - t0
                    path.write_text(json.dumps(record, indent=2))
                metric = record["validation"].get("bits_per_byte", record["validation"].get("accuracy"))
                print(
                    f"[{time.perf_counter() - start:7.0f}s] {task} {variant:7s} lr {lr:g} seed {seed}: "
                    f"val loss {record['validation']['loss']:.4f} ({metric:.4f}), "
                    f"{record['step_seconds'] * 1000:.0f} ms/step",
                    flush=True,
                )
                if phase == 1 and better(task, record, best.get((task, variant))):
                    best[task, variant] = record
        if phase == 1:  # the lr chosen from every first-seed record of the folder, earlier invocations' too
            for record in map(json.loads, (p.read_text() for p in folder.glob("*_seed*.json"))):
                key = (record["task"], record["variant"])
                if record["seed"] == args.seeds[0] and key in best and better(record["task"], record, best[key]):
                    best[key] = record
        if phase == 1 and args.ablations and "lm" in args.tasks:
            sal = [v for v in args.variants if v in VARIANTS and VARIANTS[v][0] == "sal" and VARIANTS[v][1] > 1]
            if sal:
                base = min(sal, key=lambda v: best["lm", v]["validation"]["loss"])
                tokenizer, data, extra = built["lm"]
                for name in args.ablations:
                    variant, lr, seed = f"{base}+{name}", best["lm", base]["lr"], args.seeds[0]
                    path = folder / f"{run_key('lm', variant, lr, seed)}.json"
                    if not path.exists():
                        t0 = time.perf_counter()
                        record = lm_run(setup, data, tokenizer, extra, variant, lr, seed, samples=False)
                        record["run_seconds"] = time.perf_counter() - t0
                        path.write_text(json.dumps(record, indent=2))
                    record = json.loads(path.read_text())
                    print(
                        f"[{time.perf_counter() - start:7.0f}s] lm {variant} lr {lr:g} seed {seed}: val loss "
                        f"{record['validation']['loss']:.4f} ({record['validation']['bits_per_byte']:.4f})",
                        flush=True,
                    )
    invocation["finished"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    invocation["run_seconds"] = time.perf_counter() - start
    (folder / "meta.json").write_text(json.dumps(meta, indent=2))
    print(f"records in {folder}; this invocation {invocation['run_seconds']:.0f} s")


def versions() -> dict[str, str]:
    import datasets
    import tokenizers
    import torch
    import transformers

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
        "datasets": datasets.__version__,
    }


def load_records(folder: Path) -> tuple[dict, list[dict]]:
    meta = json.loads((folder / "meta.json").read_text())
    records = [json.loads(p.read_text()) for p in sorted(folder.glob("*_seed*.json"))]
    return meta, records


def previous_default_rows(meta: dict, records: list[dict]) -> list[str]:
    """`sal-K+shared` for every SAL variant of the table with such records: the shared path beside the areas, the
    default until 2026-11-29, shown under the variant in the main tables."""
    shared = [
        f"{v}+shared" for v in meta["variants"] if v in VARIANTS and VARIANTS[v][0] == "sal" and VARIANTS[v][1] > 1
    ]
    return [v for v in shared if any(r["variant"] == v for r in records)]


def display_name(variant: str) -> str:
    """`sal-4+shared` -> `sal-4 + shared path (previous default)`, `sal-4+identity` -> `sal-4 + identity feedback
    (the default)`; other names as they are."""
    if variant.endswith("+shared"):
        return variant[: -len("+shared")] + " + shared path (previous default)"
    if variant.endswith("+identity"):
        base = variant[: -len("+identity")]
        return base + " + identity feedback" + (" (the default)" if base.startswith("sal") else "")
    return variant


def sal_groups(summary: dict) -> dict[str, list[str]]:
    """The tuned SAL rows (K > 1) of a table by their switches: `""` (fixed feedback) -> [`sal-4`, `sal-16`],
    `"+identity"` -> [`sal-4+identity`, ...]; the previous default's `+shared` rows are left out."""
    groups: dict[str, list[str]] = {}
    for variant in summary:
        base, _, switches = variant.partition("+")
        if base in VARIANTS and VARIANTS[base][0] == "sal" and VARIANTS[base][1] > 1 and switches != "shared":
            groups.setdefault(f"+{switches}" if switches else "", []).append(variant)
    return dict(sorted(groups.items(), key=lambda item: item[0] != "+identity"))  # the default's rows first


def summarise(meta: dict, records: list[dict], task: str) -> dict:
    """Per variant (the run's, then `previous_default_rows`): the chosen lr (tuning on validation, first seed), and
    mean / std over seeds at that lr."""
    import numpy as np

    seeds = meta["seeds"]
    out = {}
    for variant in [*meta["variants"], *previous_default_rows(meta, records)]:
        tuning = [r for r in records if r["task"] == task and r["variant"] == variant and r["seed"] == seeds[0]]
        if not tuning:
            continue
        chosen = tuning[0]
        for r in tuning[1:]:
            if better(task, r, chosen):
                chosen = r
        runs = [r for r in records if r["task"] == task and r["variant"] == variant and r["lr"] == chosen["lr"]]
        runs = [r for r in runs if r["seed"] in seeds]
        metrics = ["loss", "bits_per_byte"] if task == "lm" else ["loss", "accuracy"]
        row = {"lr": chosen["lr"], "seeds": sorted(r["seed"] for r in runs), "grid": {}}
        for r in tuning:
            row["grid"][f"{r['lr']:g}"] = r["validation"]["bits_per_byte" if task == "lm" else "accuracy"]
        for split in ("validation", "test"):
            for m in metrics:
                values = np.array([r[split][m] for r in runs], dtype=float)
                row[f"{split}_{m}"] = float(values.mean())
                row[f"{split}_{m}_std"] = float(values.std())
        # Step time: the median over every run of the variant (all lrs and seeds), since other jobs share the CPUs.
        timed = [r["step_seconds"] for r in records if r["task"] == task and r["variant"] == variant]
        row["step_seconds"] = float(np.median(timed))
        row["area_health"] = runs[0]["area_health"]
        row["samples"] = next((r["samples"] for r in runs if r.get("samples")), [])
        row["curves"] = [r["curve"] for r in runs]
        row["parameters"] = runs[0]["parameters"]
        row["all_finite"] = all(r["finite"] for r in runs)
        out[variant] = row
    return out


def plot_curves(summary: dict, task: str, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    metric = "bits_per_byte" if task == "lm" else "accuracy"
    fig, ax = plt.subplots(figsize=(6, 4))
    for variant, row in summary.items():
        curves = [c for c in row["curves"] if c]
        if not curves:
            continue
        length = min(len(c) for c in curves)
        steps = [p["step"] for p in curves[0][:length]]
        values = np.array([[p[metric] for p in c[:length]] for c in curves])
        ax.plot(steps, values.mean(0), label=f"{variant} (lr {row['lr']:g})")
        if len(curves) > 1:
            ax.fill_between(steps, values.min(0), values.max(0), alpha=0.2)
    ax.set_xlabel("optimizer step")
    # The LM curve is scored on the first `curve_eval_blocks` validation blocks (the tables on all of them).
    ax.set_ylabel("bits per byte, validation subset" if task == "lm" else "validation accuracy")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def invocations(meta: dict) -> list[dict]:
    """Every `run` that wrote to this record folder (older folders stored one `command`)."""
    if "invocations" in meta:
        return meta["invocations"]
    return [{k: meta[k] for k in ("command", "started", "finished", "run_seconds") if k in meta}]


def run_time(meta: dict) -> str:
    runs = invocations(meta)
    done = sum(i.get("run_seconds", 0.0) for i in runs)
    unfinished = sum("run_seconds" not in i for i in runs)
    text = f"Started {runs[0].get('started', '?')}; {len(runs)} invocation(s) took {done / 60:.0f} min of wall time"
    return text + (f" ({unfinished} unfinished or still running: partial records)." if unfinished else ".")


def grid_line(variant: str, row: dict) -> str:
    """`- bp: 0.0003: 3.057, 0.001: 2.779 (chosen at the edge of the grid)`."""
    tried = sorted(float(k) for k in row["grid"])
    text = f"- {display_name(variant)}: " + ", ".join(
        f"{k}: {x:.3f}" for k, x in sorted(row["grid"].items(), key=lambda i: float(i[0]))
    )
    edge = len(tried) > 1 and row["lr"] in (tried[0], tried[-1])
    return text + (" (chosen lr at the edge of the grid: a wider grid may do better)" if edge else "")


def cls_classes(records: list[dict]) -> int | str:
    return next((r["classes"] for r in records if r["task"] == "cls" and "classes" in r), "?")


def fmt(mean: float, std: float, n: int, digits: int = 3) -> str:
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if n > 1 else f"{mean:.{digits}f}"


def target_lines(lm: dict, cls: dict) -> list[str]:
    """The issue's targets, checked on the measured validation numbers, for each kind of SAL row (fixed feedback;
    identity feedback, the default): the best K by validation against DFA (plain, and with the same switches where
    measured) and BP."""
    lines = []
    for switches, sal in sal_groups(lm).items():
        if not (lm.get("bp") and lm.get("dfa")):
            break
        best = min(sal, key=lambda v: lm[v]["validation_bits_per_byte"])
        s, b = lm[best]["validation_bits_per_byte"], lm["bp"]["validation_bits_per_byte"]
        for dfa in dict.fromkeys(["dfa", f"dfa{switches}"]):
            if dfa in lm:
                d = lm[dfa]["validation_bits_per_byte"]
                lines.append(
                    f"- Bits per byte, SAL <= DFA: best {display_name(best)} {s:.3f} vs {display_name(dfa)} {d:.3f}: "
                    f"{'met' if s <= d else 'not met'} ({s - d:+.3f})."
                )
        lines.append(
            f"- Bits per byte, SAL <= 1.10 x BP: best {display_name(best)} {s:.3f} vs 1.10 x {b:.3f} = {1.1 * b:.3f}: "
            f"{'met' if s <= 1.1 * b else 'not met'} (SAL is {s / b:.2f} x BP)."
        )
    for switches, sal in sal_groups(cls).items():
        if not (cls.get("bp") and cls.get("dfa")):
            break
        best = max(sal, key=lambda v: cls[v]["validation_accuracy"])
        s, b = 100 * cls[best]["validation_accuracy"], 100 * cls["bp"]["validation_accuracy"]
        for dfa in dict.fromkeys(["dfa", f"dfa{switches}"]):
            if dfa in cls:
                d = 100 * cls[dfa]["validation_accuracy"]
                lines.append(
                    f"- Classification, SAL >= DFA: best {display_name(best)} {s:.1f}% vs {display_name(dfa)} "
                    f"{d:.1f}%: {'met' if s >= d else 'not met'} ({s - d:+.1f} points)."
                )
        lines.append(
            f"- Classification, SAL within 2 points of BP: best {display_name(best)} {s:.1f}% vs BP {b:.1f}%: "
            f"{'met' if s >= b - 2 else 'not met'} ({s - b:+.1f} points)."
        )
    return lines


def sal_paths(setup: dict, records: list[dict]) -> str:
    """What the `sal-K` records' models had beside the areas, read from the records (not from today's default)."""
    sal = [r for r in records if VARIANTS.get(r["variant"], ("", 1))[0] == "sal" and VARIANTS[r["variant"]][1] > 1]
    made = {record_dual_path(Setup(**setup), r) for r in sal}
    if made == {False}:
        return "areas only: no shared dense path beside them"
    if made == {True}:
        return "plus a shared dense path beside the areas"
    return "some runs with a shared dense path beside the areas, some without: see the records' `dual_path`"


def paired_lines(records: list[dict], ablations: list[dict]) -> list[str]:
    """Per ablation with >= 2 seeds: its change vs the base at the same lr and seed, mean and range."""
    lines = []
    for variant in sorted({r["variant"] for r in ablations}):
        changes = []
        for r in (r for r in ablations if r["variant"] == variant):
            base = next(
                (b for b in records if b["task"] == "lm" and b["variant"] == base_variant(variant)[0]
                 and b["lr"] == r["lr"] and b["seed"] == r["seed"]),
                None,
            )  # fmt: skip
            if base:
                changes.append(r["validation"]["bits_per_byte"] - base["validation"]["bits_per_byte"])
        if len(changes) > 1:
            worse = sum(c > 0 for c in changes)
            lines.append(
                f"- {variant} vs {base_variant(variant)[0]}, paired by seed ({len(changes)} seeds): validation bits "
                f"per byte {sum(changes) / len(changes):+.3f} on average ({min(changes):+.3f} to {max(changes):+.3f}); "
                f"worse on {worse} of {len(changes)} seeds."
            )
    return lines


def report(args: argparse.Namespace) -> None:
    folder = Path(args.records)
    runs = sorted((p for p in folder.iterdir() if (p / "meta.json").exists()), key=lambda p: p.stat().st_mtime)
    if args.setup:
        runs = [folder / args.setup]
    if not runs:
        raise SystemExit(f"No benchmark records under {folder}; run `python scripts/benchmark_text.py run` first.")
    meta, records = load_records(runs[-1])
    setup = meta["setup"]
    check_records(Setup(**setup), runs[-1])
    lm, cls = summarise(meta, records, "lm"), summarise(meta, records, "cls")

    def main_rows(summary: dict) -> dict:  # the tuned rows of the table, not the previous default's
        return {v: row for v, row in summary.items() if v in meta["variants"]}

    docs = Path(args.docs)
    results = docs / "results"
    results.mkdir(parents=True, exist_ok=True)
    for task, summary in (("lm", lm), ("cls", cls)):
        if summary:
            payload = {"meta": meta, "summary": summary, "runs": [r for r in records if r["task"] == task]}
            (results / f"text_{task}.json").write_text(json.dumps(payload, indent=2))
    label = setup.get("label") or "full size"
    arch = (
        f"{setup['layers']} blocks, width {setup['hidden_size']}, {setup['heads']} heads, context {setup['context']} "
        f"tokens, byte-level BPE vocabulary {setup['vocab_size']}, batch {setup['batch_size']}"
    )
    if lm:
        plot_curves(
            main_rows(lm),
            "lm",
            docs / "img" / "text_lm_curves.png",
            f"fortunes LM ({label}): {setup['layers']} blocks, width {setup['hidden_size']}, context {setup['context']}",
        )
    if cls:
        plot_curves(main_rows(cls), "cls", docs / "img" / "text_cls_curves.png", f"fortunes categories ({label})")
    hw = meta["hardware"]
    lines = [
        "# SAL transformer on text: language modelling and classification",
        "",
        f"**{label}.** Generated by `python scripts/benchmark_text.py report` from the records of",
        "",
        *[f"    {i['command']}" for i in invocations(meta)],
        "",
        *[f"Note: {note}" for note in meta.get("notes", [])],
        *([""] if meta.get("notes") else []),
        f"Setup: {arch}; AdamW, constant lr, gradient clipping 1.0, {setup['lm_steps']} optimizer steps (LM) and "
        f"{setup['cls_steps']} (classification) for every variant; lr tuned per variant on the validation split "
        f"with seed {meta['seeds'][0]} (grids below); seeds {meta['seeds']} where the tables say so"
        + (f"; config overrides {setup['config_overrides']}" if setup["config_overrides"] else "")
        + ".",
        f"Hardware: {hw['cpu']}, {hw['logical_cpus']} logical CPUs, {hw['torch_threads']} torch thread(s) "
        f"shared with other jobs: the load changed between invocations, so speed ratios (median step time over all "
        f"runs of a variant) are rough; {meta['versions']}. " + run_time(meta),
        "",
        "Data: Debian's `fortunes` (fortune-mod 1.99.1, BSD licence; `sal_hf.text_data`). LM: unique entries split "
        "90/5/5 by entry (seed 0), each entry ended by an end-of-text token, grouped into blocks. Classification: "
        "the category file of a quote, categories with >= 500 unique entries, stratified 80/10/10 (seed 0), "
        f"truncated to {setup['cls_max_length']} tokens. Bits per byte = total nats / ln 2 / UTF-8 bytes of the "
        "scored tokens (the end-of-text token counts one byte).",
        "",
        "Variants: `bp` end-to-end backprop (dense MLP); `dfa` block-local direct feedback (dense MLP); `sal-K` "
        f"block-local direct feedback with K areas per block's MLP routed per token ({sal_paths(setup, records)}, "
        "area lr x 1/K: the config's defaults). `sal-1` is not run separately: with one area, `sal` is the same model "
        "and the same rule as `dfa` (the config's name for the dense K = 1 case; `--quick` shows identical numbers). "
        "`dfa` and `sal-K` send the error at the final hidden state to every block through a fixed random matrix "
        '(`feedback_alignment="fixed"`: SAL\'s transformer as published).'
        + (
            ' `... + identity feedback`: the same with `feedback_alignment="identity"` (every block receives that error '
            "unprojected; the config's default for `sal` since 2026-11-29), its lr tuned on the same grid."
            if any(v.endswith("+identity") for v in meta["variants"])
            else ""
        )
        + (
            " `sal-K + shared path (previous default)`: the same with the shared dense up-projection beside the areas "
            "(`dual_path=True`), the default until 2026-11-29; its lr tuned on the same grid."
            if previous_default_rows(meta, records)
            else ""
        ),
    ]
    if lm:
        bp_step = lm.get("bp", {}).get("step_seconds")
        lines += [
            "",
            "## Language modelling (fortunes)",
            "",
            "| variant | lr | seeds | val loss (nats/token) | val bits/byte | test bits/byte | tokens/s vs BP | "
            "parameters |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for v, row in lm.items():
            speed = f"{bp_step / row['step_seconds']:.2f}x" if bp_step else "-"
            lines.append(
                f"| {display_name(v)} | {row['lr']:g} | {len(row['seeds'])} | {fmt(row['validation_loss'], row['validation_loss_std'], len(row['seeds']))} | "
                f"{fmt(row['validation_bits_per_byte'], row['validation_bits_per_byte_std'], len(row['seeds']))} | "
                f"{fmt(row['test_bits_per_byte'], row['test_bits_per_byte_std'], len(row['seeds']))} | {speed} | {row['parameters']:,} |"
            )
        lines += ["", "lr grid (validation bits per byte, first seed):", ""]
        lines += [grid_line(v, row) for v, row in lm.items()]
        lines += [
            "",
            f"Learning curves: mean over seeds (band: min-max), bits per byte on the first {setup['curve_eval_blocks']} "
            "validation blocks (the table scores all of them).",
            "",
            "![learning curves](img/text_lm_curves.png)",
            "",
        ]
        # The `+shared` rows of the table were tuned over the grid: here only their runs at the base's tuned lr.
        ablations = [
            r
            for r in records
            if r["task"] == "lm" and "+" in r["variant"] and r["variant"] not in meta["variants"]
            and not (r["variant"] in lm and base_variant(r["variant"])[0] in lm
                     and r["lr"] != lm[base_variant(r["variant"])[0]]["lr"])
        ]  # fmt: skip
        if ablations:
            names = sorted({r["variant"].partition("+")[2] for r in ablations}, key=list(ABLATIONS).index)
            lines += [
                "### Ablations (the base variant's tuned lr)",
                "",
                "What was tried on the SAL variant each row names (the best by the first seed's validation loss when the "
                "ablations ran), each switch alone unless combined: "
                + "; ".join(f"`{n}` {ABLATIONS[n][1]}" for n in names)
                + ".",
                "",
                "| variant | lr | seed | val loss | val bits/byte | change vs base (same seed) |",
                "|---|---|---|---|---|---|",
            ]
            for r in sorted(ablations, key=lambda r: (r["variant"], r["seed"])):
                base = next(
                    (
                        b
                        for b in records
                        if b["task"] == "lm" and b["variant"] == r["variant"].split("+")[0]
                        and b["lr"] == r["lr"] and b["seed"] == r["seed"]
                    ),
                    None,
                )  # fmt: skip
                change = (
                    f"{r['validation']['bits_per_byte'] - base['validation']['bits_per_byte']:+.3f}" if base else "-"
                )
                lines.append(
                    f"| {r['variant']} | {r['lr']:g} | {r['seed']} | {r['validation']['loss']:.3f} | "
                    f"{r['validation']['bits_per_byte']:.3f} | {change} |"
                )
            lines += ["", *paired_lines(records, ablations), ""]
    if cls:
        lines += [
            f"## Text classification (fortunes category, {cls_classes(records)} classes)",
            "",
            "| variant | lr | seeds | val accuracy | test accuracy | val loss | steps/s vs BP |",
            "|---|---|---|---|---|---|---|",
        ]
        bp_step = cls.get("bp", {}).get("step_seconds")
        for v, row in cls.items():
            speed = f"{bp_step / row['step_seconds']:.2f}x" if bp_step else "-"
            lines.append(
                f"| {display_name(v)} | {row['lr']:g} | {len(row['seeds'])} | {fmt(100 * row['validation_accuracy'], 100 * row['validation_accuracy_std'], len(row['seeds']), 1)}"
                f" | {fmt(100 * row['test_accuracy'], 100 * row['test_accuracy_std'], len(row['seeds']), 1)} | "
                f"{fmt(row['validation_loss'], row['validation_loss_std'], len(row['seeds']))} | {speed} |"
            )
        lines += ["", "lr grid (validation accuracy, first seed):", ""]
        lines += [grid_line(v, row) for v, row in cls.items()]
        lines += ["", "![learning curves](img/text_cls_curves.png)", ""]
    lines += ["## Targets of the issue (validation split)", ""] + (target_lines(lm, cls) or ["- not measured yet"])
    health = {
        **{f"LM {v}": r["area_health"] for v, r in main_rows(lm).items()},
        **{f"cls {v}": r["area_health"] for v, r in main_rows(cls).items()},
    }
    health = {k: h for k, h in health.items() if h}
    if health:
        lines += [
            "",
            "## Area health per block (last logging window of the first seed)",
            "",
            "Share of tokens (LM) or of pooled positions (classification) routed to the least and most used area of "
            "each block, and areas no token selected.",
            "",
        ]
        for name, h in health.items():
            routers = sorted(
                {k.split("/")[1] for k in h}, key=lambda s: int(s.rsplit("_", 1)[-1]) if s[-1].isdigit() else 0
            )
            cells = [
                f"{r}: {h.get(f'area/{r}/min_share', float('nan')):.3f}-{h.get(f'area/{r}/max_share', float('nan')):.3f}"
                f", dead {h.get(f'area/{r}/dead', '-')}"
                for r in routers
            ]
            collapsed = [r for r in routers if h.get(f"area/{r}/max_share", 0.0) >= 0.9]
            flag = f" **(one area takes >= 90% of the tokens in {', '.join(collapsed)})**" if collapsed else ""
            lines.append(f"- {name}: " + "; ".join(cells) + flag)
    samples = {v: r["samples"] for v, r in main_rows(lm).items() if r["samples"]}
    if samples:
        lines += ["", "## Samples (first seed, top-k 40, temperature 0.8, 40 new tokens)", ""]
        for v, texts in samples.items():
            lines.append(f"**{v}**")
            lines.append("")
            lines += ["```"] + [t.replace("```", "'''") for t in texts] + ["```", ""]
    (docs / "RESULTS_TEXT.md").write_text("\n".join(lines).rstrip() + "\n")
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", nargs="?", choices=["run", "report"], default="run")
    parser.add_argument("--quick", action="store_true", help="smoke test: a tiny run + report into a temp folder")
    parser.add_argument("--hidden-size", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--context", type=int, default=128)
    parser.add_argument("--vocab-size", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lm-steps", type=int, default=2000)
    parser.add_argument("--cls-steps", type=int, default=1000)
    parser.add_argument("--cls-max-length", type=int, default=64)
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--curve-eval-blocks", type=int, default=128)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--lr-grid", type=float, nargs="+", default=[1e-3, 3e-3, 1e-2])
    parser.add_argument(
        "--variants",
        nargs="+",
        default=[v for v in VARIANTS if v != "sal-1"],
        # A variant with an ablation's switches (`sal-4+identity`) is tuned and seeded like any other variant.
        choices=[*VARIANTS, *(f"{v}+{a}" for v in VARIANTS if v != "bp" for a in ABLATIONS)],
        metavar="VARIANT",
        help=f"any of {list(VARIANTS)}, or one of them with an ablation's switches, e.g. sal-4+identity",
    )
    parser.add_argument("--tasks", nargs="+", default=["lm", "cls"], choices=["lm", "cls"])
    parser.add_argument(
        "--ablations", nargs="*", default=DEFAULT_ABLATIONS, choices=list(ABLATIONS),
        help="LM ablations of the best SAL variant, first seed, at its tuned lr (none: --ablations)",
    )  # fmt: skip
    parser.add_argument("--config-overrides", nargs="*", help="SALTransformerConfig fields as key=value (strings)")
    parser.add_argument("--label", default="", help="e.g. REDUCED: printed at the top of the page")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--records", default=str(RECORDS))
    parser.add_argument("--docs", default=str(ROOT / "docs"))
    parser.add_argument("--setup", default=None, help="report: the record folder (default: the latest)")
    args = parser.parse_args(argv)
    if args.quick:
        import tempfile

        tmp = Path(tempfile.mkdtemp(prefix="benchmark_text_"))
        quick = ["--hidden-size", "32", "--layers", "1", "--heads", "2", "--context", "32", "--vocab-size", "300"]
        quick += ["--lm-steps", "6", "--cls-steps", "6", "--eval-every", "3", "--curve-eval-blocks", "8", "--seeds"]
        quick += [
            "0",
            "1",
            "--lr-grid",
            "1e-3",
            "3e-3",
            "--variants",
            "bp",
            "dfa",
            "sal-1",
            "sal-4",
            "--label",
            "QUICK",
        ]
        quick += ["--cls-max-length", "32", "--batch-size", "8", "--records", str(tmp / "records"), "--docs", str(tmp)]
        main(["run", *quick])
        main(["report", "--records", str(tmp / "records"), "--docs", str(tmp)])
        print(f"quick run written under {tmp}")
        return
    run(args) if args.command == "run" else report(args)


if __name__ == "__main__":
    main()
