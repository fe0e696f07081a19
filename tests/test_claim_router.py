"""`router="claim"` (`ClaimRouter`): areas claimed when a batch's loss jumps, for a stream of tasks. Training routes among
the latest claim's areas, so older claims' areas are never stepped again; inference routes over every claim."""

import math
import os
import subprocess
import sys

import pytest
import torch
from conftest import DEFAULTS, as_dataset, reload_identically, training_args
from safetensors.torch import load_file

from sal_hf import SALConfig, SALForImageClassification, SALTrainer, SALTransformerConfig
from sal_hf.routing import ClaimRouter


# The shipped defaults, with the claims and the areas alone (no shared path, full lr), as docs/CONTINUAL.md runs them.
CLAIM = {**DEFAULTS, "router": "claim", "routing_scope": "shared", "dual_path": False, "area_lr_scale": 1.0}


def claim_config(**overrides):
    return SALConfig(**{**CLAIM, **overrides})


@pytest.mark.parametrize(
    "fields, match",
    [
        ({"routing_scope": "layer"}, "routing_scope='shared'"),
        ({"claim_areas": 17}, "num_areas >= claim_areas"),
        ({"claim_areas": 0}, "claim_areas"),
        ({"claim_window": 2.5}, "claim_window"),
        ({"claim_prototypes": True}, "claim_prototypes"),
        ({"claim_surprise": 0.0}, "claim_surprise"),
        ({"claim_surprise": math.nan}, "claim_surprise"),
        ({"claim_surprise": math.inf}, "claim_surprise"),
    ],
)
def test_bad_claim_settings_name_the_field(fields, match):
    with pytest.raises(ValueError, match=match):
        claim_config(**fields)


def test_claim_fields_belong_to_the_claim_router():
    with pytest.raises(ValueError, match="claim_window=10 only applies to router='claim'"):
        SALConfig(**DEFAULTS, claim_window=10)
    with pytest.raises(ValueError, match="router"):
        SALTransformerConfig(router="claim")
    with pytest.raises(ValueError, match="claim_areas"):
        SALTransformerConfig(claim_areas=3)


def test_claims_on_a_surprise_route_training_to_the_latest_claim_and_inference_to_all():
    router = ClaimRouter(2, 5, areas_per_claim=2, surprise=3.0, window=2, prototypes_per_area=1)
    near_a, near_b = torch.tensor([[0.0, 0.0], [0.1, 0.0]]), torch.tensor([[10.0, 10.0], [10.1, 10.0]])

    def probe(x, loss):  # what `observe_claims` does: a forward under `probing`, then the loss
        router.probing = True
        with torch.no_grad():
            router(x)
        router.probing = False
        return router.observe(loss)

    assert probe(torch.cat([near_a, torch.tensor([[0.0, 4.0]])]), 99.0)  # the first batch claims areas 0, 1
    assert (int(router.claimed), router.active_areas()) == (2, (0, 2))
    for loss in (1.0, 1.0, 3.9):  # not more than 3 nats above the mean of the last two: no claim
        assert not probe(near_b, loss)
    assert probe(near_b, 5.5)  # 5.5 > 2.45 + 3 (the last two: 1.0 and 3.9): areas 2, 3 start from this batch
    assert router.active_areas() == (2, 4)
    torch.testing.assert_close(router.prototypes[2:4], near_b)
    assert not probe(near_a, 100.0)  # a window of batches must pass after a claim before the next
    with torch.no_grad():  # inference: the nearest prototype over every claim
        assert router(near_a)[0].tolist() == [0, 0] and router(near_b)[0].tolist() == [2, 3]
    before = router.prototypes.clone()
    router.probing = True  # the probe routes as training does, and learns nothing
    with torch.no_grad():
        assert set(router(near_a)[0].tolist()) <= {2, 3}
    router.probing = False
    assert torch.equal(router.prototypes, before) and not router.pending_count.any()
    with torch.enable_grad():  # training: the latest claim only, even for rows nearer an older claim
        area, _ = router(near_a)
    assert set(area.tolist()) <= {2, 3}
    router.update_statistics()  # each prototype moves to the running mean of the rows it took
    for k in (2, 3):
        taken = near_a[area == k]
        expected = (near_b[k - 2] + taken.sum(0)) / (1 + len(taken))
        torch.testing.assert_close(router.prototypes[k], expected)
    torch.testing.assert_close(router.prototypes[:2], before[:2], rtol=0, atol=0)  # older claims: untouched


