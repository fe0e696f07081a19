"""Train a SAL model with SALTrainer under `accelerate launch` (one CPU, multi-GPU DDP, FSDP) or plain python.

Shows: SAL through Accelerate unchanged - one `accelerator.backward` on the local surrogate gives DDP gradient
sync, gradient accumulation and mixed precision; routing statistics are summed over processes so that every
rank routes identically. Ready-made Accelerate configs are in `examples/accelerate/`.

    python examples/train_accelerate.py --output_dir outputs/acc                 # one process
    torchrun --nproc_per_node 2 examples/train_accelerate.py --use_cpu true \\
        --output_dir outputs/acc                                                  # 2 CPU processes (gloo)
    accelerate launch --config_file examples/accelerate/ddp_gpu.yaml \\
        examples/train_accelerate.py --output_dir outputs/acc --bf16              # every GPU of one machine

`--per_device_train_batch_size` is per process: 2 processes with 16 each train like 1 process with 32.
Digits (bundled with scikit-learn) train in well under a minute on 2 CPU cores.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass, field

import numpy as np
import torch
from transformers import AutoModelForImageClassification, HfArgumentParser, TrainingArguments, set_seed

import sal_hf
from sal_hf.data import load_image_dataset


@dataclass
class ModelArguments:
    learning_rule: str = field(default="sal", metadata={"help": "sal, dfa, fa or bp (the MLP has all four)"})
    num_areas: int = field(default=16, metadata={"help": "areas K per layer"})
    hidden_sizes: list[int] = field(default_factory=lambda: [256], metadata={"help": "hidden units per layer"})
    residual: bool = field(default=False, metadata={"help": "residual blocks after the first hidden layer"})
    norm: str = field(default="none", metadata={"help": "none, layernorm or rmsnorm before every layer"})
    feedback: str | None = field(
        default=None, metadata={"help": "direct, layerwise or stream (residual stacks) (unset: the rule's own)"}
    )
    feedback_alignment: str | None = field(
        default=None, metadata={"help": "fixed, kolen_pollack or sign (unset: SALConfig's default, docs/FEEDBACK.md)"}
    )
    feedback_scope: str = field(default="shared", metadata={"help": "shared, or area (each area its own feedback)"})


@dataclass
class DataArguments:
    dataset: str = field(default="digits", metadata={"help": "a name from sal_hf.data.LOADERS"})
    max_train_samples: int | None = field(default=None, metadata={"help": "use the first N training images"})


def accuracy(prediction) -> dict[str, float]:
    return {"accuracy": float((np.argmax(prediction.predictions, -1) == prediction.label_ids).mean())}


def main() -> None:
    parser = HfArgumentParser((ModelArguments, DataArguments, TrainingArguments))
    parser.set_defaults(
        output_dir="outputs/accelerate",
        learning_rate=1e-3,
        num_train_epochs=10,
        per_device_train_batch_size=32,
        report_to="none",
        save_strategy="no",
    )
    model_args, data_args, args = parser.parse_args_into_dataclasses()
    set_seed(args.seed)

    data = load_image_dataset(data_args.dataset)
    train, test = data["train"], data["test"]
    if data_args.max_train_samples is not None:
        train = train.select(range(min(data_args.max_train_samples, len(train))))
    names = train.features["labels"].names
    shape = train.features["pixel_values"].shape  # (H, W) for the built-in sets
    config = sal_hf.SALConfig(
        input_size=int(np.prod(shape)),
        image_size=list(shape[-2:]),
        num_channels=int(np.prod(shape[:-2])) if len(shape) > 2 else 1,
        hidden_sizes=model_args.hidden_sizes,
        num_labels=len(names),
        num_areas=model_args.num_areas,
        learning_rule=model_args.learning_rule,
        residual=model_args.residual,
        norm=model_args.norm,
        feedback=model_args.feedback,
        feedback_alignment=model_args.feedback_alignment,
        feedback_scope=model_args.feedback_scope,
        id2label=dict(enumerate(names)),
        label2id={name: i for i, name in enumerate(names)},
    )
    model = AutoModelForImageClassification.from_config(config)
    trainer = sal_hf.SALTrainer(
        model=model,
        args=args,
        train_dataset=train,
        eval_dataset=test,
        compute_metrics=accuracy,
        processing_class=sal_hf.SALImageProcessor.from_sal_config(config),  # saved with the model: pipeline-ready
    )
    trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    trainer.save_model(args.output_dir)
    metrics = trainer.evaluate()
    if trainer.is_world_process_zero():
        print(f"processes={args.world_size} test accuracy={metrics['eval_accuracy']:.4f} -> {args.output_dir}")
    # Under torchrun: DDP first, then its process group, before the interpreter exits. Left to the exit, gloo's
    # threads aborted a process now and then ("terminate called without an active exception").
    del trainer
    gc.collect()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
