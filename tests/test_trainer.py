"""SALTrainer end to end: learning, selectivity under AdamW, area health, NaN handling."""

import copy

import pytest
import torch
from conftest import as_dataset, record_training_areas, tiny_batch, tiny_config, training_args
from transformers import Trainer, TrainerCallback

from sal_hf import SALForImageClassification, SALTrainer


def separable_data(n=256, seed=0):
    """Labels a fixed random linear map of the inputs picks: learnable in a few epochs."""
    x, _ = tiny_batch(n, seed=seed)
    w = torch.randn(16, 5, generator=torch.Generator().manual_seed(1))
    return x, (x @ w).argmax(-1)


@pytest.mark.parametrize("rule, areas", [("sal", 4), ("dfa", 1), ("fa", 1), ("bp", 1), ("sal", 1)])
def test_training_lowers_the_loss_and_changes_every_trained_parameter(rule, areas, tmp_path):
    torch.manual_seed(0)
    model = SALForImageClassification(tiny_config(learning_rule=rule, num_areas=areas))
    before = copy.deepcopy(model.state_dict())
    x, y = separable_data()
    trainer = SALTrainer(
        model=model,
        args=training_args(tmp_path, num_train_epochs=6, learning_rate=3e-3),
        train_dataset=as_dataset(x, y),
    )
    trainer.train()
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5
    unchanged = [name for name, p in model.named_parameters() if torch.equal(p.detach(), before[name])]
    assert not unchanged, f"parameters never updated: {unchanged}"
    assert all(torch.equal(b, before[n]) for n, b in model.named_buffers() if n.startswith("feedback"))


class GradientsAtStep(TrainerCallback):
    """Which parameters had a `.grad` when the optimizer stepped (after its pre-step hooks, before zero_grad)."""

    def __init__(self) -> None:
        self.had_grad: list[dict[str, bool]] = []

    def on_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.had_grad.append({name: p.grad is not None for name, p in model.named_parameters()})


def area_names(prefix: str, k: int) -> list[str]:
    return [f"{prefix}.weight_{k}", f"{prefix}.bias_{k}"]


# The masked implementation hands unselected areas a zero gradient; SALTrainer's pre-step hook must drop it, also
# on an optimizer the user built.
@pytest.mark.parametrize("implementation, own_optimizer", [("split", False), ("masked", False), ("masked", True)])
def test_only_selected_areas_change_under_adamw_with_weight_decay(implementation, own_optimizer, tmp_path):
    torch.manual_seed(0)
    config = tiny_config(num_areas=8, hidden_sizes=[32], output_areas=True, area_implementation=implementation)
    model = SALForImageClassification(config)
    x, y = tiny_batch(6)  # 6 samples cannot reach all 8 areas
    selected = [set(a.tolist()) for a in model.eval()(pixel_values=x).areas]
    before = copy.deepcopy(model.state_dict())
    args = training_args(tmp_path, per_device_train_batch_size=6, max_steps=1, weight_decay=0.5, optim="adamw_torch")
    optimizers = (torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.5), None) if own_optimizer else None
    grads = GradientsAtStep()
    SALTrainer(
        model=model,
        args=args,
        train_dataset=as_dataset(x, y),
        callbacks=[grads],
        **({"optimizers": optimizers} if optimizers else {}),
    ).train()

    layers = [model.sal.layers[0].areas, model.classifier.areas]
    prefixes = ["sal.layers.0.areas", "classifier.areas"]
    for layer, prefix, chosen in zip(layers, prefixes, selected):
        assert 0 < len(chosen) < layer.num_areas
        for k in range(layer.num_areas):
            for name in area_names(prefix, k):
                same = torch.equal(model.state_dict()[name], before[name])
                assert same == (k not in chosen), f"{name}: selected={k in chosen}, unchanged={same}"
                assert grads.had_grad[0][name] == (k in chosen), f"{name}: selected={k in chosen}, .grad at step"


