"""Diagnostics callback: what it logs, that it is right, and that it never changes training."""

import pytest
import torch
from conftest import as_dataset, tiny_batch, tiny_config, training_args

from sal_hf import LocalLearningRule, SALForImageClassification, SALTrainer
from sal_hf.diagnostics import SALDiagnosticsCallback, alignment_angles, angle_degrees, probe_batch


def train(tmp_path, callbacks, rule="sal", **overrides):
    torch.manual_seed(0)
    model = SALForImageClassification(tiny_config(learning_rule=rule, **overrides))
    x, y = tiny_batch(96, seed=1)
    args = training_args(tmp_path, per_device_train_batch_size=16, max_steps=6, logging_steps=1)
    trainer = SALTrainer(model=model, args=args, train_dataset=as_dataset(x, y), callbacks=callbacks)
    trainer.train()
    return model, trainer


def test_diagnostics_do_not_change_training(tmp_path):
    x, y = tiny_batch(96, seed=1)
    plain, _ = train(tmp_path / "a", [])
    watched, trainer = train(tmp_path / "b", [SALDiagnosticsCallback(*probe_batch(as_dataset(x, y), size=40))])
    assert any("alignment/layer_0" in log for log in trainer.state.log_history)
    for (name, a), b in zip(plain.state_dict().items(), watched.state_dict().values()):
        assert torch.equal(a, b), name


def test_logs_shares_churn_and_alignment_with_the_loss(tmp_path):
    x, y = tiny_batch(96, seed=1)
    _, trainer = train(tmp_path, [SALDiagnosticsCallback(*probe_batch(as_dataset(x, y), size=40))])
    logs = [log for log in trainer.state.log_history if "loss" in log]
    assert len(logs) == 6
    for log in logs:
        for router in range(2):
            shares = [log[f"area/router_{router}/share_{k}"] for k in range(4)]
            assert sum(shares) == pytest.approx(1.0, abs=1e-3)
            assert min(shares) == pytest.approx(log[f"area/router_{router}/min_share"], abs=1e-4)
            assert max(shares) == pytest.approx(log[f"area/router_{router}/max_share"], abs=1e-4)
            assert sum(s == 0 for s in shares) == log[f"area/router_{router}/dead"]
            assert 0.0 <= log[f"area/router_{router}/churn"] <= 1.0
        for layer in range(2):
            assert 0.0 < log[f"alignment/layer_{layer}"] < 180.0


def test_bp_logs_no_alignment(tmp_path):
    x, y = tiny_batch(96, seed=1)
    _, trainer = train(tmp_path, [SALDiagnosticsCallback(*probe_batch(as_dataset(x, y)))], rule="bp")
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
