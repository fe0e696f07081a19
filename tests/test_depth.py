"""Residual blocks and normalisation: the local update of a residual block, and a deep stack that stays finite."""

import pytest
import torch
from conftest import tiny_batch, tiny_config, training_args

from sal_hf import SALForImageClassification, SALTrainer


def local_and_bp_grads(model, x, y, tmp_path):
    trainer = SALTrainer(model=model, args=training_args(tmp_path))
    model.train().zero_grad(set_to_none=True)
    trainer.compute_loss(model, {"pixel_values": x, "labels": y}).backward()
    local = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    model(pixel_values=x, labels=y).loss.backward()
    bp = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return local, bp


def test_layerwise_feedback_through_forward_weights_is_backprop_in_a_residual_stack(tmp_path):
    """With B_l set to the forward W_{l+1} (a test-only check, never done in training), layerwise feedback
    must reproduce BP exactly, which holds only if the skip path carries the signal g_{l+1} to layer l."""
    torch.manual_seed(0)
    config = tiny_config(learning_rule="fa", num_areas=1, residual=True, hidden_sizes=[8, 8, 8, 8])
    model = SALForImageClassification(config).double()
    with torch.no_grad():
        for index, matrix in enumerate(model.feedback.matrices()):
            nxt = model.sal.layers[index + 1] if index + 1 < len(model.sal.layers) else model.classifier
            matrix.copy_(nxt.areas.weight_0)
    x, y = tiny_batch(16)
    local, bp = local_and_bp_grads(model, x.double(), y, tmp_path)
    assert local.keys() == bp.keys()
    for name in bp:
        torch.testing.assert_close(local[name], bp[name], msg=name)
    # Without the skip term the first layer's update differs: the check above can fail.
    model.zero_grad(set_to_none=True)
    trainer = SALTrainer(model=model, args=training_args(tmp_path))
    trainer.learning_rule.residual = False
    trainer.compute_loss(model, {"pixel_values": x.double(), "labels": y}).backward()
    assert not torch.allclose(model.sal.layers[0].areas.weight_0.grad, bp["sal.layers.0.areas.weight_0"])


def test_norm_parameters_get_a_local_update(tmp_path):
    torch.manual_seed(0)
    model = SALForImageClassification(tiny_config(residual=True, norm="layernorm"))
    x, y = tiny_batch(32)
    local, _ = local_and_bp_grads(model, x, y, tmp_path)
    for index in range(2):
        for kind in ("weight", "bias"):
            assert local[f"sal.layers.{index}.norm.{kind}"].abs().sum() > 0
    assert local["classifier.norm.weight"].abs().sum() > 0


@pytest.fixture
def one_thread():
    """Many tiny ops: one thread avoids OpenMP's hand-offs, which dominate on a loaded 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_forty_eight_residual_layers_train_without_nan(tmp_path, one_thread):
    torch.manual_seed(0)
    config = tiny_config(hidden_sizes=[16] * 48, residual=True, norm="layernorm", num_areas=4)
    model = SALForImageClassification(config)
    x, _ = tiny_batch(64)
    y = (x @ torch.randn(16, 5, generator=torch.Generator().manual_seed(1))).argmax(-1)  # learnable labels
    trainer = SALTrainer(model=model, args=training_args(tmp_path))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(20):
        model.train().zero_grad(set_to_none=True)
        loss = trainer.compute_loss(model, {"pixel_values": x, "labels": y})
        loss.backward()
        optimizer.step()
        model.update_routing_statistics()
        losses.append(loss.item())
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert losses[-1] < 0.85 * losses[0]
