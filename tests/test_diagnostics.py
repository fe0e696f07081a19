"""Diagnostics callback: what it logs, that it is right, and that it never changes training."""

import pytest
import torch
from conftest import CONFIGS, as_dataset, count_training_routes, tiny_batch, tiny_config, training_args
from transformers import TrainerCallback

from sal_hf import LocalLearningRule, SALForImageClassification, SALTrainer
from sal_hf.diagnostics import SALDiagnosticsCallback, alignment_angles, angle_degrees, probe_batch


def train(tmp_path, callbacks, rule="sal", make_config=tiny_config, hooks=None, **overrides):
    """6 steps of 16 samples, a log after each; `hooks(model)` is called on the model before training."""
    torch.manual_seed(0)
    model = SALForImageClassification(make_config(learning_rule=rule, **overrides))
    recorded = hooks(model) if hooks is not None else None
    x, y = tiny_batch(96, seed=1)
    args = training_args(tmp_path, per_device_train_batch_size=16, max_steps=6, logging_steps=1)
    trainer = SALTrainer(model=model, args=args, train_dataset=as_dataset(x, y), callbacks=callbacks)
    trainer.train()
    return model, trainer, recorded


def test_diagnostics_do_not_change_training(tmp_path):
    x, y = tiny_batch(96, seed=1)
    plain, _, _ = train(tmp_path / "a", [])
    watched, trainer, _ = train(tmp_path / "b", [SALDiagnosticsCallback(*probe_batch(as_dataset(x, y), size=40))])
    assert any("alignment/layer_0" in log for log in trainer.state.log_history)
    for (name, a), b in zip(plain.state_dict().items(), watched.state_dict().values()):
        assert torch.equal(a, b), name


class ProbeAreasAtLog(TrainerCallback):
    """The probe's areas at every router (eval mode, no grad) when training begins and at every log."""

    def __init__(self, pixel_values: torch.Tensor) -> None:
        self.pixel_values = pixel_values
        self.areas: list[list[torch.Tensor]] = []

    def record(self, model) -> None:
        model.eval()
        with torch.no_grad():
            self.areas.append(
                [a for a in model(pixel_values=self.pixel_values, return_areas=True).areas if a is not None]
            )
        model.train()

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.record(model)

    def on_log(self, args, state, control, model=None, logs=None, **kwargs):
        if "loss" in logs:
            self.record(model)


@pytest.mark.parametrize("make_config", CONFIGS)
def test_logs_the_shares_and_churn_of_the_routing_it_saw_and_the_alignment(make_config, tmp_path):
    x, y = tiny_batch(96, seed=1)
    probe = probe_batch(as_dataset(x, y), size=40)
    seen = ProbeAreasAtLog(probe[0])
    _, trainer, counts = train(
        tmp_path, [SALDiagnosticsCallback(*probe), seen], make_config=make_config, hooks=count_training_routes
    )
    logs = [log for log in trainer.state.log_history if "loss" in log]
    K = trainer.model.config.num_areas
    assert len(logs) == 6 and [len(c) for c in counts] == [6, 6] and len(seen.areas) == 7
    windows = [torch.zeros(K, dtype=torch.long) for _ in counts]
    churned = dead = 0
    for step, log in enumerate(logs):
        for router, window in enumerate(windows):
            # The shares of the samples the router sent to each area since the area health last reported (every
            # log with K = 4; with K = 16 a report needs 4 K = 64 samples, 4 steps of 16).
            window += counts[router][step]
            expected = (window.double() / window.sum()).tolist()
            shares = [log[f"area/router_{router}/share_{k:0{len(str(K - 1))}d}"] for k in range(K)]
            assert shares == pytest.approx(expected, abs=1e-4), (step, router)
            if f"area/router_{router}/samples" in log:
                assert log[f"area/router_{router}/samples"] == int(window.sum()) >= 4 * K
                assert log[f"area/router_{router}/min_share"] == pytest.approx(min(expected), abs=1e-4)
                assert log[f"area/router_{router}/max_share"] == pytest.approx(max(expected), abs=1e-4)
                assert log[f"area/router_{router}/dead"] == sum(share == 0 for share in expected)
                dead += log[f"area/router_{router}/dead"]
                window.zero_()
            else:
                assert window.sum() < 4 * K, (step, router)
            # Churn: the share of probe samples whose area moved since the previous log (or the start).
            moved = (seen.areas[step + 1][router] != seen.areas[step][router]).float().mean()
            assert log[f"area/router_{router}/churn"] == pytest.approx(float(moved), abs=1e-4), (step, router)
            churned += log[f"area/router_{router}/churn"] > 0
        for layer in range(2):
            assert 0.0 < log[f"alignment/layer_{layer}"] < 180.0
    assert dead > 0 and churned > 0, "no dead area or no churn: the checks above could not tell a zero apart"


