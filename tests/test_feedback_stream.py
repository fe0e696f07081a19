"""Residual-stream feedback (`SALConfig(feedback="stream")`): every hidden layer of a residual stack receives the
output error projected to the last hidden state, through the parameter-free part of the output layer's norm.

Hand-checked against backprop, the one-hidden-layer case against direct feedback, what it reads (no forward weight),
Kolen-Pollack's update of its one matrix, early validation, training and save / load with the shipped defaults."""

import pytest
import torch
from conftest import defaults_config, reload_identically, tiny_batch, tiny_config, training_args
from test_feedback_refined import feedback_grads, grads_before_and_after_rewriting_the_output_layer
from torch.nn import functional as F

from sal_hf import SALForImageClassification, SALTrainer
from sal_hf.feedback import stream_signal
from sal_hf.learning_rule import output_error


def stream_config(make_config=defaults_config, **overrides):
    """A residual, layer-normed stack of 3 hidden layers with stream feedback; the shipped area defaults."""
    fields = {"hidden_sizes": [32, 32, 32], "residual": True, "norm": "layernorm", "feedback": "stream"}
    return make_config(**{**fields, **overrides})


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"residual": False}, "residual=True"),  # several hidden layers need the skip path
        ({"hidden_sizes": [32, 16], "residual": False}, "equal hidden sizes"),
        ({"learning_rule": "dfa"}, "learning_rule='sal'"),
        ({"feedback_scope": "area"}, "feedback_scope='shared'"),
        ({"feedback_alignment": "sign"}, "feedback='layerwise'"),
    ],
)
def test_invalid_stream_settings_fail_early_naming_the_fix(overrides, field):
    with pytest.raises(ValueError, match=field):
        stream_config(**overrides)


def test_one_matrix_learned_by_default():
    model = SALForImageClassification(stream_config())
    assert model.config.effective_feedback_alignment == "kolen_pollack"
    assert [n for n, _ in model.named_parameters() if n.startswith("feedback")] == ["feedback.layer_0"]
    assert model.feedback.layer_0.shape == (5, 32)


@pytest.mark.parametrize("alignment", ["fixed", "kolen_pollack"])
def test_with_one_hidden_layer_and_no_norm_stream_is_direct_feedback(alignment):
    """Same draw, same signal, same Kolen-Pollack update: bit for bit (the norm's Jacobian is the identity)."""
    x, y = tiny_batch(32)
    grads = []
    for feedback in ("direct", "stream"):
        torch.manual_seed(0)
        config = defaults_config(hidden_sizes=[32], feedback=feedback, feedback_alignment=alignment)
        grads.append(feedback_grads(SALForImageClassification(config), x, y))
    assert grads[0].keys() == grads[1].keys()
    for name, grad in grads[0].items():
        assert (grad is None and grads[1][name] is None) or torch.equal(grad, grads[1][name]), name


@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm"])
def test_through_the_output_weight_the_last_block_gets_exactly_backprops_gradient(norm, tmp_path):
    """With B set to the output layer's weight (a test-only check, never done in training) and that layer's norm at
    its initial affine, the signal is the true gradient at h_L, so the last block's update is BP's; without the norm's
    Jacobian it is not (the check can fail)."""
    torch.manual_seed(0)
    model = SALForImageClassification(stream_config(norm=norm, feedback_alignment="fixed")).double()
    with torch.no_grad():
        model.feedback.layer_0.copy_(model.classifier.areas.weight_0)
    x, y = tiny_batch(16)
    x = x.double()
    local = feedback_grads(model, x, y)
    model.zero_grad(set_to_none=True)
    model(pixel_values=x, labels=y).loss.backward()
    last = "sal.layers.2."
    checked = [
        n for n, p in model.named_parameters() if n.startswith(last) and "router" not in n and p.grad is not None
    ]
    assert (
        any("areas" in n for n in checked) and any("shared" in n for n in checked) and any("norm" in n for n in checked)
    )
    for name in checked:
        torch.testing.assert_close(local[name], dict(model.named_parameters())[name].grad, msg=name)

    h = model(pixel_values=x, output_hidden_states=True).hidden_states[-1].detach()
    error = output_error(model(pixel_values=x).logits, y)
    bp = torch.autograd.grad(F.cross_entropy(model.classifier(h.requires_grad_())[0].float(), y), h)[0]
    torch.testing.assert_close(stream_signal(error, model.feedback.layer_0, h, norm), bp.float())
    assert not torch.allclose(stream_signal(error, model.feedback.layer_0, h, "none"), bp.float(), atol=1e-3)


