"""The model card SALTrainer writes: how a SAL model was trained, in the README.md that `push_to_hub` uploads.

It records what a reader needs to trust or reproduce the model: the learning rule and its feedback, K and the
area layout, the routing settings, every seed, the dataset, the final metrics, the area utilisation at the
last log, the hyperparameters and the library versions.
"""

from __future__ import annotations

import os
import platform
from importlib import metadata
from typing import Any

from huggingface_hub import EvalResult, ModelCardData
from transformers import Trainer
from transformers.modelcard import extract_hyperparameters_from_trainer, make_markdown_table, parse_log_history

from .configuration_sal import CLAIM_DEFAULTS


RULE_NAMES = {
    "sal": "SAL (area-local feedback alignment, arXiv 2601.21561)",
    "dfa": "direct feedback alignment",
    "fa": "feedback alignment (layer-wise)",
    "bp": "backpropagation (baseline)",
}
VERSIONED = ("transformers", "torch", "accelerate", "datasets", "evaluate")


def _table(rows: list[tuple[str, Any]], header: str = "setting") -> str:
    def show(value: Any) -> str:
        if isinstance(value, float) and value != 0 and abs(value) < 1e-3:
            return f"{value:.3g}"  # a small rate, e.g. 5e-05 (four decimals would print 0.0001, or 0.0000)
        return f"{value:.4f}" if isinstance(value, float) and value != round(value, 4) else str(value)

    return "\n".join([f"| {header} | value |", "|---|---|", *(f"| {name} | `{show(value)}` |" for name, value in rows)])


def _versions() -> list[tuple[str, str]]:
    from . import __version__

    rows = [("sal-hf", __version__), ("python", platform.python_version())]
    for package in VERSIONED:
        try:
            rows.append((package, metadata.version(package)))
        except metadata.PackageNotFoundError:
            continue
    return rows


def _last_log_with(log_history: list[dict[str, Any]], prefix: str) -> dict[str, Any]:
    for entry in reversed(log_history):
        found = {key: value for key, value in entry.items() if key.startswith(prefix)}
        if found:
            return {"step": entry.get("step"), **found}
    return {}


def _or_dash(value: Any) -> Any:
    """A table cell: `-` where a log had no value (an area-health window too small to report)."""
    return "-" if value is None else value


