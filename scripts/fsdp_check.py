"""Does SAL keep its semantics under FSDP? Trains a small SAL model through SALTrainer under whatever launcher
runs this script and checks that (1) training runs and the loss falls, (2) areas that no sample ever selected
are bit-identical afterwards (selectivity: with FSDP's sharded parameters an unused area could still receive a
zero gradient, and AdamW would then move it through weight decay).

    accelerate launch --config_file examples/accelerate/fsdp_gpu.yaml --num_processes 1 scripts/fsdp_check.py
    python scripts/fsdp_check.py                       # the same without FSDP, for comparison

Synthetic data, no download; about a minute on one GPU. Prints one line per check and exits 1 if one fails.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import TrainingArguments

from sal_hf import SALConfig, SALForImageClassification, SALTrainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="sal-fsdp-"))

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2048, 64, generator=generator)
    y = (x @ torch.randn(64, 10, generator=generator)).argmax(-1)
    data = [{"pixel_values": xi, "labels": int(yi)} for xi, yi in zip(x, y)]
    config = SALConfig(
        input_size=64,
        hidden_sizes=[128, 128],
        num_labels=10,
        num_areas=16,
        routing_balance_rate=0.0,
        feedback_alignment="fixed",  # SALTrainer refuses learned feedback under FSDP (untested)
    )
    torch.manual_seed(0)
    model = SALForImageClassification(config)
    for router in model.routers:  # areas 12-15 can never win (no balancing moves the bias): the unused ones
        router.area_bias[12:] = -10.0
    initial = {name: tensor.detach().cpu().clone() for name, tensor in model.state_dict().items()}
    arguments = TrainingArguments(
        str(out),
        max_steps=args.steps,
        per_device_train_batch_size=64,
        learning_rate=3e-3,
        weight_decay=0.1,
        logging_steps=10_000,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
    )
    trainer = SALTrainer(model=model, args=arguments, train_dataset=data)
    loads = [torch.zeros(config.num_areas, dtype=torch.long) for _ in model.routers]

    def count(index: int):
        def hook(router, inputs, output):  # every sample routed in training, whatever resets the routers' counters
            if router.training:
                loads[index] += torch.bincount(output[0], minlength=router.num_areas).cpu()

        return hook

    for index, router in enumerate(model.routers):
        router.register_forward_hook(count(index))
    result = trainer.train()
    trainer.save_model(str(out / "final"))
    if not trainer.is_world_process_zero():
        return
    final = load_file(out / "final" / "model.safetensors")
    print(
        f"distributed_type={trainer.accelerator.distributed_type.value} processes={trainer.accelerator.num_processes} steps={trainer.state.global_step} "
        f"train_loss={result.training_loss:.4f}"
    )
    failures = 0
    for index, prefix in enumerate(["sal.layers.0.areas", "sal.layers.1.areas"]):
        unused = [k for k, count in enumerate(loads[index].tolist()) if count == 0]
        used = [k for k in range(config.num_areas) if k not in unused]
        moved_unused = [
            k for k in unused if not torch.equal(final[f"{prefix}.weight_{k}"], initial[f"{prefix}.weight_{k}"])
        ]
        still_used = [k for k in used if torch.equal(final[f"{prefix}.weight_{k}"], initial[f"{prefix}.weight_{k}"])]
        ok = not moved_unused and not still_used
        failures += not ok
        print(
            f"{'PASS' if ok else 'FAIL'} {prefix}: unused areas {unused} moved={moved_unused}; "
            f"used areas that did not move={still_used}"
        )
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
