"""Refined feedback (`SALConfig.feedback_alignment`): Kolen-Pollack and sign-concordant feedback.

Hand-computed updates, locality (what each switch may and may not read), alignment under training, checkpoints,
and early validation."""

import pytest
import torch
from conftest import reload_identically, tiny_batch, tiny_config, training_args
from torch.nn import functional as F

import sal_hf.learning_rule as learning_rule
from sal_hf import SALConfig, SALForImageClassification, SALTrainer
from sal_hf.feedback import kolen_pollack_gradient, sign_concordant
from sal_hf.trainer import local_learning_rule


def feedback_grads(model, x, y, error=None):
    """Gradients of every parameter after one local update as SALTrainer computes it, optionally with a fixed
    output error (so that only what the rule reads can change the result)."""
    model.train().zero_grad(set_to_none=True)
    rule = local_learning_rule(model.config)
    out = model(pixel_values=x, labels=y, local=True)
    original = learning_rule.output_error
    if error is not None:
        learning_rule.output_error = lambda logits, labels: error
    try:
        rule.surrogate(out, y, model.feedback_matrices()).backward()
    finally:
        learning_rule.output_error = original
    return {name: None if p.grad is None else p.grad.clone() for name, p in model.named_parameters()}


def grads_before_and_after_rewriting_the_output_layer(model, x, y, error):
    """:func:`feedback_grads` with the output error fixed, before and after the output layer's weights, biases and
    norm are rewritten: what the update reads of the output layer shows as a difference."""
    before = feedback_grads(model, x, y, error)
    with torch.no_grad():
        for p in model.classifier.parameters():
            p.mul_(-3.0).add_(0.1)
    return before, feedback_grads(model, x, y, error)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"feedback_alignment": "kp"}, "feedback_alignment"),
        ({"feedback_alignment": "kolen_pollack", "learning_rule": "bp"}, "feedback_alignment"),
        ({"feedback_alignment": "sign"}, "feedback='layerwise'"),  # sign needs layer-wise feedback
        ({"feedback_alignment": "sign", "learning_rule": "dfa"}, "learning_rule='fa'"),
        ({"feedback_alignment": "kolen_pollack", "feedback_decay": -1.0}, "feedback_decay"),
        ({"feedback_alignment": "kolen_pollack", "feedback_decay": True}, "feedback_decay"),
    ],
)
def test_invalid_settings_fail_early_naming_the_field(overrides, field):
    with pytest.raises(ValueError, match=field):
        tiny_config(**overrides)


@pytest.mark.parametrize(
    "fields, derived",
    [
        ({}, "kolen_pollack"),  # SAL as we recommend: the default
        ({"feedback": "layerwise"}, "fixed"),  # layer-wise KP trained deep residual stacks worse
        ({"learning_rule": "dfa"}, "fixed"),  # DFA and FA stay the published algorithms
        ({"learning_rule": "fa"}, "fixed"),
        ({"feedback_alignment": "fixed"}, "fixed"),  # SAL as published: one flag
    ],
)
def test_the_feedback_alignment_default_is_derived_and_stored_unset(fields, derived, tmp_path):
    model = SALForImageClassification(tiny_config(**fields))
    assert model.config.effective_feedback_alignment == derived
    names = {"feedback.layer_0", "feedback.layer_1"}
    learned = {n for n, _ in model.named_parameters() if n.startswith("feedback")}
    frozen = {n for n, _ in model.named_buffers() if n.startswith("feedback")}
    assert (learned, frozen) == ((names, set()) if derived == "kolen_pollack" else (set(), names))
    # Stored as given (unset stays unset), so a checkpoint loaded with another learning rule derives its own.
    model.config.save_pretrained(tmp_path)
    assert SALConfig.from_pretrained(tmp_path).feedback_alignment == fields.get("feedback_alignment")
    assert SALConfig.from_pretrained(tmp_path, learning_rule="bp").effective_feedback_alignment == "fixed"


