"""Worker of `test_claim_router.py::test_two_processes_claim_and_train_like_one`.

    python -m torch.distributed.run --nproc_per_node N tests/ddp_claim_worker.py OUTPUT_DIR BATCH_PER_PROCESS

`router="claim"` with the shipped claim defaults through SALTrainer on task A, then on task B (new labels), in N gloo
processes of BATCH_PER_PROCESS rows each; saves the final model to OUTPUT_DIR/final.
The test runs it with 2 x 8 and 1 x 16 and compares the two models.
"""

import gc
import sys
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from conftest import as_dataset, training_args
from test_claim_router import claim_config, two_tasks

from sal_hf import SALForImageClassification, SALTrainer


def main() -> None:
    torch.set_num_threads(1)
    output, batch = Path(sys.argv[1]), int(sys.argv[2])
    # A timeout, so that a collective one process never reaches fails instead of waiting 30 minutes.
    dist.init_process_group("gloo", timeout=timedelta(seconds=120))
    torch.manual_seed(0)
    model = SALForImageClassification(claim_config(output_areas=True))
    (router,) = model.routers
    # 128 rows a task in global batches of 16: task A's 7 epochs give 56 batches, more than claim_window (50).
    for name, (x, y), epochs in zip("ab", two_tasks(), (7, 2)):
        args = training_args(
            output / name, per_device_train_batch_size=batch, learning_rate=3e-2, num_train_epochs=epochs
        )
        trainer = SALTrainer(model=model, args=args, train_dataset=as_dataset(x, y))
        trainer.train()
    if dist.get_rank() == 0:
        trainer.save_model(str(output / "final"))
    print(f"rank {dist.get_rank()}: claimed {int(router.claimed)} areas, active {router.active_areas()}", flush=True)
    # DDP must be gone before its process group: destroying the group first hung now and then (gloo).
    del trainer
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
