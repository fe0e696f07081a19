"""SALTrainer end to end: learning, selectivity under AdamW, area health, NaN handling."""

import copy

import pytest
import torch
from conftest import (
    CONFIGS,
    as_dataset,
    count_training_routes,
    defaults_config,
    record_training_areas,
    tiny_batch,
    tiny_config,
    training_args,
)
from torch.nn import functional as F
from transformers import Trainer, TrainerCallback, TrainerState

from sal_hf import SALForImageClassification, SALTrainer
from sal_hf.trainer import SALAreaHealthCallback


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


def selective_config(make_config, **overrides):
    """One hidden layer and output areas, with more areas than the tiny batches below can reach (8 pinned; the
    defaults' 16)."""
    pinned = {"num_areas": 8} if make_config is tiny_config else {}
    return make_config(hidden_sizes=[32], output_areas=True, **pinned, **overrides)


# The masked implementation hands unselected areas a zero gradient; SALTrainer's pre-step hook must drop it, also
# on an optimizer the user built.
@pytest.mark.parametrize("make_config", CONFIGS)
@pytest.mark.parametrize("implementation, own_optimizer", [("split", False), ("masked", False), ("masked", True)])
def test_only_selected_areas_change_under_adamw_with_weight_decay(implementation, own_optimizer, make_config, tmp_path):
    torch.manual_seed(0)
    model = SALForImageClassification(selective_config(make_config, area_implementation=implementation))
    x, y = tiny_batch(6)  # 6 samples cannot reach all 8 (16) areas
    selected = [set(a.tolist()) for a in model.eval()(pixel_values=x, return_areas=True).areas]
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
    # Beside the areas, the defaults' shared dense path sees every sample: it must have stepped.
    shared = [name for name in before if name.startswith("sal.layers.0.shared.")]
    assert len(shared) == (2 if model.config.effective_dual_path else 0)
    assert not any(torch.equal(model.state_dict()[name], before[name]) for name in shared)


@pytest.mark.parametrize("make_config", CONFIGS)
@pytest.mark.parametrize("implementation", ["split", "masked"])
def test_gradient_accumulation_updates_the_areas_of_every_micro_batch(implementation, make_config, tmp_path):
    torch.manual_seed(0)
    model = SALForImageClassification(selective_config(make_config, area_implementation=implementation))
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


@pytest.mark.parametrize("make_config", CONFIGS)
def test_area_health_logs_the_shares_of_the_samples_routed_since_its_last_report(make_config, tmp_path):
    torch.manual_seed(0)
    model = SALForImageClassification(make_config())
    counts = count_training_routes(model)
    x, y = separable_data(64)
    trainer = SALTrainer(model=model, args=training_args(tmp_path, logging_steps=2), train_dataset=as_dataset(x, y))
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logs) == 2 and [len(c) for c in counts] == [4, 4]  # 4 steps of 16 samples, a log every 2
    K = model.config.num_areas
    windows = [torch.zeros(K, dtype=torch.long) for _ in counts]
    reports = dead = 0
    for index, log in enumerate(logs):
        for router, window in enumerate(windows):
            window += sum(counts[router][2 * index : 2 * index + 2])
            key = f"area/router_{router}/"
            if window.sum() < 4 * K:  # under 4 samples per area, no report: the window grows (K = 16: 32 samples)
                assert key + "min_share" not in log and key + "dead" not in log, (index, router)
                continue
            share = window.double() / window.sum()
            assert log[key + "samples"] == int(window.sum())
            assert log[key + "min_share"] == pytest.approx(float(share.min()), abs=1e-4)
            assert log[key + "max_share"] == pytest.approx(float(share.max()), abs=1e-4)
            assert log[key + "dead"] == int((window == 0).sum())
            assert log[key + "min_share"] < 1 / K < log[key + "max_share"]
            reports += 1
            dead += log[key + "dead"]
            window.zero_()
    assert reports == (4 if K == 4 else 2)
    assert (dead > 0) == (K == 16), "K = 16 areas and 64 samples: some area gets none"