@pytest.mark.parametrize("feedback", ["direct", "layerwise"])
def test_kolen_pollack_update_matches_a_hand_computed_one(feedback):
    """grad B_l = s_l^T h_l + lambda B_l, s_l = e (direct) or delta_{l+1} (layer-wise), h_l the layer's output;
    the forward layers get exactly the update fixed feedback with the same B would give."""
    torch.manual_seed(0)
    decay = 0.05
    config = tiny_config(num_areas=1, feedback=feedback, feedback_alignment="kolen_pollack", feedback_decay=decay)
    model = SALForImageClassification(config)
    x, y = tiny_batch(16)
    grads = feedback_grads(model, x, y)
    (W1, b1), (W2, b2), (W3, b3) = [
        (layer.areas.weight_0, layer.areas.bias_0) for layer in [*model.sal.layers, model.classifier]
    ]
    B1, B2 = model.feedback.layer_0, model.feedback.layer_1
    with torch.no_grad():
        a1 = x @ W1.T + b1
        h1 = a1.clamp(min=0)
        a2 = h1 @ W2.T + b2
        h2 = a2.clamp(min=0)
        z = h2 @ W3.T + b3
        e = (z.softmax(-1) - F.one_hot(y, 5)) / len(y)
        if feedback == "direct":
            delta2, delta1 = (e @ B2) * (a2 > 0), (e @ B1) * (a1 > 0)
            expected_B1 = e.T @ h1 + decay * B1
        else:
            delta2 = (e @ B2) * (a2 > 0)
            delta1 = (delta2 @ B1) * (a1 > 0)
            expected_B1 = delta2.T @ h1 + decay * B1
        expected_B2 = e.T @ h2 + decay * B2
    torch.testing.assert_close(grads["feedback.layer_0"], expected_B1)
    torch.testing.assert_close(grads["feedback.layer_1"], expected_B2)
    torch.testing.assert_close(grads["sal.layers.0.areas.weight_0"], delta1.T @ x)
    torch.testing.assert_close(grads["sal.layers.1.areas.weight_0"], delta2.T @ h1)
    # The last feedback matrix gets exactly the output layer's own update (plus decay): no weight transport needed.
    torch.testing.assert_close(grads["feedback.layer_1"] - decay * B2, grads["classifier.areas.weight_0"])


def test_kolen_pollack_terms_reach_only_their_feedback_matrix():
    torch.manual_seed(0)
    model = SALForImageClassification(tiny_config(feedback_alignment="kolen_pollack"))
    x, y = tiny_batch(16)
    out = model(pixel_values=x, labels=y, local=True)
    error = learning_rule.output_error(out.logits, y)
    matrices = model.feedback_matrices()
    deltas = learning_rule.local_deltas(error, out.pre_activations, matrices, mode="direct", activation=torch.relu)
    activities = learning_rule.layer_outputs(out.pre_activations, torch.relu)
    terms = learning_rule.feedback_terms(error, deltas, activities, matrices, mode="direct", decay=0.0)
    for term, matrix in zip(terms, matrices):
        (grad,) = torch.autograd.grad(term, [matrix])
        assert grad.abs().sum() > 0
        others = [p for p in model.parameters() if p is not matrix]
        assert all(g is None for g in torch.autograd.grad(term, others, allow_unused=True))


def test_kolen_pollack_refuses_frozen_matrices():
    model = SALForImageClassification(tiny_config(feedback_alignment="fixed"))  # buffers
    x, y = tiny_batch(8)
    rule = local_learning_rule(tiny_config(feedback_alignment="kolen_pollack"))
    out = model(pixel_values=x, labels=y, local=True)
    with pytest.raises(ValueError, match="learnable feedback"):
        rule.surrogate(out, y, model.feedback.matrices())