def test_bp_logs_no_alignment(tmp_path):
    x, y = tiny_batch(96, seed=1)
    _, trainer, _ = train(tmp_path, [SALDiagnosticsCallback(*probe_batch(as_dataset(x, y)))], rule="bp")
    log = next(log for log in trainer.state.log_history if "loss" in log)
    assert "area/router_0/churn" in log and not any(key.startswith("alignment/") for key in log)


def test_alignment_is_zero_when_feedback_is_the_forward_weights():
    """Layer-wise FA with B_l = W_{l+1} is backpropagation: the angle must vanish; random B_l must not."""
    config = tiny_config(learning_rule="fa", num_areas=1)
    torch.manual_seed(0)
    model = SALForImageClassification(config).eval()
    rule = LocalLearningRule("fa", feedback_mode="layerwise", activation=torch.relu)
    x, y = tiny_batch(64)
    random_angles = alignment_angles(model, rule, x, y)
    assert all(angle > 20.0 for angle in random_angles), random_angles
    with torch.no_grad():
        model.feedback.layer_0.copy_(model.sal.layers[1].areas.weight_0)
        model.feedback.layer_1.copy_(model.classifier.areas.weight_0)
    # float32 gradients summed in another order: acos near 1 magnifies ~1e-7 into ~0.03 degrees.
    assert all(angle < 0.1 for angle in alignment_angles(model, rule, x, y))


def test_churn_counts_probe_samples_that_changed_area():
    torch.manual_seed(0)
    model = SALForImageClassification(tiny_config())
    x, y = tiny_batch(50)
    callback = SALDiagnosticsCallback(x, y, alignment=False)
    callback.on_train_begin(None, None, None, model=model)
    assert callback.diagnostics(model, None)["area/router_0/churn"] == 0.0
    before = callback.probe_areas(model.eval())[0]
    with torch.no_grad():
        model.sal.layers[0].router.area_bias[2] += 10.0  # every sample now picks area 2
    logs = callback.diagnostics(model, None)
    assert logs["area/router_0/churn"] == pytest.approx(float((before != 2).float().mean()))
    assert logs["area/router_0/churn"] > 0


def test_angle_degrees():
    assert angle_degrees(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0])) == pytest.approx(90.0)
    assert angle_degrees(torch.tensor([1.0, 1.0]), torch.tensor([-1.0, -1.0])) == pytest.approx(180.0)
    assert angle_degrees(torch.zeros(2), torch.ones(2)) != angle_degrees(torch.zeros(2), torch.ones(2))  # NaN


def test_probe_batch_is_fixed_and_rejects_mismatched_labels():
    x, y = tiny_batch(30)
    first, second = probe_batch(as_dataset(x, y), size=10), probe_batch(as_dataset(x, y), size=10)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1]) and first[0].shape == (10, 16)
    with pytest.raises(ValueError, match="as many labels as inputs"):
        SALDiagnosticsCallback(x, y[:5])


def test_diagnostics_reach_tensorboard(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    torch.manual_seed(0)
    model = SALForImageClassification(tiny_config())
    x, y = tiny_batch(64)
    args = training_args(tmp_path, max_steps=2, report_to=["tensorboard"])
    callback = SALDiagnosticsCallback(x[:20], y[:20])
    SALTrainer(model=model, args=args, train_dataset=as_dataset(x, y), callbacks=[callback]).train()
    (event_file,) = (tmp_path / "out").rglob("events.out.tfevents.*")
    events = EventAccumulator(str(event_file.parent)).Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/alignment/layer_0", "train/area/router_0/churn", "train/area/router_0/share_0"} <= tags
