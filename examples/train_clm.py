"""Train a SAL transformer language model from scratch with SALTrainer, in the shape of transformers'
`examples/pytorch/language-modeling/run_clm.py`.

Shows: raw text -> a byte-level BPE tokenizer trained offline -> `group_texts` blocks -> `SALTransformerConfig` ->
`AutoModelForCausalLM.from_config` -> `SALTrainer` (learning rule `sal`, `dfa` or `bp`, one flag apart) -> eval loss,
perplexity and bits per byte -> model and tokenizer saved together, so that
`pipeline("text-generation", model=output_dir)` works. By default it trains on Debian's fortunes (offline:
`apt-get install fortunes fortunes-min`): a tiny SAL-4 model (2 blocks, width 64, context 64, 100 steps) takes about
2 minutes on 2 CPU cores shared with other jobs (about 30 s of it training, the rest loading, training the tokenizer
and tokenizing the 2.6 MB corpus).

    python examples/train_clm.py --output_dir outputs/clm                       # fortunes, SAL with 4 areas
    python examples/train_clm.py --learning_rule bp --max_steps 2000 --hidden_size 256 --num_hidden_layers 4 \\
        --num_attention_heads 4 --block_size 128 --output_dir outputs/clm-bp
    python examples/train_clm.py --train_file my.txt --validation_file my_val.txt --output_dir outputs/mine
    python examples/train_clm.py --dataset_name wikitext --dataset_config_name wikitext-2-raw-v1   # needs the network

Every `TrainingArguments` flag works (`--learning_rate`, `--max_steps`, `--bf16`, `--report_to tensorboard`, ...).
Bits per byte = total eval nats / ln 2 / bytes of the text those tokens stand for (`sal_hf.text_data`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
from dataclasses import dataclass, field

import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer, HfArgumentParser, TrainingArguments, set_seed

import sal_hf
from sal_hf.cli import checked_overrides
from sal_hf.text_data import (
    bits_per_byte,
    group_texts,
    load_text_dataset,
    predicted_bytes,
    token_byte_lengths,
    train_tokenizer,
)


logger = logging.getLogger(__name__)


@dataclass
class ModelArguments:
    """The model, its tokenizer and its learning rule. Architecture flags left unset take `SALTransformerConfig`'s
    defaults."""

    model_name_or_path: str | None = field(
        default=None, metadata={"help": "continue training a saved SAL transformer (its config replaces the flags)"}
    )
    tokenizer_name: str | None = field(
        default=None, metadata={"help": "a saved tokenizer folder; default: train one on the training split"}
    )
    tokenizer_vocab_size: int = field(
        default=1024, metadata={"help": "vocabulary of the trained byte-level BPE tokenizer (258 = plain bytes)"}
    )
    learning_rule: str = field(
        default="sal", metadata={"help": "sal, dfa or bp (the transformer has no layer-wise fa)"}
    )
    num_areas: int | None = field(default=4, metadata={"help": "areas K per block's MLP (1 = dense)"})
    hidden_size: int | None = field(default=64)
    num_hidden_layers: int | None = field(default=2)
    num_attention_heads: int | None = field(default=4)
    intermediate_size: int | None = field(default=None, metadata={"help": "MLP width (default: the config's)"})
    config_overrides: str | None = field(
        default=None,
        metadata={"help": "other SALTransformerConfig fields as key=value,... (e.g. feedback_points=micro)"},
    )


@dataclass
class DataTrainingArguments:
    """What to train and evaluate on (as in run_clm.py). No name and no files: the offline fortunes corpus."""

    dataset_name: str | None = field(
        default=None, metadata={"help": "`fortunes` (default, offline) or a datasets hub name such as `wikitext`"}
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "e.g. wikitext-2-raw-v1"})
    train_file: str | None = field(default=None, metadata={"help": "a .txt, .csv or .json file"})
    validation_file: str | None = field(default=None, metadata={"help": "a .txt, .csv or .json file"})
    text_column_name: str = field(default="text")
    max_train_samples: int | None = field(default=None, metadata={"help": "keep the first N training blocks"})
    max_eval_samples: int | None = field(default=None, metadata={"help": "keep the first N validation blocks"})
    block_size: int = field(default=64, metadata={"help": "tokens per training block (the model's context)"})
    validation_split_percentage: int = field(
        default=5, metadata={"help": "% of train used for validation when there is no validation split"}
    )
    keep_linebreaks: bool = field(default=True, metadata={"help": "keep line breaks of .txt files"})
    append_eos: bool | None = field(
        default=None,
        metadata={"help": "end every row with the end-of-text token (default: on for fortunes, off otherwise)"},
    )
    preprocessing_num_workers: int | None = field(default=None)


def build_parser() -> HfArgumentParser:
    parser = HfArgumentParser((ModelArguments, DataTrainingArguments, TrainingArguments))
    # The example's tiny defaults; every TrainingArguments flag overrides them from the command line.
    parser.set_defaults(
        output_dir="outputs/clm",
        do_train=True,
        do_eval=True,
        max_steps=100,
        learning_rate=3e-3,
        per_device_train_batch_size=16,
        per_device_eval_batch_size=32,
        lr_scheduler_type="constant",
        weight_decay=0.0,
        logging_steps=25,
        eval_strategy="no",
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        seed=0,
    )
    return parser


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Train and evaluate; returns the eval metrics (loss, perplexity, bits per byte) and writes them to
    `output_dir/eval_results.json`."""
    model_args, data_args, training_args = build_parser().parse_args_into_dataclasses(args=argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    transformers.utils.logging.set_verbosity_warning()
    set_seed(training_args.seed)

    raw = load_text_dataset(
        data_args.dataset_name,
        data_args.dataset_config_name,
        train_file=data_args.train_file,
        validation_file=data_args.validation_file,
        validation_split_percentage=data_args.validation_split_percentage,
        keep_linebreaks=data_args.keep_linebreaks,
        seed=training_args.seed,
    )
    column = data_args.text_column_name
    append_eos = data_args.append_eos
    if append_eos is None:
        append_eos = data_args.dataset_name in (None, "fortunes") and data_args.train_file is None

    if model_args.tokenizer_name or model_args.model_name_or_path:
        tokenizer = AutoTokenizer.from_pretrained(model_args.tokenizer_name or model_args.model_name_or_path)
    else:
        # No model_max_length: whole entries are tokenized before they are cut into blocks (as in run_clm.py).
        tokenizer = train_tokenizer(list(raw["train"][column]), vocab_size=model_args.tokenizer_vocab_size)

    def tokenize(batch: dict) -> dict:
        ids = tokenizer(batch[column], add_special_tokens=False)["input_ids"]
        return {"input_ids": [row + [tokenizer.eos_token_id] for row in ids] if append_eos else ids}

    with training_args.main_process_first(desc="tokenize and group"):
        tokenized = raw.map(
            tokenize,
            batched=True,
            remove_columns=raw["train"].column_names,
            num_proc=data_args.preprocessing_num_workers,
            desc="tokenize",
        )
        lm_data = tokenized.map(
            group_texts,
            batched=True,
            fn_kwargs={"block_size": data_args.block_size},
            num_proc=data_args.preprocessing_num_workers,
            desc=f"group into blocks of {data_args.block_size}",
        )
    train_set, eval_set = lm_data["train"], lm_data["validation"]
    # A random N blocks (the seed's): the fortunes corpus is in category order, so the first N are one category.
    if data_args.max_train_samples is not None:
        train_set = train_set.shuffle(seed=training_args.seed).select(
            range(min(data_args.max_train_samples, len(train_set)))
        )
    if data_args.max_eval_samples is not None:
        eval_set = eval_set.shuffle(seed=training_args.seed).select(
            range(min(data_args.max_eval_samples, len(eval_set)))
        )
    for name, blocks, needed in (("training", train_set, True), ("validation", eval_set, training_args.do_eval)):
        if needed and len(blocks) == 0:
            raise ValueError(
                f"The {name} text holds no block of {data_args.block_size} tokens: lower --block_size or give more "
                f"{name} text."
            )

    if model_args.model_name_or_path:
        model = AutoModelForCausalLM.from_pretrained(model_args.model_name_or_path)
    else:
        fields = {
            name: getattr(model_args, name)
            for name in ("num_areas", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
            if getattr(model_args, name) is not None
        }
        fields.update(checked_overrides(model_args.config_overrides, sal_hf.SALTransformerConfig))
        config = sal_hf.SALTransformerConfig(
            vocab_size=len(tokenizer),
            max_position_embeddings=data_args.block_size,
            learning_rule=model_args.learning_rule,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            **fields,
        )
        model = AutoModelForCausalLM.from_config(config)
    logger.info(
        f"{model.config.learning_rule} model, {model.num_parameters():,} parameters; {len(train_set)} train / "
        f"{len(eval_set)} validation blocks of {data_args.block_size} tokens"
    )

    trainer = sal_hf.SALTrainer(
        model=model,
        args=training_args,
        train_dataset=train_set if training_args.do_train else None,
        eval_dataset=eval_set if training_args.do_eval else None,
        processing_class=tokenizer,
        data_collator=transformers.default_data_collator,
    )
    metrics: dict[str, float] = {}
    if training_args.do_train:
        result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
        trainer.save_model()  # the model and, as processing_class, the tokenizer
        metrics.update(result.metrics)
        trainer.save_state()
    if training_args.do_eval:
        eval_metrics = trainer.evaluate()
        # Every block has block_size - 1 scored tokens and Trainer averages per block, so eval_loss is the mean
        # over tokens; turn it back into a total to divide by the bytes those tokens stand for.
        tokens = len(eval_set) * (data_args.block_size - 1)
        text_bytes = predicted_bytes(eval_set.with_format("torch")[:]["labels"], token_byte_lengths(tokenizer))
        eval_metrics["perplexity"] = math.exp(min(eval_metrics["eval_loss"], 50.0))
        eval_metrics["eval_bits_per_byte"] = bits_per_byte(eval_metrics["eval_loss"] * tokens, text_bytes)
        eval_metrics["eval_bytes_per_token"] = text_bytes / tokens
        trainer.log_metrics("eval", eval_metrics)
        trainer.save_metrics("eval", eval_metrics)
        metrics.update(eval_metrics)
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(training_args.output_dir)
        with open(os.path.join(training_args.output_dir, "sal_clm_metrics.json"), "w") as handle:
            json.dump(metrics, handle, indent=2)
    return metrics


if __name__ == "__main__":
    main(sys.argv[1:])