@pytest.mark.parametrize("feedback", ["direct", "layerwise"])
def test_kolen_pollack_update_never_reads_later_forward_weights(feedback):
    """With the same output error, changing the output layer's forward weights leaves the first layer's update and
    the feedback updates that depend on e alone unchanged (direct: all; layer-wise: the last one)."""
    torch.manual_seed(0)
    model = SALForImageClassification(tiny_config(feedback=feedback, feedback_alignment="kolen_pollack"))
    x, y = tiny_batch(32)
    error = torch.randn(32, 5) / 32
    before, after = grads_before_and_after_rewriting_the_output_layer(model, x, y, error)
    names = ["feedback.layer_0", "feedback.layer_1"] if feedback == "direct" else ["feedback.layer_1"]
    names += [n for n in before if n.startswith("sal.layers.0.areas") and before[n] is not None]
    for name in names:
        assert torch.equal(before[name], after[name]), name


def test_sign_feedback_transports_signs_and_only_signs():
    """Documented weight transport: B_l = |B_l^fixed| * sign(W_{l+1}); flipping the output layer's signs changes the
    last hidden layer's update, scaling its magnitudes does not."""
    torch.manual_seed(0)
    model = SALForImageClassification(tiny_config(learning_rule="fa", feedback_alignment="sign"))
    matrices = model.feedback_matrices()
    fixed = model.feedback.matrices()
    readers = [model.sal.layers[1], model.classifier]
    for b, b_fixed, reader in zip(matrices, fixed, readers):
        mean_weight = torch.stack(reader.areas.weights).mean(0)
        torch.testing.assert_close(b, b_fixed.abs() * torch.sign(mean_weight))
    x, y = tiny_batch(32)
    error = torch.randn(32, 5) / 32
    name = "sal.layers.1.areas.weight_0"
    grads = feedback_grads(model, x, y, error)
    with torch.no_grad():
        for weight in model.classifier.areas.weights:
            weight.mul_(2.5)
    assert torch.equal(feedback_grads(model, x, y, error)[name], grads[name])
    with torch.no_grad():
        for weight in model.classifier.areas.weights:
            weight.neg_()
    flipped = feedback_grads(model, x, y, error)[name]
    torch.testing.assert_close(flipped, -grads[name])  # every sign of B flipped: the signal flips exactly


def test_sign_concordant_and_kolen_pollack_gradient_functions():
    magnitude = torch.tensor([[0.5, -2.0], [1.0, 0.0]])
    weight = torch.tensor([[-1.0, 3.0], [0.0, -0.1]])
    torch.testing.assert_close(sign_concordant(magnitude, weight), torch.tensor([[-0.5, 2.0], [0.0, -0.0]]))
    source, activity = torch.tensor([[1.0, 0.0], [0.0, 2.0]]), torch.tensor([[3.0], [4.0]])
    matrix = torch.tensor([[1.0], [1.0]])
    torch.testing.assert_close(kolen_pollack_gradient(source, activity, matrix, 0.5), torch.tensor([[3.5], [8.5]]))


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(F.cosine_similarity(a.detach().flatten(), b.detach().flatten(), dim=0))


def test_kolen_pollack_feedback_aligns_with_the_forward_weights(feedback="layerwise"):
    """Trained by the local rule alone, every layer-wise B_l moves toward the W_{l+1} it stands in for, although it
    never reads it. (Direct B_{L-1} gets the same update as layer-wise B_{L-1}: see the hand-computed test.)"""
    torch.manual_seed(0)
    x = torch.randn(1024, 16)
    y = (x @ torch.randn(16, 5)).argmax(-1)
    model = SALForImageClassification(
        tiny_config(num_areas=1, feedback=feedback, feedback_alignment="kolen_pollack", feedback_decay=0.01)
    )
    rule = local_learning_rule(model.config)
    pairs = list(zip(model.feedback.matrices(), [model.sal.layers[1], model.classifier]))
    start = [cosine(b, layer.mean_forward_weight()) for b, layer in pairs]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    generator = torch.Generator().manual_seed(0)
    for _ in range(150):
        index = torch.randint(0, len(y), (32,), generator=generator)
        optimizer.zero_grad()
        out = model(pixel_values=x[index], labels=y[index], local=True)
        rule.surrogate(out, y[index], model.feedback_matrices()).backward()
        optimizer.step()
    end = [cosine(b, layer.mean_forward_weight()) for b, layer in pairs]
    for s, e in zip(start, end):
        assert abs(s) < 0.3 and e > s + 0.2, (start, end)


