"""Correctness of the update: hand-computed DFA / FA, BP equals autograd, the surrogate's value."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny_batch, tiny_config, training_args
from torch.nn import functional as F

from sal_hf import SALForImageClassification, SALTrainer
from sal_hf.activations import ACTIVATIONS, CLOSED_FORM_DERIVATIVES, activation_derivative
from sal_hf.learning_rule import gate, output_error, surrogate_loss


def rule_grads(model, x, y, tmp_path):
    """The update exactly as SALTrainer computes it (compute_loss, then one backward)."""
    trainer = SALTrainer(model=model, args=training_args(tmp_path))
    model.train()
    model.zero_grad(set_to_none=True)
    loss = trainer.compute_loss(model, {"pixel_values": x, "labels": y})
    loss.backward()
    return loss, {name: p.grad for name, p in model.named_parameters()}


def test_dfa_with_one_area_matches_a_hand_computed_update(tmp_path):
    torch.manual_seed(0)
    model = SALForImageClassification(tiny_config(hidden_sizes=[6], num_areas=1, learning_rule="dfa"))
    x, y = tiny_batch(8)
    loss, grads = rule_grads(model, x, y, tmp_path)

    W1, b1 = model.sal.layers[0].areas.weight_0, model.sal.layers[0].areas.bias_0
    W2, b2 = model.classifier.areas.weight_0, model.classifier.areas.bias_0
    B1 = model.feedback.layer_0  # (C, d_1)
    with torch.no_grad():
        a1 = x @ W1.T + b1
        h1 = a1.clamp(min=0)
        z = h1 @ W2.T + b2
        e = (z.softmax(-1) - F.one_hot(y, 5)) / len(y)
        delta1 = (e @ B1) * (a1 > 0)
    torch.testing.assert_close(loss, F.cross_entropy(z, y))
    torch.testing.assert_close(grads["classifier.areas.weight_0"], e.T @ h1)
    torch.testing.assert_close(grads["classifier.areas.bias_0"], e.sum(0))
    torch.testing.assert_close(grads["sal.layers.0.areas.weight_0"], delta1.T @ x)
    torch.testing.assert_close(grads["sal.layers.0.areas.bias_0"], delta1.sum(0))


def test_fa_matches_a_hand_computed_layerwise_update(tmp_path):
    torch.manual_seed(0)
    model = SALForImageClassification(tiny_config(hidden_sizes=[6, 7], num_areas=1, learning_rule="fa"))
    x, y = tiny_batch(8)
    _, grads = rule_grads(model, x, y, tmp_path)
    W1, b1 = model.sal.layers[0].areas.weight_0, model.sal.layers[0].areas.bias_0
    W2, b2 = model.sal.layers[1].areas.weight_0, model.sal.layers[1].areas.bias_0
    W3, b3 = model.classifier.areas.weight_0, model.classifier.areas.bias_0
    B1, B2 = model.feedback.layer_0, model.feedback.layer_1  # (d_2, d_1), (C, d_2): shaped like W2, W3
    assert B1.shape == W2.shape and B2.shape == W3.shape
    with torch.no_grad():
        a1 = x @ W1.T + b1
        a2 = a1.clamp(min=0) @ W2.T + b2
        z = a2.clamp(min=0) @ W3.T + b3
        e = (z.softmax(-1) - F.one_hot(y, 5)) / len(y)
        delta2 = (e @ B2) * (a2 > 0)
        delta1 = (delta2 @ B1) * (a1 > 0)
    torch.testing.assert_close(grads["sal.layers.1.areas.weight_0"], delta2.T @ a1.clamp(min=0))
    torch.testing.assert_close(grads["sal.layers.0.areas.weight_0"], delta1.T @ x)


def test_bp_matches_plain_autograd(tmp_path):
    torch.manual_seed(0)
    model = SALForImageClassification(tiny_config(learning_rule="bp"))
    x, y = tiny_batch(16)
    _, grads = rule_grads(model, x, y, tmp_path)
    reference = SALForImageClassification(model.config)
    reference.load_state_dict(model.state_dict())
    F.cross_entropy(reference(pixel_values=x).logits, y).backward()
    for name, p in reference.named_parameters():
        if p.grad is None:
            assert grads[name] is None, name
        else:
            torch.testing.assert_close(grads[name], p.grad, msg=name)


def test_sal_with_one_area_is_dfa(tmp_path):
    torch.manual_seed(0)
    # With the same (fixed) feedback: unset, `sal` derives Kolen-Pollack and `dfa` keeps the published fixed matrices.
    sal = SALForImageClassification(tiny_config(num_areas=1, learning_rule="sal", feedback_alignment="fixed"))
    dfa = SALForImageClassification(tiny_config(num_areas=1, learning_rule="dfa"))
    dfa.load_state_dict(sal.state_dict())
    x, y = tiny_batch(16)
    _, g_sal = rule_grads(sal, x, y, tmp_path)
    _, g_dfa = rule_grads(dfa, x, y, tmp_path)
    for name in g_sal:
        torch.testing.assert_close(g_sal[name], g_dfa[name], msg=name)


def test_sal_update_differs_from_bp(tmp_path):
    """The local rule is not backprop in disguise: hidden updates differ, the output layer's agrees."""
    torch.manual_seed(0)
    sal = SALForImageClassification(tiny_config(num_areas=1, learning_rule="sal"))
    bp = SALForImageClassification(tiny_config(num_areas=1, learning_rule="bp"))
    bp.load_state_dict(sal.state_dict(), strict=False)
    x, y = tiny_batch(16)
    _, g_sal = rule_grads(sal, x, y, tmp_path)
    _, g_bp = rule_grads(bp, x, y, tmp_path)
    torch.testing.assert_close(g_sal["classifier.areas.weight_0"], g_bp["classifier.areas.weight_0"])
    assert not torch.allclose(g_sal["sal.layers.0.areas.weight_0"], g_bp["sal.layers.0.areas.weight_0"])


