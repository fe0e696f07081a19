"""`SALConfig.feedback_gain`: a constant multiple of the feedback matrices' random draw, which under plain SGD
multiplies every hidden layer's step and leaves the output layer's and the router's alone."""

import math

import pytest
import torch
from conftest import defaults_config, one_sgd_step
from safetensors.torch import load_file

from sal_hf import SALConfig, SALForImageClassification


@pytest.mark.parametrize("gain", [0, -1.0, math.nan, math.inf, True, "2"])
def test_bad_gain_names_the_field(gain):
    with pytest.raises(ValueError, match="feedback_gain"):
        SALConfig(feedback_gain=gain)


def test_backprop_has_no_feedback_to_scale():
    with pytest.raises(ValueError, match="learning_rule='bp'"):
        SALConfig(learning_rule="bp", feedback_gain=2.0)


@pytest.mark.parametrize("alignment", ["fixed", "kolen_pollack"])
def test_gain_multiplies_the_draw_and_survives_save_load(alignment, tmp_path):
    plain = SALForImageClassification(defaults_config(feedback_alignment=alignment))
    model = SALForImageClassification(defaults_config(feedback_alignment=alignment, feedback_gain=11.3))
    for scaled, reference in zip(model.feedback.matrices(), plain.feedback.matrices()):
        torch.testing.assert_close(scaled, 11.3 * reference)
    if alignment == "kolen_pollack":  # as if trained: loading must not redraw them
        with torch.no_grad():
            for matrix in model.feedback.matrices():
                matrix.add_(torch.randn_like(matrix))
    model.save_pretrained(tmp_path)
    assert {"feedback.layer_0", "feedback.layer_1"} <= set(load_file(tmp_path / "model.safetensors"))
    loaded = SALForImageClassification.from_pretrained(tmp_path)
    assert loaded.config.feedback_gain == 11.3
    for again, saved in zip(loaded.feedback.matrices(), model.feedback.matrices()):
        torch.testing.assert_close(again, saved)


def test_another_gain_at_load_warns_that_learned_matrices_keep_their_values(tmp_path, caplog):
    """The defaults learn their feedback (Kolen-Pollack): a gain passed to from_pretrained cannot rescale trained
    matrices, and says so; loaded with the saved gain, or with frozen feedback (redrawn with the new gain), it is silent."""
    SALForImageClassification(defaults_config()).save_pretrained(tmp_path / "learned")
    SALForImageClassification(defaults_config(feedback_alignment="fixed")).save_pretrained(tmp_path / "fixed")
    with caplog.at_level("WARNING"):
        SALForImageClassification.from_pretrained(tmp_path / "learned")
        SALForImageClassification.from_pretrained(tmp_path / "fixed", feedback_gain=4.0)
    assert "feedback_gain" not in caplog.text
    with caplog.at_level("WARNING"):
        loaded = SALForImageClassification.from_pretrained(tmp_path / "learned", feedback_gain=4.0)
    assert "feedback_gain=4.0 (saved: 1.0)" in caplog.text and "load as trained" in caplog.text
    assert loaded.config.feedback_gain == 4.0
    caplog.clear()
    with caplog.at_level("WARNING"):  # the seed draws new matrices too: the same warning (it was silent)
        SALForImageClassification.from_pretrained(tmp_path / "learned", feedback_seed=7)
    assert "feedback_seed=7 (saved: 1000)" in caplog.text and "load as trained" in caplog.text
    caplog.clear()
    (tmp_path / "learned" / "config.json").rename(tmp_path / "config.json")  # weights alone, the config given
    with caplog.at_level("WARNING"):
        SALForImageClassification.from_pretrained(tmp_path / "learned", config=defaults_config(feedback_gain=4.0))
    assert "feedback_gain" not in caplog.text  # nothing saved to compare with: no warning, and no error


