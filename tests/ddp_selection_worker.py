"""Worker of `test_area_implementation.py::test_under_ddp_an_area_selected_on_any_process_keeps_its_gradient`.

    python -m torch.distributed.run --nproc_per_node 2 tests/ddp_selection_worker.py

Two gloo processes, one masked SAL model under DDP, different data on each: DDP averages the gradients, so an area
that only the other process selected has a real gradient here, and `clear_unselected_area_grads` must keep it. Then
one process holds no area gradient at all (as a shard under FSDP may): both must still meet in the collective.
Exits non-zero (assertion) if it does not.
"""

import gc
from datetime import timedelta

import torch
import torch.distributed as dist
from conftest import tiny_batch, tiny_config
from torch.nn.parallel import DistributedDataParallel

from sal_hf import SALForImageClassification, clear_unselected_area_grads


def check(rank: int) -> None:
    torch.manual_seed(0)
    model = SALForImageClassification(tiny_config(num_areas=8, hidden_sizes=[32], area_implementation="masked"))
    # As Trainer builds it for these models: the routers' projections take no gradient from this loss.
    ddp = DistributedDataParallel(model.train(), find_unused_parameters=True)
    x, y = tiny_batch(3, seed=rank)
    ddp(pixel_values=x, labels=y).loss.backward()
    layer = model.sal.layers[0].areas
    mine = set(layer.selected_areas.nonzero().flatten().tolist())
    everyone = [None, None]
    dist.all_gather_object(everyone, mine)
    union = everyone[0] | everyone[1]
    # The same check on every process (a process that stopped alone would leave the other one waiting).
    assert all(union - areas for areas in everyone) and len(union) < 8, f"data misses the point: {everyone}"
    clear_unselected_area_grads(ddp)
    kept = {k for k, weight in enumerate(layer.weights) if weight.grad is not None}
    assert kept == union, f"rank {rank}: kept gradients of {kept}, areas selected on any rank {union}"
    print(f"rank {rank}: selected {sorted(mine)}, kept the gradients of {sorted(kept)}", flush=True)
    # As under FSDP, where one process's shard may hold no area gradient: rank 1 has none, rank 0 has some. What this
    # tests is that both reach the collective (a process that returned early would leave the other waiting until the
    # 120 s timeout, and the test fail); the kept sets follow from the first phase.
    if rank == 1:
        for param in model.parameters():
            param.grad = None
    clear_unselected_area_grads(ddp)
    kept = {k for k, weight in enumerate(layer.weights) if weight.grad is not None}
    assert kept == (union if rank == 0 else set()), f"rank {rank}: kept {kept} with no gradient on rank 1"


def main() -> None:
    torch.set_num_threads(1)
    # A timeout, so that a collective one process never reaches fails instead of waiting 30 minutes.
    dist.init_process_group("gloo", timeout=timedelta(seconds=120))
    try:
        check(dist.get_rank())
        # DDP must be gone before its process group: destroying it afterwards hung now and then (gloo).
        gc.collect()
        dist.barrier()
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
