"""The router, pure torch."""

import pytest
import torch

from sal_hf.routing import AreaRouter, make_prototypes


def test_prototypes_are_seeded_unit_vectors():
    a, b = make_prototypes(8, 4, seed=3), make_prototypes(8, 4, seed=3)
    assert torch.equal(a, b)
    assert not torch.equal(a, make_prototypes(8, 4, seed=4))
    torch.testing.assert_close(a.norm(dim=-1), torch.ones(8))


def test_route_is_argmax_of_cosine_plus_bias():
    router = AreaRouter(6, 5, 3, seed=0).train(False)
    router.area_bias.copy_(torch.tensor([0.0, 0.3, -0.2, 0.1, 0.0]))
    x = torch.randn(20, 6)
    area, routed = router(x)
    expected = (
        torch.nn.functional.normalize(x @ router.projection.T, dim=-1) @ router.prototypes.T + router.area_bias
    ).argmax(-1)
    assert torch.equal(area, expected)
    assert area.dtype == torch.long and routed.dtype == torch.float32


def test_routing_runs_in_fp32_under_bf16_autocast():
    router = AreaRouter(6, 5, 3, seed=0)
    x = torch.randn(20, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        area, routed = router(x.bfloat16())
    assert routed.dtype == torch.float32
    assert torch.equal(area, router.eval()(x)[0])


def test_local_loss_reaches_the_projection_only():
    router = AreaRouter(6, 4, 3, seed=0)
    x = torch.randn(10, 6, requires_grad=True)
    area, routed = router(x)
    router.local_loss(routed, area).backward()
    assert router.projection.grad is not None and router.projection.grad.abs().sum() > 0
    assert x.grad is None  # the router detaches its input


def test_local_loss_pulls_towards_the_selected_prototype():
    torch.manual_seed(0)
    router = AreaRouter(6, 4, 3, seed=0, balance_rate=0.0)
    x = torch.randn(64, 6)
    optimizer = torch.optim.SGD(router.parameters(), lr=0.5)
    losses = []
    for _ in range(20):
        area, routed = router(x)
        loss = router.local_loss(routed, area)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_balancing_revives_a_dead_area_without_gradients():
    router = AreaRouter(4, 3, 2, learned=False, seed=0, balance_rate=0.05)
    router.area_bias.copy_(torch.tensor([0.0, 0.0, -1.0]))  # area 2 starts dead
    x = torch.randn(90, 4)
    for _ in range(100):
        router(x)
        router.update_statistics()
    area, _ = router(x)
    assert (area == 2).sum() > 0
    assert router.area_bias[2] > -1.0


def test_statistics_apply_once_per_step_and_centre_the_input():
    router = AreaRouter(4, 3, 2, seed=0)
    x = torch.randn(32, 4) + 5.0
    first, _ = router(x[:16])
    second, _ = router(x[16:])  # two micro-batches of one step
    assert router.num_updates == 0 and torch.equal(router.input_mean, torch.zeros(4))
    counts = torch.bincount(torch.cat([first, second]), minlength=3).double()
    assert torch.equal(router.pending_load, counts) and torch.equal(router.logged_load, counts)
    router.update_statistics()
    torch.testing.assert_close(router.input_mean, x.mean(0))  # the first step takes the batch mean
    assert router.num_updates == 1 and router.pending_load.sum() == 0


def test_a_step_that_routed_nothing_moves_no_statistic():
    router = AreaRouter(4, 3, 2, seed=0)
    router(torch.randn(16, 4) + 5.0)
    router.update_statistics()
    state = {name: value.clone() for name, value in router.state_dict().items()}
    router.update_statistics()  # nothing pending: no mean, bias or count may move (and no division by zero)
    for name, value in router.state_dict().items():
        assert torch.equal(value, state[name]), name
    assert router.num_updates == 1


def test_a_masked_row_that_is_not_finite_leaves_the_input_mean_finite():
    """Padding rows are left out of the sums; one that is NaN (a fully masked attention row of some kernels, an fp16
    overflow) was multiplied by 0, and NaN * 0 poisoned the running mean."""
    router = AreaRouter(4, 3, 2, seed=0)
    x = torch.randn(6, 4)
    x[2] = float("nan")
    mask = torch.tensor([1, 1, 0, 1, 1, 1])
    router(x, mask)
    router.update_statistics()
    clean = AreaRouter(4, 3, 2, seed=0)
    clean(x[mask.bool()])
    clean.update_statistics()
    assert torch.isfinite(router.input_mean).all()
    assert torch.equal(router.input_mean, clean.input_mean) and torch.equal(router.area_bias, clean.area_bias)


def test_eval_mode_gathers_no_statistics():
    router = AreaRouter(4, 3, 2, seed=0).eval()
    router(torch.randn(8, 4))
    assert router.pending_load.sum() == 0 and router.logged_load.sum() == 0


@pytest.mark.parametrize("router", ["learned", "claim"])
def test_float32_statistics_as_on_mps_route_like_float64(router, tmp_path, monkeypatch):
    """Apple's MPS has no float64, so there the per-step sums are float32 (`statistics_dtype`). The same code path,
    forced on the CPU, trains the shipped defaults (and the claim router) to the same routing state as float64."""
    from conftest import DEFAULTS, as_dataset, tiny_batch, training_args

    from sal_hf import SALConfig, SALForImageClassification, SALTrainer, routing

    assert routing.statistics_dtype(torch.device("mps")) == torch.float32
    assert routing.statistics_dtype(torch.device("cpu")) == torch.float64
    fields = {"router": "claim", "routing_scope": "shared"} if router == "claim" else {}
    x, y = tiny_batch(64)
    states = {}
    for dtype in (torch.float64, torch.float32):
        monkeypatch.setattr(routing, "statistics_dtype", lambda device, dtype=dtype: dtype)
        torch.manual_seed(0)
        model = SALForImageClassification(SALConfig(**{**DEFAULTS, **fields}))
        args = training_args(tmp_path / str(dtype), num_train_epochs=2)
        SALTrainer(model=model, args=args, train_dataset=as_dataset(x, y)).train()
        assert {getattr(r, name).dtype for r in model.routers for name in r.statistics} == {dtype}
        states[dtype] = {k: v for k, v in model.state_dict().items() if ".router." in k}
        assert int(model.routers[0].num_updates if router == "learned" else model.routers[0].claimed) > 0
    for key, value in states[torch.float64].items():
        torch.testing.assert_close(states[torch.float32][key], value, rtol=1e-5, atol=1e-6, msg=key)