def test_surrogate_value_is_the_loss_and_its_gradient_the_signal():
    logits = torch.randn(4, 3, requires_grad=True)
    labels = torch.tensor([0, 2, 1, 1])
    loss = F.cross_entropy(logits, labels)
    error = output_error(logits, labels)
    surrogate = surrogate_loss(loss, logits, error, [], [])
    torch.testing.assert_close(surrogate, loss)
    surrogate.backward()
    torch.testing.assert_close(logits.grad, error)


@pytest.mark.parametrize("name", [*sorted(ACTIVATIONS), "softplus"])
def test_activation_derivative_and_gate_match_autograd(name):
    """The closed forms (every activation a config can name) and the autograd fallback (any other pointwise f,
    softplus here) give autograd's f', also at a = 0."""
    assert set(ACTIVATIONS.values()) <= set(CLOSED_FORM_DERIVATIVES)
    activation = ACTIVATIONS.get(name, F.softplus)
    a = torch.cat([torch.randn(4, 7) * 3, torch.zeros(1, 7)]).requires_grad_(True)
    (reference,) = torch.autograd.grad(activation(a).sum(), a)
    torch.testing.assert_close(activation_derivative(activation, a), reference)
    signal = torch.randn(5, 7)
    torch.testing.assert_close(gate(signal, a, activation, scale=0.5), 0.5 * signal * reference)
    assert not gate(signal, a, activation).requires_grad


def test_surrogate_gradient_keeps_a_bf16_output_dtype():
    logits = torch.randn(4, 3).bfloat16().requires_grad_(True)
    labels = torch.tensor([0, 2, 1, 1])
    error = output_error(logits, labels)
    surrogate_loss(F.cross_entropy(logits.float(), labels), logits, error, [], []).backward()
    assert logits.grad.dtype == torch.bfloat16
    torch.testing.assert_close(logits.grad, error.bfloat16())


def test_area_norm_scales_each_area_by_its_own_sample_count(tmp_path):
    torch.manual_seed(0)
    batch = tiny_config(hidden_sizes=[8], area_update_norm="batch")
    model = SALForImageClassification(batch)
    area_model = SALForImageClassification(tiny_config(hidden_sizes=[8], area_update_norm="area"))
    area_model.load_state_dict(model.state_dict())
    x, y = tiny_batch(32)
    _, g_batch = rule_grads(model, x, y, tmp_path)
    _, g_area = rule_grads(area_model, x, y, tmp_path)
    model.eval()
    areas = model(pixel_values=x, return_areas=True).areas[0]
    for k in range(batch.num_areas):
        n_k = int((areas == k).sum())
        name = f"sal.layers.0.areas.weight_{k}"
        if n_k:
            torch.testing.assert_close(g_area[name], g_batch[name] * len(y) / n_k)


def test_core_files_import_without_transformers():
    """routing.py, feedback.py and learning_rule.py need torch alone."""
    package = Path(__file__).resolve().parents[1] / "sal_hf"
    code = f"""
import importlib.abc, sys, types
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split('.')[0] == 'transformers':
            raise ImportError('blocked: ' + name)
sys.meta_path.insert(0, Block())
core = types.ModuleType('sal_core'); core.__path__ = [{str(package)!r}]; sys.modules['sal_core'] = core
import sal_core.routing, sal_core.feedback, sal_core.learning_rule
assert 'transformers' not in sys.modules
"""
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("rule", ["sal", "dfa", "fa"])
def test_local_rules_leave_input_without_gradient(rule, tmp_path):
    torch.manual_seed(0)
    model = SALForImageClassification(tiny_config(learning_rule=rule))
    x, y = tiny_batch(16)
    x.requires_grad_(True)
    rule_grads(model, x, y, tmp_path)
    assert x.grad is None
