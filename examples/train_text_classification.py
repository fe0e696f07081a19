"""Train a SAL transformer text classifier from scratch with SALTrainer, in the shape of transformers'
`examples/pytorch/text-classification/run_classification.py`.

Shows: `AutoModelForSequenceClassification` over a `SALTransformerConfig` (label names in `id2label`), a byte-level
BPE tokenizer trained offline, padding per batch (`DataCollatorWithPadding`; the model reads the last non-pad
token), accuracy on the validation and test splits, and a folder that `pipeline("text-classification",
model=output_dir)` loads. The default task is offline: which of the 12 Debian fortunes category files with 500 or
more unique entries a quote comes from (stratified 80/10/10 split, seed 0; `apt-get install fortunes
fortunes-min`). A tiny SAL-4 model (2 blocks, width 64, 100 steps of 32 quotes) takes about 2 minutes on 2 CPU
cores shared with other jobs and reaches about 43% test accuracy (chance ~13%; the first command below, run on
2026-11-30 with seed 0 on an Intel Xeon: test 43.2%, validation 41.9%, as a review's run had it).

    python examples/train_text_classification.py --output_dir outputs/fortunes-cls
    python examples/train_text_classification.py --learning_rule bp --max_steps 1000 --output_dir outputs/cls-bp
    python examples/train_text_classification.py --train_file train.csv --validation_file val.csv \\
        --text_column_name sentence --label_column_name label --output_dir outputs/mine
    python examples/train_text_classification.py --model_name_or_path outputs/clm   # start from a trained LM

Every `TrainingArguments` flag works. `--dataset_name NAME` loads a hub dataset with `datasets.load_dataset`
(needs the network).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import dataclass, field

import numpy as np
import transformers
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    HfArgumentParser,
    TrainingArguments,
    set_seed,
)

import sal_hf
from sal_hf.cli import checked_overrides
from sal_hf.text_data import load_fortunes_classification, train_tokenizer


logger = logging.getLogger(__name__)


@dataclass
class ModelArguments:
    """The model, its tokenizer and its learning rule. Architecture flags left unset take `SALTransformerConfig`'s
    defaults."""

    model_name_or_path: str | None = field(
        default=None, metadata={"help": "a saved SAL transformer (e.g. a train_clm.py output) to start from"}
    )
    tokenizer_name: str | None = field(
        default=None, metadata={"help": "a saved tokenizer folder; default: train one on the training split"}
    )
    tokenizer_vocab_size: int = field(default=1024, metadata={"help": "vocabulary of the trained tokenizer"})
    learning_rule: str | None = field(
        default=None,
        metadata={"help": "sal (the default for a new model), dfa or bp (the transformer has no layer-wise fa)"},
    )
    num_areas: int | None = field(default=4, metadata={"help": "areas K per block's MLP (1 = dense)"})
    hidden_size: int | None = field(default=64)
    num_hidden_layers: int | None = field(default=2)
    num_attention_heads: int | None = field(default=4)
    intermediate_size: int | None = field(default=None)
    config_overrides: str | None = field(
        default=None, metadata={"help": "other SALTransformerConfig fields as key=value,..."}
    )


@dataclass
class DataTrainingArguments:
    """What to classify (as in run_classification.py). No name and no files: the offline fortunes categories."""

    dataset_name: str | None = field(default=None, metadata={"help": "`fortunes` (default, offline) or a hub name"})
    dataset_config_name: str | None = field(default=None)
    train_file: str | None = field(default=None, metadata={"help": "a .csv, .json or .jsonl file"})
    validation_file: str | None = field(default=None)
    test_file: str | None = field(default=None)
    text_column_name: str = field(default="text")
    label_column_name: str = field(default="label")
    min_entries: int = field(default=500, metadata={"help": "fortunes: keep categories with this many entries"})
    max_seq_length: int = field(default=64, metadata={"help": "tokens per text (longer ones are truncated)"})
    max_train_samples: int | None = field(default=None)
    max_eval_samples: int | None = field(default=None)
    max_predict_samples: int | None = field(default=None)


def build_parser() -> HfArgumentParser:
    parser = HfArgumentParser((ModelArguments, DataTrainingArguments, TrainingArguments))
    parser.set_defaults(
        output_dir="outputs/text-classification",
        do_train=True,
        do_eval=True,
        do_predict=True,
        max_steps=100,
        learning_rate=3e-3,
        per_device_train_batch_size=32,
        per_device_eval_batch_size=64,
        lr_scheduler_type="constant",
        weight_decay=0.0,
        logging_steps=50,
        eval_strategy="no",
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        seed=0,
    )
    return parser


def load_raw(data_args: DataTrainingArguments, seed: int):
    from datasets import ClassLabel, Value, load_dataset

    if data_args.dataset_name is not None and data_args.train_file is not None:
        raise ValueError("Give --dataset_name or --train_file, not both.")
    if data_args.dataset_name in (None, "fortunes") and data_args.train_file is None:
        if data_args.validation_file or data_args.test_file:
            raise ValueError("--validation_file / --test_file need a --train_file too.")
        return load_fortunes_classification(min_entries=data_args.min_entries, seed=seed)
    if data_args.dataset_name is not None:
        raw = load_dataset(data_args.dataset_name, data_args.dataset_config_name)
    else:
        files = {"train": data_args.train_file, "validation": data_args.validation_file, "test": data_args.test_file}
        files = {k: v for k, v in files.items() if v is not None}
        extension = data_args.train_file.rsplit(".", 1)[-1]
        builders = {"csv": "csv", "json": "json", "jsonl": "json"}
        if extension not in builders:
            raise ValueError(f"--train_file {data_args.train_file}: a .csv, .json or .jsonl file with a label column.")
        raw = load_dataset(builders[extension], data_files=files)
    if data_args.label_column_name != "label":
        raw = raw.rename_column(data_args.label_column_name, "label")
    if not isinstance(raw["train"].features["label"], ClassLabel):
        # The label names are the training split's, and every split is mapped with them (class_encode_column on the
        # DatasetDict would number each split's own labels: a validation label would mean another class).
        raw["train"] = raw["train"].class_encode_column("label")
        feature = raw["train"].features["label"]
        for split in [name for name in raw if name != "train"]:
            unseen = sorted(set(map(str, raw[split]["label"])) - set(feature.names))
            if unseen:
                raise ValueError(f"The {split} split has labels the training split lacks: {unseen[:10]}.")
            # Through strings: a ClassLabel cast keeps an integer as its class id, but the ids are the training
            # split's name order ("10" before "2"), so an integer label must be looked up by its name.
            raw[split] = raw[split].cast_column("label", Value("string")).cast_column("label", feature)
    return raw


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Train and evaluate; returns validation (`eval_*`) and test (`test_*`) accuracy and loss."""
    model_args, data_args, training_args = build_parser().parse_args_into_dataclasses(args=argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    transformers.utils.logging.set_verbosity_warning()
    set_seed(training_args.seed)

    raw = load_raw(data_args, training_args.seed)
    names = raw["train"].features["label"].names
    column = data_args.text_column_name
    if model_args.tokenizer_name or model_args.model_name_or_path:
        tokenizer = AutoTokenizer.from_pretrained(model_args.tokenizer_name or model_args.model_name_or_path)
    else:
        tokenizer = train_tokenizer(
            list(raw["train"][column]),
            vocab_size=model_args.tokenizer_vocab_size,
            model_max_length=data_args.max_seq_length,
        )

    def tokenize(batch: dict) -> dict:
        encoded = tokenizer(batch[column], truncation=True, max_length=data_args.max_seq_length)
        return {**encoded, "labels": batch["label"]}

    with training_args.main_process_first(desc="tokenize"):
        data = raw.map(tokenize, batched=True, remove_columns=raw["train"].column_names, desc="tokenize")
    if training_args.do_eval and "validation" not in data:
        raise ValueError("--do_eval needs a validation split: pass --validation_file, or --do_eval false.")
    limits = {"train": data_args.max_train_samples, "validation": data_args.max_eval_samples}
    limits["test"] = data_args.max_predict_samples
    for split, limit in limits.items():
        if split in data and limit is not None:  # a random N (the seed's): the splits may be sorted by class
            data[split] = data[split].shuffle(seed=training_args.seed).select(range(min(limit, len(data[split]))))

    labels = {
        "num_labels": len(names),
        "id2label": dict(enumerate(names)),
        "label2id": {n: i for i, n in enumerate(names)},
    }
    fields = {
        name: getattr(model_args, name)
        for name in ("num_areas", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
        if getattr(model_args, name) is not None
    }
    fields.update(checked_overrides(model_args.config_overrides, sal_hf.SALTransformerConfig))
    if model_args.model_name_or_path:
        if fields:  # the saved weights fix the architecture
            raise ValueError(
                f"{sorted(fields)} set a new model's architecture; {model_args.model_name_or_path} has its own. Leave "
                "them out (the learning rule may change: --learning_rule)."
            )
        rule = {"learning_rule": model_args.learning_rule} if model_args.learning_rule else {}
        model = AutoModelForSequenceClassification.from_pretrained(model_args.model_name_or_path, **labels, **rule)
    else:
        config = sal_hf.SALTransformerConfig(
            vocab_size=len(tokenizer),
            max_position_embeddings=data_args.max_seq_length,
            learning_rule=model_args.learning_rule or "sal",
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            **labels,
            **fields,
        )
        model = AutoModelForSequenceClassification.from_config(config)
    logger.info(f"{model.config.learning_rule} classifier, {len(names)} classes, {model.num_parameters():,} parameters")

    def compute_metrics(prediction) -> dict[str, float]:
        return {"accuracy": float((np.argmax(prediction.predictions, axis=-1) == prediction.label_ids).mean())}

    trainer = sal_hf.SALTrainer(
        model=model,
        args=training_args,
        train_dataset=data["train"] if training_args.do_train else None,
        eval_dataset=data["validation"] if training_args.do_eval else None,
        processing_class=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=compute_metrics,
    )
    metrics: dict[str, float] = {}
    if training_args.do_train:
        result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
        trainer.save_model()
        metrics.update(result.metrics)
    if training_args.do_eval:
        metrics.update(trainer.evaluate())
    if training_args.do_predict and "test" in data:
        metrics.update(trainer.evaluate(data["test"], metric_key_prefix="test"))
    trainer.log_metrics("all", metrics)
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(training_args.output_dir)
        with open(os.path.join(training_args.output_dir, "sal_classification_metrics.json"), "w") as handle:
            json.dump(metrics, handle, indent=2)
    return metrics


if __name__ == "__main__":
    main(sys.argv[1:])
