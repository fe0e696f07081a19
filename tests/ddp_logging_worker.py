"""Worker of `test_defaults.py::test_under_ddp_each_rank_counts_its_own_routing_between_logs`.

    python -m torch.distributed.run --nproc_per_node 2 tests/ddp_logging_worker.py OUTPUT_DIR

Two gloo processes train a SAL model with the shipped defaults through SALTrainer (DDP, `broadcast_buffers=True`, the
default) with `logging_steps=3`. Before every log, each rank's router counters must hold exactly what that rank routed
since the last log (forward hooks record the truth), and the logged area health must be that of the sum over ranks.
Exits non-zero (assertion) otherwise.
"""

import gc
import sys
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from conftest import as_dataset, tiny_batch, training_args
from transformers import TrainerCallback

from sal_hf import SALConfig, SALForImageClassification, SALTrainer


class CheckCounters(TrainerCallback):
    def __init__(self, routers, truth):
        self.routers, self.truth, self.checked, self.expected = routers, truth, 0, {}

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % args.logging_steps:
            return
        for index, router in enumerate(self.routers):
            mine = self.truth[index]
            assert torch.equal(router.logged_load.cpu(), mine), (
                f"rank {dist.get_rank()} router {index}: counter {router.logged_load.tolist()}, routed {mine.tolist()}"
            )
            everyone = mine.clone()
            dist.all_reduce(everyone)
            share = everyone / everyone.sum()
            self.expected[f"area/router_{index}/max_share"] = round(float(share.max()), 4)
            mine.zero_()
        self.checked += 1


def main() -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", timeout=timedelta(seconds=120))
    rank = dist.get_rank()
    torch.manual_seed(0)
    # The shipped defaults (K = 16, dual path, identical areas, lr / K), on a small input.
    model = SALForImageClassification(SALConfig(input_size=16, hidden_sizes=[32, 32], num_labels=5))
    truth = [torch.zeros(r.num_areas, dtype=torch.float64) for r in model.routers]
    for index, router in enumerate(model.routers):

        def record(module, inputs, output, index=index):
            if module.training and torch.is_grad_enabled():
                truth[index] += torch.bincount(output[0], minlength=module.num_areas).double()

        router.register_forward_hook(record)
    check = CheckCounters(model.routers, truth)
    x, y = tiny_batch(192, seed=0)  # 2 ranks x 16 x 3 steps = 96 samples per log >= 4 K
    args = training_args(Path(sys.argv[1]), max_steps=6, logging_steps=3, per_device_train_batch_size=16)
    trainer = SALTrainer(model=model, args=args, train_dataset=as_dataset(x, y), callbacks=[check])
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "area/router_1/max_share" in entry]
    assert check.checked == 2 and len(logged) == 2, (check.checked, logged)
    assert logged[-1]["area/router_1/max_share"] == check.expected["area/router_1/max_share"], (logged, check.expected)
    print(f"rank {rank}: counters matched what it routed at {check.checked} logs", flush=True)
    # DDP must be gone before its process group: destroying the group first hung now and then (gloo), as in
    # tests/ddp_selection_worker.py.
    del trainer
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