class TwoEqualRanks:
    """Stands in for the Accelerator of 2 processes that routed the same samples: `reduce` sums, i.e. doubles."""

    num_processes = 2

    def unwrap_model(self, model):
        return model

    def reduce(self, tensor, reduction="sum"):
        return 2 * tensor


def test_under_ddp_a_health_window_of_several_logs_counts_each_rank_once():
    """Logs of fewer than 4 K samples leave the window open; each log sums the loads over the ranks, which must not
    sum again what an earlier log summed."""
    torch.manual_seed(0)
    model = SALForImageClassification(defaults_config()).train()  # K = 16: a report needs 64 samples
    callback = SALAreaHealthCallback(TwoEqualRanks(), None, [])
    reports = []
    for step in range(2):
        model(pixel_values=tiny_batch(16, seed=step)[0])  # 16 samples a rank, 32 in all
        logs = {"loss": 1.0}
        callback.on_log(None, TrainerState(), None, logs=logs, model=model)
        reports.append(logs)
    assert "area/router_0/samples" not in reports[0]
    assert reports[1]["area/router_0/samples"] == 2 * 2 * 16  # 2 logs x 2 ranks x 16 samples


def test_routing_statistics_move_once_per_optimizer_step(tmp_path):
    torch.manual_seed(0)
    model = SALForImageClassification(tiny_config())
    x, y = tiny_batch(64)
    args = training_args(tmp_path, per_device_train_batch_size=8, gradient_accumulation_steps=2, max_steps=3)
    SALTrainer(model=model, args=args, train_dataset=as_dataset(x, y)).train()
    assert all(int(router.num_updates) == 3 for router in model.routers)


class StateAtStepBegin(TrainerCallback):
    """The model's state when each optimizer step begins: after the previous step and its routing update."""

    def __init__(self) -> None:
        self.states: list[dict[str, torch.Tensor]] = []

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        self.states.append(copy.deepcopy(model.state_dict()))


@pytest.mark.parametrize("make_config", CONFIGS)
def test_nan_loss_stops_training_before_the_update(make_config, tmp_path):
    torch.manual_seed(0)
    model = SALForImageClassification(make_config())
    x, y = tiny_batch(48)
    x[20] = float("nan")  # in order, batches of 16: the second step's batch
    before = copy.deepcopy(model.state_dict())
    steps = StateAtStepBegin()
    args = training_args(tmp_path, per_device_train_batch_size=16, train_sampling_strategy="sequential")
    trainer = SALTrainer(model=model, args=args, train_dataset=as_dataset(x, y), callbacks=[steps])
    with pytest.raises(FloatingPointError, match="Training loss is nan at step 2 "):
        trainer.train()
    assert trainer.state.global_step == 1 and len(steps.states) == 2
    first, after_good_step = steps.states
    assert all(torch.equal(v, before[k]) for k, v in first.items())
    assert not torch.equal(after_good_step["classifier.areas.weight_0"], before["classifier.areas.weight_0"])
    assert int(after_good_step["sal.layers.0.router.num_updates"]) == 1
    # The good step was applied, the NaN batch changed nothing: weights and routing state of step 1, bit for bit.
    for name, value in model.state_dict().items():
        assert torch.equal(value, after_good_step[name]), name


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


@pytest.mark.parametrize("make_config", CONFIGS)
def test_evaluate_reports_the_loss_and_accuracy_of_the_models_predictions(make_config, tmp_path):
    import numpy as np

    torch.manual_seed(0)
    model = SALForImageClassification(make_config())
    x, y = separable_data(64)

    def accuracy(prediction):
        return {"accuracy": float((np.argmax(prediction.predictions, -1) == prediction.label_ids).mean())}

    trainer = SALTrainer(
        model=model, args=training_args(tmp_path), eval_dataset=as_dataset(x, y), compute_metrics=accuracy
    )
    metrics = trainer.evaluate()
    with torch.no_grad():
        logits = model.eval()(pixel_values=x).logits
    right = int((logits.argmax(-1) == y).sum())
    assert 0 < right < 64, "all or no predictions right: the comparison below could not tell the order apart"
    assert metrics["eval_accuracy"] == right / 64
    assert metrics["eval_loss"] == pytest.approx(float(F.cross_entropy(logits, y)), rel=1e-5)


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


