"""Continual learning with claimed areas: tasks one after another, no replay, no task label, through SALTrainer.

Shows: `SALConfig(router="claim")` on a sequence of tasks (class pairs). Before each training batch SALTrainer
scores it with the current model; a loss `claim_surprise` nats above the recent mean (new classes) claims the next
`claim_areas` areas, and training then routes among those only, so an earlier task's areas never change again.
After each task every task is scored two ways: task-incremental (logits masked to the task's classes) and
class-incremental (the plain argmax over all classes). A plain backprop MLP runs the same sequence for comparison.
The measured version of this experiment (split Fashion-MNIST and split MNIST, 10 seeds) is docs/CONTINUAL.md.

    python examples/train_continual.py                  # digits, SAL with claims and BP, under a minute
    python examples/train_continual.py --dataset fashion_mnist --epochs_per_task 1 --output_dir outputs/fmnist
    torchrun --nproc_per_node 2 examples/train_continual.py --use_cpu true --per_device_train_batch_size 16
        # DDP: the processes claim alike (batch 16 a process keeps 50 batches between claims, claim_window)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from transformers import AutoModelForImageClassification, HfArgumentParser, TrainingArguments

import sal_hf
from sal_hf.data import load_image_dataset


# The setting docs/CONTINUAL.md measured: areas alone (no shared dense path, which every task would rewrite), at the
# full lr, with a per-area output layer; routing once per sample, on the input.
CLAIMED_AREAS = {
    "router": "claim",
    "routing_scope": "shared",
    "dual_path": False,
    "area_lr_scale": 1.0,
    "output_areas": True,
}


@dataclass
class ContinualArguments:
    dataset: str = field(default="digits", metadata={"help": "a built-in image set (sal_hf.data.LOADERS)"})
    tasks: list[str] = field(
        default_factory=lambda: ["0,1", "2,3", "4,5", "6,7", "8,9"],
        metadata={"help": "the tasks in training order, each a comma-separated list of class ids"},
    )
    epochs_per_task: float = field(default=8.0, metadata={"help": "passes over each task's training images"})
    methods: list[str] = field(
        default_factory=lambda: ["sal-claim", "bp"],
        metadata={"help": "sal-claim (SAL-16 with claimed areas) and/or bp (a plain MLP trained by backprop)"},
    )
    num_areas: int = field(default=16, metadata={"help": "areas K (a sequence of T tasks needs T * claim_areas)"})
    hidden_size: int = field(default=256, metadata={"help": "hidden units"})
    claim_areas: int | None = field(default=None, metadata={"help": "areas a claim takes (SALConfig's default)"})
    claim_surprise: float | None = field(default=None, metadata={"help": "nats above the recent mean that claim"})
    claim_window: int | None = field(default=None, metadata={"help": "batches the recent mean spans"})
    claim_prototypes: int | None = field(default=None, metadata={"help": "prototypes an area"})


def task_batches(n: int, epochs: float, args: TrainingArguments) -> int:
    """The training batches one task gives, as SALTrainer counts them (each micro-batch is scored)."""
    per_epoch = math.ceil(n / (args.per_device_train_batch_size * args.world_size))
    return math.ceil(per_epoch * epochs)


def check_claims_fit(config: sal_hf.SALConfig, sizes: list[int], cli: ContinualArguments, args) -> None:
    """Every task must be claimable: enough free areas, and more than `claim_window` batches before the next task
    (a claim waits that long after the previous one)."""
    if len(sizes) * config.claim_areas > config.num_areas:
        raise ValueError(
            f"{len(sizes)} tasks x claim_areas={config.claim_areas} need {len(sizes) * config.claim_areas} areas; "
            f"num_areas={config.num_areas}. Raise --num_areas or lower --claim_areas."
        )
    for index, n in enumerate(sizes[:-1]):
        batches = task_batches(n, cli.epochs_per_task, args)
        if batches <= config.claim_window:
            raise ValueError(
                f"Task {index + 1} ({n} images) gives {batches} training batches, but the next task can only claim "
                f"areas after claim_window={config.claim_window} batches. Raise --epochs_per_task, or lower "
                "--claim_window or --per_device_train_batch_size."
            )


def scores(trainer: sal_hf.SALTrainer, test, classes: list[int]) -> tuple[float, float]:
    """(task-incremental, class-incremental) accuracy % on ``test``, one task's test images."""
    prediction = trainer.predict(test)
    logits, labels = prediction.predictions, prediction.label_ids
    masked = np.full_like(logits, -np.inf)
    masked[:, classes] = logits[:, classes]
    return float((masked.argmax(-1) == labels).mean() * 100), float((logits.argmax(-1) == labels).mean() * 100)