def test_kolen_pollack_trains_through_sal_trainer_and_survives_save_and_load(tmp_path):
    torch.manual_seed(0)
    model = SALForImageClassification(tiny_config(feedback_alignment="kolen_pollack"))
    initial = {n: p.detach().clone() for n, p in model.named_parameters() if n.startswith("feedback")}
    x, y = tiny_batch(64)
    data = [{"pixel_values": xi, "labels": int(yi)} for xi, yi in zip(x, y)]
    SALTrainer(model=model, args=training_args(tmp_path), train_dataset=data).train()
    for name, value in initial.items():
        assert not torch.equal(dict(model.named_parameters())[name], value), f"{name} did not learn"
    assert reload_identically(model, tmp_path / "kp", x).config.feedback_alignment == "kolen_pollack"


def test_sign_feedback_trains_through_sal_trainer(tmp_path):
    torch.manual_seed(0)
    model = SALForImageClassification(tiny_config(feedback="layerwise", feedback_alignment="sign"))
    before = model.sal.layers[0].areas.weight_0.detach().clone()
    x, y = tiny_batch(64)
    data = [{"pixel_values": xi, "labels": int(yi)} for xi, yi in zip(x, y)]
    SALTrainer(model=model, args=training_args(tmp_path), train_dataset=data).train()
    assert not torch.equal(model.sal.layers[0].areas.weight_0, before)
    assert not [n for n, _ in model.named_parameters() if n.startswith("feedback")]


def test_a_config_saved_before_learned_feedback_existed_loads_fixed(tmp_path):
    """A config.json without the key predates the field (fixed feedback was the only kind): it keeps training that
    way; a config saved now stores the key (null when unset) and derives the default."""
    import json

    SALConfig(
        **{k: v for k, v in tiny_config().to_dict().items() if k in ("input_size", "hidden_sizes")}
    ).save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert "feedback_alignment" in saved and saved["feedback_alignment"] is None
    assert SALConfig.from_pretrained(tmp_path).effective_feedback_alignment == "kolen_pollack"
    del saved["feedback_alignment"]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    assert SALConfig.from_pretrained(tmp_path).feedback_alignment == "fixed"
    assert SALConfig.from_pretrained(tmp_path, feedback_alignment="kolen_pollack").feedback_alignment == "kolen_pollack"


def test_a_deleted_learned_feedback_matrix_is_refused_but_a_bp_checkpoint_loads(tmp_path):
    from safetensors.torch import load_file, save_file

    SALForImageClassification(tiny_config()).save_pretrained(tmp_path / "kp")
    weights = load_file(tmp_path / "kp" / "model.safetensors")
    assert {"feedback.layer_0", "feedback.layer_1"} <= weights.keys()
    del weights["feedback.layer_1"]
    save_file(weights, tmp_path / "kp" / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"lacks 1 weights.*feedback\.layer_1"):
        SALForImageClassification.from_pretrained(tmp_path / "kp")
    # A bp checkpoint has no feedback matrices at all: a local rule draws them from feedback_seed.
    SALForImageClassification(tiny_config(learning_rule="bp")).save_pretrained(tmp_path / "bp")
    model = SALForImageClassification.from_pretrained(tmp_path / "bp", learning_rule="sal")
    torch.testing.assert_close(model.feedback.layer_0.detach(), model.feedback.initial_values()["layer_0"])
