"""Train SAL and backprop on scikit-learn's bundled digits (8x8, 10 classes) through SALTrainer.

Shows: the whole user flow (SALConfig -> AutoModelForImageClassification -> SALTrainer -> save_model ->
from_pretrained), SAL and BP test accuracy side by side, area health. No download: the digits ship with
scikit-learn. Takes about a minute on 2 CPU cores (`make demo`).

    python examples/train_digits.py                        # SAL-16 and BP, 25 epochs, AdamW lr 1e-3
    python examples/train_digits.py --num_areas 4 --num_train_epochs 10 --output_dir outputs/x
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

import torch
from transformers import AutoModelForImageClassification, HfArgumentParser, TrainingArguments

import sal_hf
from sal_hf.data import load_image_dataset
from sal_hf.metrics import classification_metrics


@dataclass
class DemoArguments:
    rules: list[str] = field(default_factory=lambda: ["sal", "bp"], metadata={"help": "learning rules to train"})
    num_areas: int = field(default=16, metadata={"help": "areas K of the SAL model (BP uses 1)"})
    hidden_size: int = field(default=256, metadata={"help": "hidden units (the paper's 2-layer MLP)"})
    test_size: float = field(default=0.2, metadata={"help": "stratified test share, split with seed 0"})


def main(argv: list[str] | None = None) -> None:
    parser = HfArgumentParser((DemoArguments, TrainingArguments))
    # The demo's own defaults; every TrainingArguments flag still overrides them from the command line.
    parser.set_defaults(
        output_dir="outputs/digits",
        learning_rate=1e-3,
        num_train_epochs=25,
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
    demo, args = parser.parse_args_into_dataclasses(args=argv)

    data = load_image_dataset("digits", seed=0, test_size=demo.test_size)
    train, test = data["train"], data["test"]
    names = train.features["labels"].names
    test_images = test[:]["pixel_values"]  # (N, 8, 8)

    resume = args.resume_from_checkpoint
    if resume and resume.lower() != "true" and len(demo.rules) > 1:
        raise ValueError(
            f"--resume_from_checkpoint {resume} is one rule's checkpoint; with --rules {' '.join(demo.rules)} pass "
            "--resume_from_checkpoint true (each rule resumes from the last checkpoint in output_dir/<rule>)."
        )
    rows = []
    for rule in demo.rules:
        config = sal_hf.SALConfig(
            input_size=64,
            image_size=[8, 8],
            hidden_sizes=[demo.hidden_size],
            num_labels=10,
            num_areas=demo.num_areas if rule == "sal" else 1,
            learning_rule=rule,
            id2label=dict(enumerate(names)),
            label2id={name: i for i, name in enumerate(names)},
        )
        torch.manual_seed(args.seed)
        model = AutoModelForImageClassification.from_config(config)
        out_dir = f"{args.output_dir}/{rule}"
        rule_args = copy.copy(args)
        rule_args.output_dir = out_dir  # each rule's checkpoints in its own folder
        trainer = sal_hf.SALTrainer(
            model=model,
            args=rule_args,
            train_dataset=train,
            eval_dataset=test,
            compute_metrics=classification_metrics(num_labels=10),  # evaluate, through sal-hf's metric module
            processing_class=sal_hf.SALImageProcessor.from_sal_config(config),  # saved: pipeline-ready
        )
        start = time.perf_counter()
        trainer.train(resume_from_checkpoint=True if resume and resume.lower() == "true" else resume)
        seconds = time.perf_counter() - start
        metrics = trainer.evaluate()
        trainer.save_model(out_dir)

        again = AutoModelForImageClassification.from_pretrained(out_dir).eval()
        model.eval()
        with torch.no_grad():
            same = torch.equal(again(pixel_values=test_images).logits, model(pixel_values=test_images).logits)
        logged = [entry for entry in trainer.state.log_history if any(k.startswith("area/") for k in entry)]
        health = {k: v for k, v in logged[-1].items() if k.startswith("area/")} if logged else {}
        rows.append((rule, config.num_areas, metrics["eval_accuracy"], seconds, out_dir, same, health))

    print(
        f"\nDigits: {len(train)} train / {len(test)} test images, seed {args.seed}, {getattr(args.optim, 'value', args.optim)}, lr "
        f"{args.learning_rate}, batch {args.per_device_train_batch_size}, "
        + (f"{args.max_steps} steps\n" if args.max_steps > 0 else f"{args.num_train_epochs:g} epochs\n")
    )
    print("| rule | areas K | test accuracy | train time (s) | saved to | reload identical |")
    print("|---|---|---|---|---|---|")
    for rule, k, acc, seconds, out_dir, same, _ in rows:
        print(f"| {rule} | {k} | {100 * acc:.2f}% | {seconds:.1f} | {out_dir} | {same} |")
    for rule, _, _, _, _, _, health in rows:
        if health:
            print(f"\narea health of {rule} at the last log: {health}")


if __name__ == "__main__":
    main()