def test_the_signal_reads_no_output_weight():
    """With the same output error, rewriting the output layer (weight, bias, norm affine) changes no hidden update
    and not the stream matrix's Kolen-Pollack update: the output layer's weights are not transported."""
    torch.manual_seed(0)
    model = SALForImageClassification(stream_config())
    x, y = tiny_batch(32)
    error = torch.randn(32, 5) / 32
    before, after = grads_before_and_after_rewriting_the_output_layer(model, x, y, error)
    names = [n for n, g in before.items() if g is not None and not n.startswith("classifier.")]
    assert "feedback.layer_0" in names and any(n.startswith("sal.layers.0.areas") for n in names)
    for name in names:
        assert torch.equal(before[name], after[name]), name


def test_every_layer_gets_the_same_signal_and_kolen_pollack_learns_from_the_normed_last_state():
    torch.manual_seed(0)
    model = SALForImageClassification(stream_config(feedback_decay=0.01))
    x, y = tiny_batch(32)
    error = torch.randn(32, 5) / 32
    grads = feedback_grads(model, x, y, error)
    out = model(pixel_values=x, labels=y, local=True, output_hidden_states=True)
    h_last = out.hidden_states[-1].detach()
    B = model.feedback.layer_0.detach()
    expected = error.t() @ F.layer_norm(h_last, (32,)) + 0.01 * B
    torch.testing.assert_close(grads["feedback.layer_0"], expected)
    # Hand-computed signal, gated per layer: layer 0 (no residual) and the blocks (residual scale s).
    g = stream_signal(error, B, h_last, "layernorm")
    s = model.config.effective_residual_scale
    for index, a in enumerate(out.pre_activations):
        delta = g * (a.detach() > 0) * (s if index else 1.0)
        layer = model.sal.layers[index]
        expected_shared = delta.t() @ layer.norm(out.hidden_states[index].detach()).detach()
        torch.testing.assert_close(grads[f"sal.layers.{index}.shared.weight"], expected_shared, msg=str(index))


def test_stream_defaults_train_through_sal_trainer_and_reload(tmp_path):
    torch.manual_seed(0)
    model = SALForImageClassification(stream_config())
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    x, y = tiny_batch(64)
    data = [{"pixel_values": xi, "labels": int(yi)} for xi, yi in zip(x, y)]
    SALTrainer(model=model, args=training_args(tmp_path), train_dataset=data).train()
    for name in ("feedback.layer_0", "sal.layers.0.shared.weight", "sal.layers.2.shared.weight"):
        assert not torch.equal(dict(model.named_parameters())[name], start[name]), f"{name} did not learn"
    assert reload_identically(model, tmp_path / "stream", x).config.feedback == "stream"


def test_the_tiny_foundation_design_takes_stream_feedback_too(tmp_path):
    model = SALForImageClassification(stream_config(tiny_config, norm="rmsnorm"))
    x, y = tiny_batch(16)
    grads = feedback_grads(model, x, y)
    assert all(grads[f"sal.layers.{i}.norm.weight"].abs().sum() > 0 for i in range(3))


def test_a_checkpoint_saved_with_another_feedback_layout_is_refused(tmp_path):
    """Direct feedback saved 3 learned matrices; loaded as stream, 2 would be dropped silently: refused, naming the
    field. The reverse lacks 2 of the 3 matrices direct feedback needs."""
    SALForImageClassification(stream_config(feedback="direct")).save_pretrained(tmp_path / "direct")
    with pytest.raises(ValueError, match=r"(?s)feedback\.layer_1.*`feedback`"):
        SALForImageClassification.from_pretrained(tmp_path / "direct", feedback="stream")
    SALForImageClassification(stream_config()).save_pretrained(tmp_path / "stream")
    with pytest.raises(ValueError, match=r"lacks 2 weights.*feedback layout"):
        SALForImageClassification.from_pretrained(tmp_path / "stream", feedback="direct")
    # A checkpoint that learned nothing loses nothing: its frozen matrices load into any layout (a learned one starts
    # from the stored draw), and a frozen target is rebuilt from its config.
    fixed = {"feedback_alignment": "fixed"}
    SALForImageClassification(stream_config(feedback="direct", **fixed)).save_pretrained(tmp_path / "f")
    SALForImageClassification.from_pretrained(tmp_path / "f", feedback="stream")
    SALForImageClassification.from_pretrained(tmp_path / "f", feedback="stream", feedback_alignment="kolen_pollack")
    SALForImageClassification(stream_config(**fixed)).save_pretrained(tmp_path / "sf")
    SALForImageClassification.from_pretrained(tmp_path / "sf", feedback="direct")
    SALForImageClassification.from_pretrained(tmp_path / "sf", feedback="direct", feedback_alignment="kolen_pollack")
    SALForImageClassification.from_pretrained(tmp_path / "stream", feedback="direct", **fixed)


def test_stream_feedback_with_output_areas_reaches_every_layer():
    torch.manual_seed(0)
    model = SALForImageClassification(stream_config(output_areas=True))
    x, y = tiny_batch(32)
    grads = feedback_grads(model, x, y)
    assert grads["feedback.layer_0"].abs().sum() > 0
    assert all(grads[f"sal.layers.{i}.shared.weight"].abs().sum() > 0 for i in range(3))