def area_utilisation(log_history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per router, the area health of the last training log that has one (min / max share, dead areas, and
    the churn and per-area shares when the diagnostics callback ran)."""
    last = _last_log_with(log_history, "area/")
    routers: dict[int, dict[str, Any]] = {}
    for key, value in last.items():
        if key == "step":
            continue
        _, router, name = key.split("/", 2)
        routers.setdefault(int(router.removeprefix("router_")), {"step": last["step"]})[name] = value
    return [routers[index] for index in sorted(routers)]


def _describe(model: Any, model_name: str) -> tuple[str, str, str, list, list, list[str]]:
    """Per model family: pipeline task, one sentence, a usage snippet, the rule and architecture rows, the routing
    fields."""
    config = model.config
    alignment = config.effective_feedback_alignment if config.learning_rule != "bp" else "- (backpropagation)"
    if config.model_type == "sal_transformer":
        generates = "CausalLM" in type(model).__name__
        task = "text-generation" if generates else "text-classification"
        what = (
            f"A decoder-only transformer ({'language model' if generates else 'text classifier'}) whose MLP in each "
            f"of its {config.num_hidden_layers} blocks is split into K={config.num_areas} areas, one per token,"
        )
        usage = (
            f'generate = pipeline("text-generation", model="{model_name}", trust_remote_code=True)\n'
            'generate("The meaning of life", max_new_tokens=40)'
            if generates
            else f'classify = pipeline("text-classification", model="{model_name}", trust_remote_code=True)\n'
            'classify("A quote to classify.")'
        )
        rule = [("learning_rule", config.learning_rule), ("feedback_points", config.feedback_points)]
        rule += [("error_source", config.error_source), ("feedback_alignment", alignment)]
        rule += [("routing_loss_weight", config.routing_loss_weight)]
        architecture = [(name, getattr(config, name)) for name in ("vocab_size", "hidden_size", "num_hidden_layers")]
        architecture += [("num_attention_heads", config.num_attention_heads)]
        architecture += [("intermediate_size", config.effective_intermediate_size)]
        architecture += [
            ("max_position_embeddings", config.max_position_embeddings),
            ("num_areas (K)", config.num_areas),
        ]
        architecture += [("area_down_proj", config.area_down_proj), ("dual_path", config.effective_dual_path)]
        architecture += [("area_lr_scale", config.effective_area_lr_scale)]
        routing = ["router", "router_lr_scale", "routing_dim", "routing_balance_rate", "routing_center_momentum"]
        return task, what, usage, rule, architecture, routing
    what = (
        f"An image classifier (an MLP whose hidden layers are split into K={config.num_areas} areas, one per sample "
        "and layer),"
    )
    usage = (
        f'classify = pipeline("image-classification", model="{model_name}", trust_remote_code=True)\n'
        'classify("digit.png")'
    )
    rule = [("learning_rule", config.learning_rule), ("feedback", config.feedback_mode)]
    rule += [("feedback_alignment", alignment), ("feedback_scope", config.feedback_scope)]
    rule += [("feedback_gain", config.feedback_gain)]
    rule += [("area_update_norm", config.area_update_norm), ("routing_loss_weight", config.routing_loss_weight)]
    architecture = [("input_size", config.input_size), ("image_size", config.image_size)]
    architecture += [("num_channels", config.num_channels)]
    architecture += [("hidden_sizes", config.hidden_sizes), ("hidden_act", config.hidden_act)]
    architecture += [("num_labels", config.num_labels), ("num_areas (K)", config.num_areas)]
    architecture += [(name, getattr(config, name)) for name in ("area_mode", "area_init", "output_areas")]
    architecture += [("dual_path", config.effective_dual_path), ("area_lr_scale", config.effective_area_lr_scale)]
    routing = ["routing_scope", "router", "router_lr_scale", "routing_dim", "routing_balance_rate"]
    routing += ["routing_center_momentum"]
    if config.router == "claim":
        routing += list(CLAIM_DEFAULTS)
    return "image-classification", what, usage, rule, architecture, routing


def sal_model_card(
    trainer: Trainer,
    model_name: str | None = None,
    dataset: str | list[str] | None = None,
    license: str | None = None,
    language: str | list[str] | None = None,
    tags: str | list[str] | None = None,
    finetuned_from: str | None = None,
    command: str | None = None,
    **unused: Any,
) -> str:
    """The card's text (YAML metadata and markdown) for the model `trainer` trained.

    Args:
        trainer: the trainer, after training (its `state.log_history` holds the metrics).
        model_name: title; defaults to the name of `args.output_dir`.
        dataset: dataset name(s), e.g. `"digits"`.
        license, language, tags, finetuned_from: card metadata, as for [`~Trainer.create_model_card`].
        command: the command line that trained the model, recorded under "Reproduce".
    """
    from pathlib import Path

    model = trainer.accelerator.unwrap_model(trainer.model)
    config, args, history = model.config, trainer.args, trainer.state.log_history
    model_name = model_name or Path(args.output_dir).name
    datasets = [dataset] if isinstance(dataset, str) else list(dataset or [])
    # The Hub's `datasets:` field takes dataset ids: a local folder is named by its last part (not this machine's path).
    datasets = [Path(name).name if os.path.exists(name) else name for name in datasets]
    tags = [tags] if isinstance(tags, str) else list(tags or [])
    task, what, usage, rule, architecture, routing = _describe(model, model_name)
    tags += [tag for tag in ("sal", "backprop-free", task, "sal-hf") if tag not in tags]

    train_log, result_lines, eval_results = parse_log_history(history)
    if train_log is None and eval_results:  # only evaluated: transformers returns the raw log entry then
        skip = ("runtime", "samples_per_second", "steps_per_second")
        eval_results = {
            " ".join(part.capitalize() for part in key.removeprefix("eval_").split("_")): value
            for key, value in eval_results.items()
            if key.startswith("eval_") and not key.endswith(skip)
        }
    accuracy = (eval_results or {}).get("Accuracy")
    card_data = ModelCardData(
        model_name=model_name,
        library_name="transformers",
        pipeline_tag=task,
        license=license,
        language=language,
        tags=tags,
        datasets=datasets or None,
        base_model=finetuned_from,
        metrics=["accuracy"] if accuracy is not None else None,
        eval_results=[
            EvalResult(
                task_type=task,
                dataset_type=datasets[0],
                dataset_name=datasets[0],
                metric_type="accuracy",
                metric_value=float(accuracy),
            )
        ]
        if accuracy is not None and datasets
        else None,
    )

    sections = [
        f"---\n{card_data.to_yaml()}\n---",
        f"# {model_name}",
        (
            f"{what} trained **{'with' if config.learning_rule == 'bp' else 'without'} backpropagation** "
            if trainer.state.global_step
            else f"{what}, not trained by this run (its learning rule trains it "
            f"**{'with' if config.learning_rule == 'bp' else 'without'} backpropagation**) "
        )
        + f"by {RULE_NAMES[config.learning_rule]}, with sal-hf (SAL: Selective Adaptive Learning, "
        f"[arXiv 2601.21561](https://arxiv.org/abs/2601.21561)).",
        "## How to use\n\n"
        "The repository ships its modeling code (`trust_remote_code=True`); with `sal_hf` installed and imported, "
        f"the installed classes are used instead.\n\n```python\nfrom transformers import pipeline\n\n{usage}\n```",
    ]
    sections.append("## Learning rule\n\n" + _table(rule))
    architecture += [("parameters", f"{model.num_parameters():,}")]
    sections.append("## Architecture\n\n" + _table(architecture))
    sections.append("## Routing\n\n" + _table([(name, getattr(config, name)) for name in routing]))
    seeds = [("training seed (`TrainingArguments.seed`)", args.seed), ("data_seed", args.data_seed)]
    seeds += [("routing_seed", config.routing_seed), ("feedback_seed", config.feedback_seed)]
    sections.append("## Seeds\n\n" + _table(seeds))

    data = f"Dataset: {', '.join(f'`{name}`' for name in datasets) or 'not recorded'}."
    for split, part in (("train", trainer.train_dataset), ("evaluation", trainer.eval_dataset)):
        if part is not None and hasattr(part, "__len__"):
            data += f" {split}: {len(part):,} samples."
    description = getattr(getattr(trainer.train_dataset, "info", None), "description", None)
    if description:
        data += f" {description}."
    sections.append("## Data\n\n" + data)

    results = "## Results\n\n"
    if eval_results:
        results += "Final evaluation:\n\n" + _table(list(eval_results.items()), header="metric")
    else:
        results += "No evaluation was run."
    if train_log:
        results += (
            f"\n\nMean training loss over the run: `{train_log.get('train_loss', float('nan')):.4f}` "
            f"({trainer.state.global_step} optimizer steps)."
        )
    if result_lines:
        results += "\n\n### Training results\n\n" + make_markdown_table(result_lines)
    sections.append(results)

    routers = area_utilisation(history)
    if routers:
        rows = ["| router | step | min share | max share | dead areas | churn |", "|---|---|---|---|---|---|"]
        for index, stats in enumerate(routers):
            rows.append(
                f"| {index} | {stats['step']} | {_or_dash(stats.get('min_share'))} | {_or_dash(stats.get('max_share'))} | "
                f"{_or_dash(stats.get('dead'))} | {_or_dash(stats.get('churn'))} |"
            )
        ideal = f"{1 / config.num_areas:.4f}"
        sections.append(
            f"## Area utilisation\n\nShare of training samples per area since the previous log (ideal 1/K = "
            f"{ideal}), at the last training log.\n\n" + "\n".join(rows)
        )
    alignment = _last_log_with(history, "alignment/")
    if alignment:
        angles = [(key.removeprefix("alignment/"), value) for key, value in alignment.items() if key != "step"]
        sections.append(
            f"## Alignment with backpropagation\n\nAngle (degrees) between the local update and the BP gradient "
            f"on a fixed probe batch at step {alignment['step']}.\n\n" + _table(angles, header="hidden layer")
        )

    hyperparameters = extract_hyperparameters_from_trainer(trainer)
    sections.append("## Training hyperparameters\n\n" + _table(list(hyperparameters.items())))
    if command:
        sections.append(f"## Reproduce\n\n```bash\n{command}\n```")
    sections.append("## Framework versions\n\n" + _table(_versions()))
    return "\n\n".join(sections) + "\n"


__all__ = ["area_utilisation", "sal_model_card"]