def test_a_step_the_optimizer_skipped_moves_no_router(tmp_path, monkeypatch):
    """fp16 loss scaling skips the steps whose gradients overflowed; the routers applied the skipped step's
    statistics all the same (running input mean, balancing bias, update count). With the defaults."""
    from accelerate import Accelerator

    monkeypatch.setattr(Accelerator, "optimizer_step_was_skipped", property(lambda self: True))
    torch.manual_seed(0)
    model = SALForImageClassification(defaults_config())
    before = {name: buffer.clone() for name, buffer in model.named_buffers() if ".router." in name}
    x, y = tiny_batch(32)
    args = training_args(tmp_path, per_device_train_batch_size=8, max_steps=3)
    SALTrainer(model=model, args=args, train_dataset=as_dataset(x, y)).train()
    assert len(before) >= 4
    for name, buffer in model.named_buffers():
        if name in before:
            assert torch.equal(buffer, before[name]), name
    assert all(float(getattr(router, name).abs().sum()) == 0 for router in model.routers for name in router.pending)


def test_neftune_on_a_model_without_token_embeddings_is_refused_up_front(tmp_path):
    """Found in review: transformers' NEFTune hook failed inside train() with "'NoneType' object has no attribute
    'neftune_noise_alpha'"."""
    model = SALForImageClassification(tiny_config())
    with pytest.raises(ValueError, match="neftune_noise_alpha=5.0.*has none"):
        SALTrainer(model=model, args=training_args(tmp_path, neftune_noise_alpha=5.0))


def test_torch_compile_with_the_mlps_split_kernel_is_warned_about(tmp_path, caplog):
    split = SALForImageClassification(tiny_config(area_implementation="split"))
    with caplog.at_level("WARNING"):
        SALTrainer(model=split, args=training_args(tmp_path, torch_compile=True, torch_compile_backend="eager"))
    assert "recompiles each step" in caplog.text
    caplog.clear()
    masked = SALForImageClassification(tiny_config(area_implementation="masked"))
    with caplog.at_level("WARNING"):
        SALTrainer(model=masked, args=training_args(tmp_path, torch_compile=True, torch_compile_backend="eager"))
    assert "recompiles each step" not in caplog.text


def test_compute_loss_outside_train_is_not_weighed_by_an_accumulation_window(tmp_path):
    """Found in review: the routers' window weighting read Trainer's step count, which exists only inside `train()`,
    so a direct `compute_loss` (a loop of one's own, the benchmarks) raised; after a `train()` with accumulation it
    would have kept the last window's weights."""
    torch.manual_seed(0)
    model = SALForImageClassification(tiny_config(router_lr_scale=0.01))
    x, y = tiny_batch(32)
    batch = {"pixel_values": x[:8], "labels": y[:8]}
    trainer = SALTrainer(model=model, args=training_args(tmp_path, max_steps=1, gradient_accumulation_steps=2))
    assert trainer.compute_loss(model.train(), batch, return_outputs=True)[1].routing_losses  # no AttributeError
    trainer.train_dataset = as_dataset(x[:24], y[:24])  # a window of 16 and 8 rows: weights 4/3 and 2/3
    trainer.train()
    after = trainer.compute_loss(model.train(), batch, return_outputs=True)[1].routing_losses
    own = model(**batch, local=True).routing_losses  # the model's own objectives, means over the 8 rows
    assert len(after) == len(own) > 0
    for weighed, plain in zip(after, own):
        torch.testing.assert_close(weighed, plain)
