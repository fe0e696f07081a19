"""`sal-hf`: train, inspect and benchmark SAL models from the command line.

    sal-hf train --dataset digits --rule sal --num-areas 16 --output-dir outputs/digits   # + any TrainingArguments flag
    sal-hf train --dataset imagefolder --data-dir my_images --image-size 32 32 --num-channels 3   # your own images
    sal-hf info outputs/digits [--dataset digits]
    sal-hf bench NAME [ARGS...]        # runs scripts/NAME.py of a source checkout with ARGS

`python -m sal_hf ...` is the same command. Progress bars are Trainer's own (`--disable-tqdm` turns them off).
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .configuration_sal import (
    AREA_INITS,
    AREA_MODES,
    AREA_NORMS,
    FEEDBACK_MODES,
    LEARNING_RULES,
    MLP_ROUTERS,
    ROUTING_SCOPES,
)


PACKAGE_DIR = Path(__file__).resolve().parent
SCRIPTS_DIR = PACKAGE_DIR.parent / "scripts"
COMMANDS = ("train", "info", "bench")


@dataclass
class ModelArguments:
    """The SAL model to train. Every architecture flag left unset takes `SALConfig`'s default (the config is the
    single source of truth; see its docstring or the README's table)."""

    rule: str = field(default="sal", metadata={"help": "learning rule", "choices": list(LEARNING_RULES)})
    num_areas: int | None = field(default=None, metadata={"help": "areas K per layer (1 = dense)"})
    num_channels: int | None = field(
        default=None, metadata={"help": "1: colour images become luminance (default); 3: keep RGB (your images only)"}
    )
    hidden_sizes: list[int] | None = field(default=None, metadata={"help": "units per hidden layer"})
    hidden_act: str | None = field(default=None, metadata={"help": "hidden activation"})
    feedback: str | None = field(
        default=None,
        metadata={
            "help": "direct, layerwise or stream (sal only; derived when unset). stream is for residual stacks: add "
            "--config-overrides residual=True,norm=layernorm and several --hidden_sizes; with one hidden layer and "
            "no norm it equals direct",
            "choices": list(FEEDBACK_MODES),
        },
    )
    area_mode: str | None = field(default=None, metadata={"choices": list(AREA_MODES)})
    area_init: str | None = field(default=None, metadata={"choices": list(AREA_INITS)})
    routing_scope: str | None = field(default=None, metadata={"choices": list(ROUTING_SCOPES)})
    router: str | None = field(default=None, metadata={"choices": list(MLP_ROUTERS)})
    routing_dim: int | None = field(default=None, metadata={"help": "size of the routing space"})
    output_areas: bool | None = field(default=None, metadata={"help": "give the output layer K areas too"})
    dual_path: bool | None = field(default=None, metadata={"help": "add a shared dense path beside the areas"})
    area_update_norm: str | None = field(default=None, metadata={"choices": list(AREA_NORMS)})
    routing_seed: int | None = field(
        default=None,
        metadata={
            "help": "seed of prototypes and initial routing projections (the config's 0 if unset; --seed does not set it)"
        },
    )
    feedback_seed: int | None = field(
        default=None,
        metadata={"help": "seed of the feedback matrices (the config's 1000 if unset; --seed does not set it)"},
    )
    config_overrides: str | None = field(
        default=None,
        metadata={"help": "other SALConfig fields as key=value,key=value (e.g. routing_balance_rate=0.01)"},
    )
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "continue training a saved SAL model (its config replaces the flags above)"}
    )


