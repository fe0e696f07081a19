"""Per-area feedback (`SALConfig.feedback_scope="area"`): each area of a layer carries its own direct feedback matrix.

Hand-computed signals and Kolen-Pollack updates, what a sample's update may read (its own area's matrix only, never
a forward weight), early validation, and save / load through SALTrainer with the shipped defaults."""

import pytest
import torch
from conftest import CONFIGS, as_dataset, defaults_config, reload_identically, tiny_batch, tiny_config, training_args
from test_feedback_refined import feedback_grads
from torch.nn import functional as F

from sal_hf import SALForImageClassification, SALTrainer
from sal_hf.feedback import feedback_signal, kolen_pollack_gradient, make_feedback_matrix
from sal_hf.optim import area_parameters


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"feedback_scope": "areas"},
            r"feedback_scope must be one of \('shared', 'area'\); got feedback_scope='areas'",
        ),
        ({"feedback_scope": "area", "learning_rule": "dfa"}, r"learning_rule='dfa'"),
        ({"feedback_scope": "area", "num_areas": 1}, r"num_areas=1"),
        ({"feedback_scope": "area", "feedback": "layerwise"}, r"feedback_mode='layerwise'"),
    ],
)
def test_invalid_feedback_scope_fails_early_naming_the_value(overrides, message):
    with pytest.raises(ValueError, match=message):
        defaults_config(**overrides)


def test_per_area_matrices_have_a_leading_area_axis_drawn_from_the_shared_stream():
    shared = SALForImageClassification(defaults_config()).feedback
    per_area = SALForImageClassification(defaults_config(feedback_scope="area")).feedback
    for s, p in zip(shared.matrices(), per_area.matrices()):
        assert p.shape == (16, *s.shape)
        torch.testing.assert_close(p[0], s, rtol=0, atol=0)  # one draw: area 0 is the shared matrix
        assert not torch.equal(p[1], p[0])
    assert make_feedback_matrix((3, 5, 8), 7).abs().max() <= (6 / 8) ** 0.5  # fan-in is the last axis


@pytest.mark.parametrize("alignment", ["fixed", "kolen_pollack"])
def test_per_area_signal_and_kolen_pollack_update_match_a_hand_computed_one(alignment):
    """delta_l,i = (e_i @ B_l[k_l,i]) * f'(a_l,i); grad B_l[k] = sum_{i routed to k at layer l} e_i^T h_l,i + lambda
    (n_k / B) B_l[k]: exactly zero for an area no sample selected (no decay either)."""
    torch.manual_seed(0)
    decay = 0.05
    model = SALForImageClassification(
        tiny_config(feedback_scope="area", feedback_alignment=alignment, feedback_decay=decay)
    )
    x, y = tiny_batch(3)  # 3 samples, 4 areas: at least one area per layer is unselected
    grads = feedback_grads(model, x, y)
    out = model(pixel_values=x, labels=y, local=True)
    assert all(len(set(area.tolist())) < 4 for area in out.areas[:2])
    e = (out.logits.softmax(-1) - F.one_hot(y, 5)) / len(y)
    matrices = model.feedback.matrices()
    for index, (a, area) in enumerate(zip(out.pre_activations, out.areas)):
        B = matrices[index]
        signal = torch.stack([e[i] @ B[area[i]] for i in range(len(y))])
        torch.testing.assert_close(feedback_signal(e, B, area), signal)
        delta = signal * (a > 0)
        # The area's forward update is delta^T x over its own samples (foundation design: areas only).
        layer_input = x if index == 0 else out.pre_activations[index - 1].clamp(min=0)
        for k in range(4):
            rows = area == k
            name = f"sal.layers.{index}.areas.weight_{k}"
            if rows.any():
                torch.testing.assert_close(grads[name], delta[rows].T @ layer_input[rows])
            else:
                assert grads[name] is None
            if alignment == "kolen_pollack":
                h = a.clamp(min=0)
                expected = e[rows].T @ h[rows] + decay * rows.float().mean() * B[k]
                torch.testing.assert_close(grads[f"feedback.layer_{index}"][k], expected, rtol=1e-5, atol=0)
                if not rows.any():
                    assert not grads[f"feedback.layer_{index}"][k].any()
    if alignment == "fixed":
        assert not any(n.startswith("feedback") for n, _ in model.named_parameters())


