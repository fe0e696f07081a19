"""Worker of `test_transformer_robustness.py::test_two_processes_train_the_transformer_like_one`.

    python -m torch.distributed.run --nproc_per_node 2 tests/ddp_transformer_worker.py OUT 4 [FIELD=VALUE ...]
    python tests/ddp_transformer_worker.py OUT 8 [FIELD=VALUE ...]

Trains the tests' tiny SAL transformer language model (plus the config fields given) for 4 steps through
`SALTrainer` on fixed random token sequences, with the given per-process batch size, and saves it to OUT.
"""

import gc
import json
import sys

import torch
from test_transformer import TINY, token_batch
from transformers import TrainingArguments

from sal_hf import SALTrainer, SALTransformerConfig, SALTransformerForCausalLM


def parse_fields(fields: list[str]) -> dict:
    """`["feedback_decay=0.01", "feedback_alignment=kolen_pollack"]` -> `{"feedback_decay": 0.01, ...}`: a value is
    JSON where it parses as JSON, else a string."""
    parsed = {}
    for name, value in (field.split("=", 1) for field in fields):
        try:
            parsed[name] = json.loads(value)
        except json.JSONDecodeError:
            parsed[name] = value
    return parsed


def main() -> None:
    output_dir, batch_size, *fields = sys.argv[1:]
    torch.set_num_threads(1)
    torch.manual_seed(0)
    config = SALTransformerConfig(**{**TINY, **parse_fields(fields)})
    model = SALTransformerForCausalLM(config)
    data = [{"input_ids": row, "labels": row} for row in token_batch(64, seed=1)]
    args = TrainingArguments(
        output_dir=output_dir,
        per_device_train_batch_size=int(batch_size),
        max_steps=4,
        learning_rate=3e-3,
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
    )
    trainer = SALTrainer(model=model, args=args, train_dataset=data)
    trainer.train()
    trainer.save_model(output_dir)
    print(f"processes={args.world_size}", flush=True)
    # DDP first, then its process group, as examples/train_accelerate.py does (gloo aborted at exit now and then).
    del trainer
    gc.collect()
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