@dataclass
class DataArguments:
    """What to train on and what to watch."""

    dataset: str = field(
        default="digits",
        metadata={
            "help": "a built-in set (sal_hf.data.LOADERS), `imagefolder` with --data-dir, a local folder in the "
            "imagefolder layout (DIR/<label>/<image>), or a dataset name for datasets.load_dataset (needs the network)"
        },
    )
    data_dir: str | None = field(default=None, metadata={"help": "the folder of --dataset imagefolder"})
    image_size: list[int] | None = field(
        default=None,
        metadata={"help": "resize your images to H W (default: the first image's size); not for built-in sets"},
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "keep the first N training samples"})
    max_eval_samples: int | None = field(default=None, metadata={"help": "keep the first N test samples"})
    diagnostics: bool = field(
        default=True, metadata={"help": "log per-area shares, routing churn and BP alignment (SALDiagnosticsCallback)"}
    )
    probe_size: int = field(
        default=128,
        metadata={"help": "samples in the diagnostics' fixed probe batch (cost per log: ~5 passes over it)"},
    )


@dataclass
class SALTrainerArguments:
    """SALTrainer's own options."""

    in_place_area_update: bool = field(
        default=False,
        metadata={
            "help": "apply plain SGD to every area inside the backward pass (no gradient tensors: ~25%% faster steps "
            "and half the memory for many areas); needs --optim sgd --max-grad-norm 0, no accumulation, one process"
        },
    )