def test_kolen_pollack_gradient_per_area_needs_the_areas():
    with pytest.raises(ValueError, match="area=None"):
        kolen_pollack_gradient(torch.zeros(2, 3), torch.zeros(2, 4), torch.zeros(5, 3, 4), 0.0)
    with pytest.raises(ValueError, match="area=None"):
        feedback_signal(torch.zeros(2, 3), torch.zeros(5, 3, 4))


@pytest.mark.parametrize("make_config", CONFIGS)
def test_a_sample_reads_only_its_own_areas_feedback_and_no_forward_weight(make_config):
    """With the output error held fixed: rewriting the feedback matrix of an area that no sample selected, or the
    output layer's forward weights, leaves every hidden layer's update (and every selected area's Kolen-Pollack
    update) unchanged."""
    torch.manual_seed(0)
    model = SALForImageClassification(make_config(feedback_scope="area", hidden_sizes=[32, 32]))
    num_areas = model.config.num_areas
    x, y = tiny_batch(3)  # 3 samples: most of the areas are unselected
    error = torch.randn(3, 5) / 3
    before = feedback_grads(model, x, y, error)
    areas = model(pixel_values=x, local=True).areas
    with torch.no_grad():
        for index, matrix in enumerate(model.feedback.matrices()):
            unused = [k for k in range(num_areas) if k not in set(areas[index].tolist())]
            matrix[unused] = torch.randn_like(matrix[unused])
        for p in model.classifier.parameters():
            p.mul_(-3.0).add_(0.1)
    after = feedback_grads(model, x, y, error)
    hidden = [n for n in before if n.startswith("sal.") and before[n] is not None and "router" not in n]
    assert hidden
    for name in hidden:
        torch.testing.assert_close(after[name], before[name], rtol=0, atol=0, msg=name)
    for index in range(len(areas) - 1):
        name = f"feedback.layer_{index}"
        if before.get(name) is None:
            continue  # fixed feedback (tiny config): buffers, no gradient
        for k in set(areas[index].tolist()):
            torch.testing.assert_close(after[name][k], before[name][k], rtol=0, atol=0)


def test_per_area_feedback_trains_with_the_defaults_and_survives_save_and_load(tmp_path):
    """Shipped defaults (Kolen-Pollack, dual path, K = 16) plus per-area feedback: SALTrainer trains the matrices of
    the areas that were selected, and a saved checkpoint reloads bit for bit; a shared-feedback config refuses it."""
    torch.manual_seed(0)
    model = SALForImageClassification(defaults_config(feedback_scope="area"))
    initial = model.feedback.layer_0.detach().clone()
    x, y = tiny_batch(64)
    trainer = SALTrainer(model=model, args=training_args(tmp_path), train_dataset=as_dataset(x, y))
    trainer.train()
    # The per-area matrices learn at the areas' lr (area_lr_scale = 1/K): at the full lr, AdamW's step of about lr
    # per entry, whatever an area's sample count, made them random-walk.
    groups = trainer.optimizer.param_groups
    learning_rates = {id(p): group.get("initial_lr", group["lr"]) for group in groups for p in group["params"]}
    assert {id(p) for p in model.feedback.parameters()} <= {id(p) for p in area_parameters(model)}
    assert learning_rates[id(model.feedback.layer_0)] == learning_rates[id(model.sal.layers[0].areas.weight_0)]
    assert learning_rates[id(model.feedback.layer_0)] < learning_rates[id(model.classifier.areas.weight_0)]
    changed = (model.feedback.layer_0.detach() != initial).flatten(1).any(1)
    assert changed.sum() >= 2, changed
    assert reload_identically(model, tmp_path / "per_area", x).config.feedback_scope == "area"
    with pytest.raises(Exception, match="feedback"):
        SALForImageClassification.from_pretrained(tmp_path / "per_area", feedback_scope="shared")