def test_a_batch_smaller_than_a_claim_deals_its_rows_over_the_claims_areas():
    """2 areas x 3 prototypes from 3 rows: farthest-point order 0, 2, 1 (row 2 is farthest from row 0); area 0 takes
    the 1st and 3rd of that order (rows 0 and 1), area 1 the 2nd (row 2), so both areas take rows (with the rows
    repeated in order, or dealt round-robin with wraparound, every area held every row and the first won each tie:
    routing [0, 0, 0])."""
    router = ClaimRouter(1, 4, areas_per_claim=2, prototypes_per_area=3)
    router.probing = True
    x = torch.tensor([[0.0], [4.0], [10.0]])
    with torch.no_grad():
        router(x)
    assert router.observe(1.0)
    assert router.prototypes[:6].flatten().tolist() == [0.0, 4.0, 0.0, 10.0, 10.0, 10.0]
    router.eval()
    assert router(x)[0].tolist() == [0, 0, 1]


def two_tasks(n: int = 128):
    """Task A: labels 0/1 by the sign of input 0, inputs around +1 elsewhere; task B: labels 2/3 by the sign of
    input 1, inputs around -1 elsewhere (DEFAULTS: 16 inputs)."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, n, 16, generator=generator)
    x[0, :, 2:] += 1.0
    x[1, :, 2:] -= 1.0
    return (x[0], (x[0, :, 0] > 0).long()), (x[1], (x[1, :, 1] > 0).long() + 2)


def test_trainer_claims_a_new_task_and_leaves_the_old_claims_areas_as_they_were(tmp_path):
    """SALTrainer on task A, then on task B with new labels: B's first batch claims new areas, and task A's areas
    (hidden and per-area output layers) and its predictions stay exactly as they were; save/load keeps the claims."""
    torch.manual_seed(0)
    config = claim_config(output_areas=True, claim_areas=2, claim_window=3, claim_prototypes=2)
    model = SALForImageClassification(config)
    (xa, ya), (xb, yb) = two_tasks()
    args = dict(per_device_train_batch_size=16, learning_rate=3e-2, num_train_epochs=4)
    SALTrainer(model=model, args=training_args(tmp_path / "a", **args), train_dataset=as_dataset(xa, ya)).train()
    (router,) = model.routers
    assert int(router.claimed) == 2  # task A: its first batch claimed, nothing since
    old = {name: p.detach().clone() for name, p in model.named_parameters() if ".areas." in name}
    with torch.no_grad():
        logits_a = model.eval()(pixel_values=xa).logits
    assert (logits_a[:, :2].argmax(-1) == ya).float().mean() > 0.75  # task A was learned
    SALTrainer(model=model, args=training_args(tmp_path / "b", **args), train_dataset=as_dataset(xb, yb)).train()
    assert int(router.claimed) == 4 and router.active_areas() == (2, 4)  # task B's first batch claimed areas 2, 3
    model.eval()
    with torch.no_grad():
        assert set(model(pixel_values=xa, return_areas=True).areas[0].tolist()) <= {0, 1}
        assert set(model(pixel_values=xb, return_areas=True).areas[0].tolist()) <= {2, 3}
        torch.testing.assert_close(model(pixel_values=xa).logits, logits_a, rtol=0, atol=0)  # nothing forgotten
    for name, before in old.items():  # areas 0, 1 (task A's) of every layer never stepped during task B; 2, 3 did
        after = dict(model.named_parameters())[name]
        if name.endswith(("_0", "_1")):
            torch.testing.assert_close(after, before, rtol=0, atol=0, msg=name)
        elif name.endswith(("_2", "_3")):
            assert not torch.equal(after, before), name
    loaded = reload_identically(model, tmp_path / "saved", torch.cat([xa, xb]))
    for name, buffer in model.named_buffers():
        if ".router." in name:
            torch.testing.assert_close(dict(loaded.named_buffers())[name], buffer, rtol=0, atol=0, msg=name)


def test_the_probe_records_no_area_selection_and_no_statistics():
    """The masked kernel (CUDA's default) records the selected areas for the optimizer hook; the probe, a second
    one included (areas claimed by then), records none and gathers no routing statistics."""
    model = SALForImageClassification(claim_config(area_implementation="masked")).train()
    (x, y), (xb, yb) = two_tasks(16)
    for batch in ({"pixel_values": x, "labels": y}, {"pixel_values": xb, "labels": yb}):
        model.observe_claims(batch)
    (router,) = model.routers
    assert int(router.claimed) == 3 and int(router.num_losses) == 1  # the first claimed, the second was scored
    assert all(layer.areas.selected_areas is None for layer in model.sal.layers)
    assert not router.pending_count.any() and not router.logged_load.any()
    model(pixel_values=x, labels=y)  # a training forward, by contrast, records both
    assert router.pending_count.any() and model.sal.layers[0].areas.selected_areas is not None


def test_the_surprise_is_over_the_last_window_of_losses_and_ignores_non_finite_ones():
    router = ClaimRouter(2, 8, areas_per_claim=2, surprise=3.0, window=2, prototypes_per_area=1)
    router.probing = True
    with torch.no_grad():
        router(torch.randn(4, 2))
    router.probing = False
    assert router.observe(0.0)  # the first batch claims
    for loss in (1.0, 1.0, 3.9, 3.9, math.nan, math.inf):  # the last two: ignored, not recorded
        assert not router.observe(loss)
    assert int(router.num_losses) == 4
    assert not router.observe(6.5)  # 6.5 < 3.9 + 3: the window is the last two losses, not all four
    assert router.observe(10.5)  # 10.5 > mean(3.9, 6.5) + 3


def test_a_compiled_model_can_probe(tmp_path):
    model = SALForImageClassification(claim_config()).train()
    (x, y), _ = two_tasks(16)
    model.observe_claims({"pixel_values": x, "labels": y}, forward=torch.compile(model, backend="eager"))
    assert int(model.routers[0].claimed) == 3


def test_prototypes_stay_fp32_in_a_bf16_model():
    model = SALForImageClassification(claim_config()).train()
    (x, y), _ = two_tasks(16)
    model.observe_claims({"pixel_values": x, "labels": y})
    (router,) = model.routers
    saved = router.prototypes.clone()
    with torch.no_grad():
        areas = model.eval()(pixel_values=x, return_areas=True).areas[0]
    model.to(torch.bfloat16)
    assert router.prototypes.dtype == router.counts.dtype == torch.float32
    torch.testing.assert_close(router.prototypes, saved, rtol=0, atol=0)
    with torch.no_grad():  # bf16 inputs route on fp32 distances, as close as their rounding allows
        assert (model(pixel_values=x.bfloat16(), return_areas=True).areas[0] == areas).float().mean() > 0.9


def test_info_and_the_model_card_name_the_claims(tmp_path, capsys):
    from sal_hf import cli
    from sal_hf.model_card import _describe

    model = SALForImageClassification(claim_config()).train()
    (x, y), _ = two_tasks(16)
    model.observe_claims({"pixel_values": x, "labels": y})
    model.save_pretrained(tmp_path)
    assert cli.main(["info", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "claim_prototypes       8" in out and "router_0: K=16, in=16, claimed areas 3 (latest claim: 0..2)" in out
    assert "claim_window" in _describe(model, "m")[-1]  # the routing settings the model card lists


def test_two_processes_claim_and_train_like_one(tmp_path):
    """2 gloo processes x batch 8 claim the same areas at the same batches and end with the weights and routing state
    of 1 process x batch 16: the probe loss is averaged over the processes, a claim starts from the rows of all, and
    the k-means sums are summed over them (tests/ddp_claim_worker.py, the shipped claim defaults)."""
    from test_distributed import ROOT, free_port

    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}", "OMP_NUM_THREADS": "1"}
    for processes, batch in ((2, 8), (1, 16)):
        launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes)]
        command = launch + [
            "--master_port",
            str(free_port()),
            "tests/ddp_claim_worker.py",
            str(tmp_path / str(processes)),
        ]
        done = subprocess.run(command + [str(batch)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        # Task A's first batch claimed areas 0-2, task B's first batch 3-5, on every process.
        assert done.stdout.count("claimed 6 areas, active (3, 6)") == processes, done.stdout
    one, two = (load_file(tmp_path / name / "final" / "model.safetensors") for name in ("1", "2"))
    assert one.keys() == two.keys()
    prototypes = one["sal.layers.0.router.prototypes"]  # 8 an area: task B's claim holds rows 24-47, none after
    assert prototypes[24:48].abs().sum(1).min() > 0 and not prototypes[48:].any()
    for key in one:
        if ".router." in key:  # the same claims, prototypes and counts
            torch.testing.assert_close(two[key], one[key], rtol=0, atol=1e-6, msg=key)
        else:  # 72 AdamW steps at lr 3e-2 amplify the summation order's rounding (seen: 1e-5 at most)
            torch.testing.assert_close(two[key], one[key], rtol=0, atol=1e-4, msg=key)