def parse_overrides(text: str | None) -> dict:
    """`"key=value,key=value"` -> dict; values are Python literals where they parse (`0.01`, `True`, `None`,
    `[256,256]`), else strings. A comma splits only where a `key=` follows, so lists and tuples keep theirs."""
    overrides = {}
    for item in filter(None, re.split(r",(?=\s*[A-Za-z_]\w*\s*=)", (text or "").strip())):
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--config-overrides takes key=value pairs separated by commas; got {item!r}.")
        try:
            overrides[key.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            overrides[key.strip()] = value.strip()
    return overrides


def checked_overrides(text: str | None, config_class: type) -> dict:
    """`parse_overrides`, refusing a key `config_class` does not have (a typo would be saved into config.json and
    change nothing), as transformers' `update_from_string` does."""
    overrides = parse_overrides(text)
    fields = config_class().to_dict()
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        raise ValueError(
            f"--config-overrides names {unknown}, which {config_class.__name__} does not have; its fields: "
            f"{', '.join(sorted(fields))}."
        )
    return overrides


def _train_parser():
    from transformers import HfArgumentParser, TrainingArguments

    from .data import LOADERS

    parser = HfArgumentParser(
        (ModelArguments, DataArguments, SALTrainerArguments, TrainingArguments), prog="sal-hf train"
    )
    parser.description = (
        f"Train a SAL image classifier with SALTrainer. Datasets: {', '.join(sorted(LOADERS))}. Every "
        "TrainingArguments flag works (--learning-rate, --num-train-epochs, --report-to tensorboard, --push-to-hub, "
        "...). Writes the model, its image processor, remote code, trainer_state.json and a model card (README.md) "
        "to --output-dir."
    )
    try:
        import tensorboard  # noqa: F401

        report_to = "tensorboard"
    except ImportError:
        report_to = "none"
    parser.set_defaults(
        output_dir="outputs/sal-hf",
        learning_rate=1e-3,
        num_train_epochs=10,
        per_device_train_batch_size=32,
        per_device_eval_batch_size=256,
        eval_strategy="epoch",
        logging_steps=50,
        save_strategy="no",
        report_to=report_to,
        seed=0,
    )
    return parser


def train(argv: list[str]) -> int:
    """`sal-hf train`: see `sal-hf train --help`."""
    from transformers import AutoModelForImageClassification, set_seed

    from .configuration_sal import SALConfig
    from .data import LOADERS, load_image_dataset, load_images
    from .diagnostics import SALDiagnosticsCallback, probe_batch
    from .image_processing_sal import SALImageProcessor
    from .metrics import classification_metrics
    from .trainer import SALTrainer

    model_args, data_args, trainer_args, args = _train_parser().parse_args_into_dataclasses(args=argv)
    if data_args.image_size is not None and len(data_args.image_size) != 2:
        raise ValueError(f"--image-size takes two numbers, H W; got {data_args.image_size}.")
    source = model_args.model_name_or_path
    local = source is not None and (source.startswith((".", "/", "~")) or source.count("/") > 1)  # not `org/name`
    if local and not Path(source).expanduser().is_dir():
        raise ValueError(f"--model-name-or-path {source}: no such folder (a saved model's directory, or a Hub id).")
    if data_args.dataset in LOADERS:
        given = {"--num-channels": model_args.num_channels not in (None, 1), "--image-size": data_args.image_size}
        if any(given.values()):
            raise ValueError(
                f"{', '.join(flag for flag, value in given.items() if value)} applies to your own images; the built-in "
                f"set {data_args.dataset!r} has a fixed shape."
            )
        data = load_image_dataset(data_args.dataset)
    else:
        data = load_images(
            data_args.dataset,
            data_dir=data_args.data_dir,
            image_size=data_args.image_size,
            num_channels=model_args.num_channels or 1,
            seed=args.seed,
        )
    train_set, test_set = data["train"], data["test"]
    if data_args.max_train_samples is not None:
        train_set = train_set.select(range(min(data_args.max_train_samples, len(train_set))))
    if data_args.max_eval_samples is not None:
        test_set = test_set.select(range(min(data_args.max_eval_samples, len(test_set))))
    names = train_set.features["labels"].names
    shape = tuple(train_set[0]["pixel_values"].shape)  # (H, W) for the built-in sets, (C, H, W) for yours
    channels, (height, width) = (shape[0] if len(shape) == 3 else 1), shape[-2:]

    set_seed(args.seed)
    if model_args.model_name_or_path is not None:
        model = AutoModelForImageClassification.from_pretrained(model_args.model_name_or_path)
        saved = [model.config.id2label[i] for i in range(model.config.num_labels)]
        if saved != list(names):
            raise ValueError(
                f"{model_args.model_name_or_path} was trained on the labels {saved[:10]} and {data_args.dataset!r} "
                f"has {list(names)[:10]}: continuing would keep the old label names. Train a new model on this data "
                "(leave out --model-name-or-path), or re-head it in Python: "
                "SALForImageClassification.from_pretrained(path, num_labels=..., id2label=..., "
                "ignore_mismatched_sizes=True)."
            )
    else:
        fields = {
            name: getattr(model_args, name)
            for name in ModelArguments.__dataclass_fields__
            if name not in ("rule", "config_overrides", "model_name_or_path", "num_channels")
            and getattr(model_args, name) is not None
        }
        # Overrides go in at construction, so that defaults derived from other fields (dual_path and
        # area_lr_scale from num_areas, ...) see them.
        fields.update(checked_overrides(model_args.config_overrides, SALConfig))
        config = SALConfig(
            input_size=channels * height * width,
            image_size=[height, width],
            num_channels=channels,
            num_labels=len(names),
            id2label=dict(enumerate(names)),
            label2id={name: i for i, name in enumerate(names)},
            learning_rule=model_args.rule,
            **fields,
        )
        model = AutoModelForImageClassification.from_config(config)

    callbacks = []
    if data_args.diagnostics:
        callbacks.append(SALDiagnosticsCallback(*probe_batch(train_set, size=data_args.probe_size, seed=args.seed)))
    trainer = SALTrainer(
        model=model,
        args=args,
        train_dataset=train_set,
        eval_dataset=test_set,
        processing_class=SALImageProcessor.from_sal_config(model.config),
        compute_metrics=classification_metrics(num_labels=len(names)),
        callbacks=callbacks,
        in_place_area_update=trainer_args.in_place_area_update,
    )
    trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    metrics = trainer.evaluate()
    trainer.log_metrics("eval", metrics)
    trainer.save_metrics("eval", metrics)
    trainer.save_state()
    # Your images are named by their folder (the card keeps its last part), not by the loader's name.
    named = data_args.data_dir if data_args.dataset == "imagefolder" and data_args.data_dir else data_args.dataset
    trainer.create_model_card(dataset=named, command="sal-hf train " + shlex.join(argv))
    trainer.save_model()  # with --push-to-hub, Trainer uploads args.output_dir here, card included
    print(f"Saved to {args.output_dir}: eval accuracy {metrics.get('eval_accuracy', float('nan')):.4f}")
    return 0


def info(argv: list[str]) -> int:
    """`sal-hf info DIR`: a saved model's config, parameter count and area statistics."""
    parser = argparse.ArgumentParser(prog="sal-hf info", description=info.__doc__)
    parser.add_argument("directory", help="a directory written by save_pretrained / sal-hf train")
    parser.add_argument(
        "--dataset",
        help="also route this dataset's test split and report the area shares: a built-in set, or your images as "
        "`sal-hf train --dataset` takes them (a folder, or `imagefolder` with --data-dir)",
    )
    parser.add_argument("--data-dir", default=None, help="the folder of --dataset imagefolder")
    parser.add_argument("--max-samples", type=int, default=None, help="route at most N test samples")
    options = parser.parse_args(argv)

    import torch
    from transformers import AutoModelForImageClassification

    from .configuration_sal import CLAIM_DEFAULTS
    from .configuration_sal_transformer import SALTransformerConfig
    from .routing import AreaRouter, ClaimRouter

    directory = Path(options.directory)
    if not (directory / "config.json").is_file():
        raise ValueError(f"{directory} has no config.json; pass a directory written by save_pretrained.")
    if json.loads((directory / "config.json").read_text()).get("model_type") == SALTransformerConfig.model_type:
        raise ValueError(
            f"{directory} holds a SAL transformer; `sal-hf info` reads SAL image classifiers. Load it with "
            "AutoModelForCausalLM / AutoModelForSequenceClassification and print model.config."
        )
    model = AutoModelForImageClassification.from_pretrained(directory).eval()
    config = model.config
    print(
        f"{directory}: {type(model).__name__}, learning_rule={config.learning_rule}, feedback={config.feedback_mode}, "
        f"feedback_alignment={config.effective_feedback_alignment if config.learning_rule != 'bp' else '-'}"
    )
    keys = ["input_size", "image_size", "hidden_sizes", "hidden_act", "num_labels", "num_areas", "area_mode"]
    keys += ["area_init", "output_areas", "effective_dual_path", "routing_scope", "router", "router_lr_scale"]
    keys += ["routing_dim"]
    keys += ["area_update_norm", "effective_area_lr_scale", "routing_balance_rate", "routing_seed", "feedback_seed"]
    keys += ["feedback_gain"] + (list(CLAIM_DEFAULTS) if config.router == "claim" else [])
    for key in keys:
        print(f"  {key.removeprefix('effective_'):22s} {getattr(config, key)}")
    total = model.num_parameters()
    per_area = sum(p.numel() for layer in model.sal.layers for p in (layer.areas.weight_0, layer.areas.bias_0))
    frozen = sum(b.numel() for name, b in model.named_buffers() if name.startswith("feedback"))
    frozen += sum(r.prototypes.numel() for r in model.routers if isinstance(r, AreaRouter))
    claimed = sum(r.prototypes.numel() for r in model.routers if isinstance(r, ClaimRouter))
    learned = sum(p.numel() for name, p in model.named_parameters() if name.startswith("feedback."))
    print(
        f"parameters: {total:,} (one area of every hidden layer: {per_area:,}; learned feedback matrices: {learned:,}); "
        f"frozen prototypes + fixed feedback: {frozen:,}"
        + (f"; claim prototypes (running means): {claimed:,}" if claimed else "")
    )

    print("routers:")
    for index, router in enumerate(model.routers):
        print(f"  router_{index}: {router.summary()}")
    state = directory / "trainer_state.json"
    if state.is_file():
        history = json.loads(state.read_text())["log_history"]
        from .model_card import area_utilisation

        for index, stats in enumerate(area_utilisation(history)):
            shown = {k: v for k, v in stats.items() if not k.startswith("share_")}
            print(f"  router_{index} at the last training log: {shown}")
        evals = [entry for entry in history if "eval_accuracy" in entry]
        if evals:
            print(
                f"last eval accuracy (trainer_state.json): {evals[-1]['eval_accuracy']:.4f} at step {evals[-1]['step']}"
            )
    if options.dataset:
        from .data import LOADERS, load_image_dataset, load_images

        if options.dataset in LOADERS:
            test_set = load_image_dataset(options.dataset)["test"]
        else:  # your images, split as `sal-hf train` split them (its default seed 0), at the model's shape
            test_set = load_images(
                options.dataset,
                data_dir=options.data_dir,
                image_size=list(config.image_size) if config.image_size else None,
                num_channels=config.num_channels,
            )["test"]
        if options.max_samples is not None:
            test_set = test_set.select(range(min(options.max_samples, len(test_set))))
        batch = test_set[:]
        with torch.no_grad():
            outputs = model(pixel_values=batch["pixel_values"], return_areas=True)
        accuracy = float((outputs.logits.argmax(-1) == batch["labels"]).float().mean())
        print(f"{options.dataset} test split ({len(test_set)} samples): accuracy {accuracy:.4f}")
        from .diagnostics import routed_layers

        for index, (position, layer) in enumerate(routed_layers(model)):
            load = torch.bincount(outputs.areas[position], minlength=layer.router.num_areas).double()
            share = load / load.sum()
            entropy = float(-(share[share > 0] * share[share > 0].log()).sum() / torch.log(torch.tensor(len(share))))
            print(
                f"  router_{index}: min share {float(share.min()):.4f}, max share {float(share.max()):.4f}, "
                f"dead {int((load == 0).sum())}, normalised entropy {entropy:.3f} (1 = uniform)"
            )
    return 0


def bench(argv: list[str]) -> int:
    """`sal-hf bench NAME [ARGS...]`: run `scripts/NAME.py ARGS...` of a source checkout."""
    available = sorted(path.stem for path in SCRIPTS_DIR.glob("*.py")) if SCRIPTS_DIR.is_dir() else []
    usage = (
        f"usage: sal-hf bench NAME [ARGS...]\n\nRuns scripts/NAME.py with ARGS. The scripts live in the repository, "
        f"not in the installed package: they are found at {SCRIPTS_DIR} (a source checkout, e.g. `pip install -e .`)."
        f"\nAvailable: {', '.join(available) or 'none'}."
    )
    if not argv or argv[0] in ("-h", "--help"):
        print(usage)
        return 0 if argv else 2
    script = SCRIPTS_DIR / f"{argv[0]}.py"
    if not script.is_file():
        print(f"sal-hf bench: no script {script}.\n\n{usage}", file=sys.stderr)
        return 2
    return subprocess.run([sys.executable, str(script), *argv[1:]]).returncode


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `sal-hf` console script."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        if argv and argv[0] not in ("-h", "--help"):
            print(f"sal-hf: unknown command {argv[0]!r}; choose from {', '.join(COMMANDS)}.\n", file=sys.stderr)
        print(__doc__.strip())
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    command, rest = argv[0], argv[1:]
    try:
        return {"train": train, "info": info, "bench": bench}[command](rest)
    except ValueError as error:
        # sal-hf's own checks (a bad flag, dataset, folder or setting) name the value and the fix: one line. A
        # ValueError from torch or transformers keeps its traceback.
        if os.environ.get("SAL_HF_TRACEBACK") or not _raised_here(error):
            raise
        print(f"sal-hf {command}: error: {error}\n(SAL_HF_TRACEBACK=1 shows where it was raised.)", file=sys.stderr)
        return 2


def _raised_here(error: BaseException) -> bool:
    """Whether ``error`` was raised by a `raise` in the sal_hf package (its innermost frame is one of its files)."""
    frame = error.__traceback__
    while frame is not None and frame.tb_next is not None:
        frame = frame.tb_next
    return frame is not None and Path(frame.tb_frame.f_code.co_filename).resolve().is_relative_to(PACKAGE_DIR)


if __name__ == "__main__":
    sys.exit(main())