def summary(matrix: list[list[float]]) -> tuple[float, float]:
    """(average final accuracy, forgetting): best minus final, averaged over all tasks but the last."""
    final = matrix[-1]
    forgetting = [max(row[j] for row in matrix[j:]) - final[j] for j in range(len(final) - 1)]
    return sum(final) / len(final), sum(forgetting) / max(len(forgetting), 1)


def main(argv: list[str] | None = None) -> dict[str, dict]:
    parser = HfArgumentParser((ContinualArguments, TrainingArguments))
    parser.set_defaults(
        output_dir="outputs/continual",
        learning_rate=1e-3,
        per_device_train_batch_size=32,
        per_device_eval_batch_size=256,
        lr_scheduler_type="constant",
        weight_decay=0.0,
        logging_steps=100,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        seed=0,
    )
    cli, args = parser.parse_args_into_dataclasses(args=argv)
    unknown = sorted(set(cli.methods) - {"sal-claim", "bp"})
    if unknown:
        raise ValueError(f"--methods {unknown}: choose from sal-claim, bp.")
    tasks = [[int(c) for c in task.split(",")] for task in cli.tasks]
    data = load_image_dataset(cli.dataset)
    train, test = data["train"], data["test"]
    names = train.features["labels"].names
    outside = sorted({c for task in tasks for c in task if not 0 <= c < len(names)})
    if outside:
        raise ValueError(f"--tasks names classes {outside}; {cli.dataset} has classes 0 to {len(names) - 1}.")
    image_shape = np.asarray(train[0]["pixel_values"]).shape
    per_task = [
        (
            train.filter(lambda label, c=classes: label in c, input_columns="labels"),
            test.filter(lambda label, c=classes: label in c, input_columns="labels"),
        )
        for classes in tasks
    ]
    results = {}
    for method in cli.methods:
        claims = {k: v for k, v in vars(cli).items() if k.startswith("claim_") and v is not None}
        fields = {**CLAIMED_AREAS, **claims, "num_areas": cli.num_areas} if method == "sal-claim" else {}
        config = sal_hf.SALConfig(
            input_size=int(np.prod(image_shape)),
            image_size=list(image_shape[-2:]),
            hidden_sizes=[cli.hidden_size],
            num_labels=len(names),
            learning_rule="sal" if method == "sal-claim" else "bp",
            id2label=dict(enumerate(names)),
            label2id={name: i for i, name in enumerate(names)},
            **fields,
        )
        if method == "sal-claim":
            check_claims_fit(config, [len(task_train) for task_train, _ in per_task], cli, args)
        torch.manual_seed(args.seed)
        model = AutoModelForImageClassification.from_config(config)
        matrix = {"task-incremental": [], "class-incremental": []}
        args.num_train_epochs = cli.epochs_per_task
        processor = sal_hf.SALImageProcessor.from_sal_config(config)  # saved with the model: pipeline-ready
        for task_train, _ in per_task:  # a new trainer (and optimizer) a task, the same model
            trainer = sal_hf.SALTrainer(model=model, args=args, train_dataset=task_train, processing_class=processor)
            trainer.train()
            rows = [scores(trainer, task_test, classes) for (_, task_test), classes in zip(per_task, tasks)]
            matrix["task-incremental"].append([task for task, _ in rows])
            matrix["class-incremental"].append([every for _, every in rows])
        trainer.save_model(f"{args.output_dir}/{method}")
        router = model.routers[0] if method == "sal-claim" else None
        results[method] = {
            "matrix": matrix,
            "summary": {kind: summary(rows) for kind, rows in matrix.items()},
            "claimed_areas": int(router.claimed) if router is not None else None,
        }
    if args.process_index == 0:
        print(f"\n{cli.dataset}: tasks {tasks}, {cli.epochs_per_task:g} epoch(s) a task, seed {args.seed}")
        print("| method | task-IL avg final acc | task-IL forgetting | class-IL avg final acc | class-IL forgetting |")
        print("|---|---|---|---|---|")
        for method, result in results.items():
            (ti, tf), (ci, cf) = result["summary"]["task-incremental"], result["summary"]["class-incremental"]
            print(f"| {method} | {ti:.2f} | {tf:.2f} | {ci:.2f} | {cf:.2f} |")
        for method, result in results.items():
            if result["claimed_areas"] is not None:
                print(f"\n{method}: {result['claimed_areas']} areas claimed; saved to {args.output_dir}/{method}")
    return results


if __name__ == "__main__":
    main()
