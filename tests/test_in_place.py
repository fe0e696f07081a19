"""`SALTrainer(in_place_area_update=True)`: plain SGD applied to every area inside the backward pass, with no
gradient tensor, trains to the weights that `optim="sgd"` gives, and refuses what needs every gradient first."""

import copy

import pytest
import torch
from conftest import as_dataset, tiny_batch, tiny_config, training_args
from transformers import TrainerCallback

from sal_hf import SALForImageClassification, SALTrainer
from sal_hf.areas import SALAreaLinear


SGD = {"optim": "sgd", "max_grad_norm": 0.0, "per_device_train_batch_size": 8, "num_train_epochs": 2}

CASES = [
    ({}, {}),
    # norm and shared path take the input gradient of the areas; area lr scale and weight decay change the groups
    (
        {"norm": "layernorm", "dual_path": True, "area_lr_scale": 0.25, "area_implementation": "masked"},
        {"weight_decay": 0.1, "lr_scheduler_type": "linear"},
    ),
    ({"learning_rule": "bp"}, {}),
    ({"learning_rule": "fa", "num_areas": 1}, {"weight_decay": 0.05}),
]


def train(tmp_path, config, in_place: bool, **overrides):
    torch.manual_seed(0)
    model = SALForImageClassification(config)
    initial = copy.deepcopy(model.state_dict())
    args = training_args(tmp_path, **{**SGD, **overrides})
    trainer = SALTrainer(
        model=model, args=args, train_dataset=as_dataset(*tiny_batch(24)), in_place_area_update=in_place
    )
    trainer.train()
    return model, initial


@pytest.mark.parametrize("config, overrides", CASES)
def test_in_place_update_trains_to_the_weights_of_sgd(config, overrides, tmp_path):
    reference, _ = train(tmp_path, tiny_config(**config), False, **overrides)
    model, initial = train(tmp_path, tiny_config(**config), True, **overrides)
    moved = 0
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, reference.state_dict()[name], rtol=1e-4, atol=1e-6, msg=name)
        moved += ".areas." in name and not torch.equal(value, initial[name])
    assert moved, "no area moved: the comparison above proves nothing"


def test_in_place_update_under_bf16_autocast_follows_sgd(tmp_path):
    """bf16 autocast: the in-place update applies the bf16 output gradient to fp32 inputs and weights, autograd's
    path rounds the weight gradient to bf16 first, so they agree to bf16 precision, not bit for bit."""
    reference, initial = train(tmp_path, tiny_config(norm="layernorm", dual_path=True), False, bf16=True)
    model, _ = train(tmp_path, tiny_config(norm="layernorm", dual_path=True), True, bf16=True)
    for name in ("sal.layers.0.areas.weight_0", "sal.layers.1.areas.weight_1", "classifier.areas.weight_0"):
        moved = (reference.state_dict()[name] - initial[name]).abs().max()
        assert moved > 0, name
        assert (model.state_dict()[name] - reference.state_dict()[name]).abs().max() < 0.02 * moved, name


class GradientProbe(TrainerCallback):
    """Before each optimizer step: which parameters hold a gradient."""

    def __init__(self, model):
        self.model, self.seen = model, []

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.seen.append({name for name, p in self.model.named_parameters() if p.grad is not None})


def test_areas_reach_the_optimizer_without_grad_and_the_switch_is_off_outside_the_step(tmp_path):
    torch.manual_seed(0)
    model = SALForImageClassification(tiny_config(num_areas=8, dual_path=True))
    before = copy.deepcopy(model.state_dict())
    x, y = tiny_batch(6)  # one step of 6 samples cannot reach all 8 areas
    with torch.no_grad():
        selected = set(
            model.eval()(pixel_values=x, return_areas=True).areas[0].tolist()
        )  # what the one training step will route
    assert len(selected) < 8
    probe = GradientProbe(model)
    args = training_args(tmp_path, **{**SGD, "num_train_epochs": 1})
    trainer = SALTrainer(
        model=model, args=args, train_dataset=as_dataset(x, y), callbacks=[probe], in_place_area_update=True
    )
    trainer.train()
    (with_grad,) = probe.seen
    assert not any(".areas." in name for name in with_grad)  # the areas were updated in the backward pass
    assert "sal.layers.0.shared.weight" in with_grad and "sal.layers.0.router.projection" in with_grad
    layer = model.sal.layers[0]
    for k, weight in enumerate(layer.areas.weights):
        assert torch.equal(weight, before[f"sal.layers.0.areas.weight_{k}"]) != (k in selected), k
    assert all(m.area_linear is None for m in model.modules() if isinstance(m, SALAreaLinear))
    model.train()
    trainer.compute_loss(model, {"pixel_values": x, "labels": y}).backward()  # outside Trainer's step: as usual
    assert any(w.grad is not None for w in layer.areas.weights)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"optim": "adamw_torch"}, "optimizer AdamW"),
        ({"max_grad_norm": 1.0}, "max_grad_norm=1.0"),
        ({"gradient_accumulation_steps": 2}, "gradient_accumulation_steps=2"),
        ({"optim_args": "momentum=0.9"}, "momentum=0.9"),
        ({"torch_compile": True, "torch_compile_backend": "eager"}, "torch_compile=True"),
    ],
)
def test_in_place_refuses_what_needs_every_gradient_first(overrides, message, tmp_path):
    model = SALForImageClassification(tiny_config())
    trainer = SALTrainer(model=model, args=training_args(tmp_path, **{**SGD, **overrides}), in_place_area_update=True)
    with pytest.raises(ValueError, match=message):
        trainer.create_optimizer()


def test_resuming_from_a_checkpoint_continues_the_in_place_run(tmp_path):
    """Resuming reloads the optimizer and scheduler states (replacing the optimizer's param-group dicts, as
    Accelerate's prepare does too): the in-place run ends at the weights of the uninterrupted one."""
    x, y = tiny_batch(32)
    args = {**SGD, "max_steps": 4, "lr_scheduler_type": "linear", "save_strategy": "steps", "save_steps": 2}
    states = []
    for resume in (None, str(tmp_path / "out" / "checkpoint-2")):
        torch.manual_seed(0)
        model = SALForImageClassification(tiny_config())
        trainer = SALTrainer(
            model=model, args=training_args(tmp_path, **args), train_dataset=as_dataset(x, y), in_place_area_update=True
        )
        trainer.train(resume_from_checkpoint=resume)
        states.append(model.state_dict())
    for name, value in states[0].items():
        torch.testing.assert_close(states[1][name], value, msg=name)