@pytest.mark.parametrize("implementation", ["split", "masked"])
def test_gradient_accumulation_updates_the_areas_of_every_micro_batch(implementation, tmp_path):
    torch.manual_seed(0)
    config = tiny_config(num_areas=8, hidden_sizes=[32], output_areas=True, area_implementation=implementation)
    model = SALForImageClassification(config)
    layers = {"sal.layers.0.areas": model.sal.layers[0].areas, "classifier.areas": model.classifier.areas}
    seen = record_training_areas(layers)
    x, y = tiny_batch(6)
    before = copy.deepcopy(model.state_dict())
    args = training_args(
        tmp_path,
        per_device_train_batch_size=3,
        gradient_accumulation_steps=2,
        max_steps=1,
        weight_decay=0.5,
        optim="adamw_torch",
    )
    SALTrainer(model=model, args=args, train_dataset=as_dataset(x, y)).train()

    # An area only the first micro-batch selected: lost if each forward started a new selection record.
    assert any(first - second for first, second in seen.values()), seen
    for prefix, (first, second) in seen.items():
        union = first | second
        assert len(union) < layers[prefix].num_areas
        for k in range(layers[prefix].num_areas):
            for name in area_names(prefix, k):
                same = torch.equal(model.state_dict()[name], before[name])
                assert same == (k not in union), f"{name}: selected={k in union}, unchanged={same}"


def test_area_health_is_logged_with_the_loss(tmp_path):
    torch.manual_seed(0)
    model = SALForImageClassification(tiny_config())
    x, y = separable_data(64)
    trainer = SALTrainer(model=model, args=training_args(tmp_path, logging_steps=2), train_dataset=as_dataset(x, y))
    trainer.train()
    log = next(entry for entry in trainer.state.log_history if "loss" in entry)
    for router in range(2):
        assert 0.0 <= log[f"area/router_{router}/min_share"] <= 0.25 <= log[f"area/router_{router}/max_share"] <= 1.0
        assert 0 <= log[f"area/router_{router}/dead"] < 4


def test_routing_statistics_move_once_per_optimizer_step(tmp_path):
    torch.manual_seed(0)
    model = SALForImageClassification(tiny_config())
    x, y = tiny_batch(64)
    args = training_args(tmp_path, per_device_train_batch_size=8, gradient_accumulation_steps=2, max_steps=3)
    SALTrainer(model=model, args=args, train_dataset=as_dataset(x, y)).train()
    assert all(int(router.num_updates) == 3 for router in model.routers)


def test_nan_loss_stops_training_before_the_update(tmp_path):
    torch.manual_seed(0)
    model = SALForImageClassification(tiny_config())
    x, y = tiny_batch(32)
    x[20] = float("nan")
    before = copy.deepcopy(model.state_dict())
    args = training_args(tmp_path, per_device_train_batch_size=16, dataloader_drop_last=False)
    trainer = SALTrainer(model=model, args=args, train_dataset=as_dataset(x, y))
    trainer.args.seed = 0
    with pytest.raises(FloatingPointError, match="Training loss is nan at step"):
        trainer.train()
    # The batch before the NaN one was applied at most; the NaN batch changed nothing.
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert trainer.state.global_step <= 1
    if trainer.state.global_step == 0:
        assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_bp_trainer_behaves_like_plain_trainer(tmp_path):
    x, y = separable_data(64)
    models = []
    for cls in (SALTrainer, Trainer):
        torch.manual_seed(0)
        model = SALForImageClassification(tiny_config(learning_rule="bp", num_areas=1))
        cls(model=model, args=training_args(tmp_path, max_steps=4), train_dataset=as_dataset(x, y)).train()
        models.append(model)
    for (name, a), b in zip(models[0].state_dict().items(), models[1].state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)


def test_evaluate_reports_loss_and_metrics(tmp_path):
    import numpy as np

    torch.manual_seed(0)
    model = SALForImageClassification(tiny_config())
    x, y = separable_data(64)

    def accuracy(prediction):
        return {"accuracy": float((np.argmax(prediction.predictions, -1) == prediction.label_ids).mean())}

    trainer = SALTrainer(
        model=model, args=training_args(tmp_path), eval_dataset=as_dataset(x, y), compute_metrics=accuracy
    )
    metrics = trainer.evaluate()
    assert 0.0 <= metrics["eval_accuracy"] <= 1.0 and metrics["eval_loss"] > 0


def test_rejects_non_sal_models(tmp_path):
    with pytest.raises(ValueError, match="SALTrainer trains SAL models"):
        SALTrainer(model=torch.nn.Linear(2, 2), args=training_args(tmp_path))


def test_local_rules_refuse_a_custom_loss(tmp_path):
    model = SALForImageClassification(tiny_config())
    with pytest.raises(ValueError, match="label_smoothing_factor=0.1"):
        SALTrainer(model=model, args=training_args(tmp_path, label_smoothing_factor=0.1))
    SALTrainer(
        model=SALForImageClassification(tiny_config(learning_rule="bp")),
        args=training_args(tmp_path, label_smoothing_factor=0.1),
    )