def test_under_sgd_only_the_hidden_layers_step_scales(tmp_path):
    """The shipped defaults (learned router, areas, Kolen-Pollack feedback), one SGD step without clipping: every
    hidden-layer parameter moves `gain` times as far, the output layer and the routing projections exactly as far."""
    gain = 4.0
    _, plain = one_sgd_step(defaults_config(), tmp_path / "plain", max_grad_norm=0.0)
    _, scaled = one_sgd_step(defaults_config(feedback_gain=gain), tmp_path / "scaled", max_grad_norm=0.0)
    hidden = [n for n in plain if n.startswith("sal.layers.") and ".router." not in n]
    fixed = [n for n in plain if n.startswith("classifier.") or ".router." in n]
    assert hidden and fixed
    assert any(plain[n].abs().max() > 0 for n in hidden)  # the step moved them
    # The changes are differences of float32 weights (~0.1) that moved ~1e-4: rounding allows ~1e-7 of slack.
    for name in hidden:
        torch.testing.assert_close(scaled[name], gain * plain[name], rtol=1e-3, atol=1e-6, msg=name)
    for name in fixed:
        torch.testing.assert_close(scaled[name], plain[name], rtol=1e-3, atol=1e-6, msg=name)


def test_under_sgd_layerwise_feedback_compounds_the_gain(tmp_path):
    """Layer-wise fixed feedback carries the signal through every matrix above a layer: with two hidden layers the
    last one's step grows by `gain`, the first one's by `gain ** 2`."""
    gain, config = 3.0, {"feedback": "layerwise", "feedback_alignment": "fixed"}
    _, plain = one_sgd_step(defaults_config(**config), tmp_path / "plain", max_grad_norm=0.0)
    _, scaled = one_sgd_step(defaults_config(**config, feedback_gain=gain), tmp_path / "scaled", max_grad_norm=0.0)
    for layer, factor in ((0, gain**2), (1, gain)):
        names = [n for n in plain if n.startswith(f"sal.layers.{layer}.") and ".router." not in n]
        assert names and any(plain[n].abs().max() > 0 for n in names)
        for name in names:
            torch.testing.assert_close(scaled[name], factor * plain[name], rtol=1e-3, atol=1e-6, msg=name)


def test_under_adamw_the_gain_changes_almost_nothing(tmp_path):
    """AdamW divides a gradient's scale out: the same first step of every forward parameter, gain or not, up to its
    eps (1e-8) against gradients of ~1e-4 and up. (The Kolen-Pollack matrices themselves start `gain` times larger,
    so their decay term, and their step, differ.)"""
    _, plain = one_sgd_step(defaults_config(), tmp_path / "plain", optim="adamw_torch")
    _, scaled = one_sgd_step(defaults_config(feedback_gain=4.0), tmp_path / "scaled", optim="adamw_torch")
    hidden = [n for n in plain if n.startswith("sal.layers.") and ".router." not in n]
    assert any(plain[n].abs().max() > 0.05 for n in hidden)  # a step of about lr (0.1) per entry
    for name in [n for n in plain if not n.startswith("feedback.")]:
        torch.testing.assert_close(scaled[name], plain[name], rtol=0, atol=1e-3, msg=name)


def test_a_new_label_set_redraws_learned_feedback_with_the_gain_given_and_says_nothing_false(tmp_path, caplog):
    """`from_pretrained(num_labels=3, ignore_mismatched_sizes=True, feedback_gain=...)`: the learned matrices change
    shape, so they are drawn anew, with that gain; the warning that they "load as trained" was false there."""
    SALForImageClassification(defaults_config()).save_pretrained(tmp_path)
    with caplog.at_level("WARNING"):
        loaded = SALForImageClassification.from_pretrained(
            tmp_path, num_labels=3, ignore_mismatched_sizes=True, feedback_gain=4.0
        )
    assert "load as trained" not in caplog.text
    fresh = SALForImageClassification(defaults_config(num_labels=3, feedback_gain=4.0))
    for redrawn, drawn in zip(loaded.feedback.matrices(), fresh.feedback.matrices()):
        assert torch.equal(redrawn, drawn)


def test_a_new_label_set_with_layerwise_feedback_still_warns_for_the_matrices_that_load(tmp_path, caplog):
    """Layer-wise feedback: only the last matrix (C x d) changes shape with the label set; the others load as trained
    and ignore the gain given, which the warning must still say."""
    config = defaults_config(learning_rule="fa", hidden_sizes=[16, 16], feedback_alignment="kolen_pollack")
    SALForImageClassification(config).save_pretrained(tmp_path)
    with caplog.at_level("WARNING"):
        SALForImageClassification.from_pretrained(
            tmp_path, num_labels=3, ignore_mismatched_sizes=True, feedback_gain=4.0
        )
    assert "feedback_gain=4.0 (saved: 1.0)" in caplog.text and "load as trained" in caplog.text
