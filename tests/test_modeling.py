"""Auto* resolution, save / load, outputs and input validation."""

import json

import pytest
import torch
from conftest import CONFIGS, tiny_batch, tiny_config
from transformers import AutoConfig, AutoModel, AutoModelForImageClassification
from transformers.modeling_outputs import ImageClassifierOutput

from sal_hf import SALConfig, SALForImageClassification, SALModel


def test_auto_classes_resolve(tmp_path):
    config = tiny_config()
    assert isinstance(AutoModelForImageClassification.from_config(config), SALForImageClassification)
    assert isinstance(AutoModel.from_config(config), SALModel)
    config.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "sal"
    assert isinstance(AutoConfig.from_pretrained(tmp_path), SALConfig)


@pytest.mark.parametrize("make_config", CONFIGS)
@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"learning_rule": "bp", "num_areas": 1},
        {"routing_scope": "shared", "output_areas": True},
        {"area_mode": "partition", "router": "random"},
        {"dual_path": True, "feedback": "layerwise"},
        {"residual": True, "norm": "layernorm", "feedback": "layerwise"},
    ],
)
def test_save_load_gives_identical_outputs_and_updates(overrides, make_config, tmp_path):
    from conftest import training_args

    from sal_hf import SALTrainer

    torch.manual_seed(0)
    model = SALForImageClassification(make_config(**overrides))
    x, y = tiny_batch(32)
    # Move the routing state off its initial values so the round trip has something to lose.
    model.train()
    model(pixel_values=x)
    model.update_routing_statistics()
    model.save_pretrained(tmp_path)
    again = AutoModelForImageClassification.from_pretrained(tmp_path)
    model.eval(), again.eval()
    saved, loaded = model.state_dict(), again.state_dict()
    assert saved.keys() == loaded.keys()
    for name, value in saved.items():
        assert torch.equal(value, loaded[name]), name

    def assert_same(a: torch.Tensor, b: torch.Tensor, name: str) -> None:
        # Exact: `from_pretrained` moves tensors loaded at unaligned file offsets to fresh memory (`align_tensors`).
        assert torch.equal(a, b), name

    assert_same(model(pixel_values=x).logits, again(pixel_values=x).logits, "logits")
    grads = []
    for m in (model, again):
        m.train().zero_grad(set_to_none=True)
        trainer = SALTrainer(model=m, args=training_args(tmp_path))
        trainer.compute_loss(m, {"pixel_values": x, "labels": y}).backward()
        grads.append({n: p.grad for n, p in m.named_parameters()})
    for name, g in grads[0].items():
        assert (g is None) == (grads[1][name] is None), name
        if g is not None:
            assert_same(g, grads[1][name], name)


def test_frozen_buffers_are_saved_and_survive_meta_loading(tmp_path):
    model = SALForImageClassification(tiny_config(routing_seed=5, feedback_seed=9))
    with torch.no_grad():  # values no seed would regenerate: they must come from the file
        model.feedback.layer_0.mul_(2.0)
        model.sal.layers[0].router.prototypes.mul_(-1.0)
    model.save_pretrained(tmp_path)
    from safetensors.torch import load_file

    saved = load_file(tmp_path / "model.safetensors")
    assert {"feedback.layer_0", "sal.layers.0.router.prototypes", "sal.layers.0.router.area_bias"} <= set(saved)
    again = SALForImageClassification.from_pretrained(tmp_path)
    assert torch.equal(again.feedback.layer_0, model.feedback.layer_0)
    assert torch.equal(again.sal.layers[0].router.prototypes, model.sal.layers[0].router.prototypes)
    assert again.sal.layers[0].router.pending_load.sum() == 0  # non-persistent, materialised as zeros


def test_output_is_image_classifier_output_with_loss():
    model = SALForImageClassification(tiny_config())
    x, y = tiny_batch(8)
    out = model(pixel_values=x.view(8, 4, 4), labels=y)  # any shape with input_size values is flattened
    assert isinstance(out, ImageClassifierOutput)
    assert out.logits.shape == (8, 5) and out.loss.ndim == 0
    assert model(pixel_values=x).loss is None
    assert len(out.areas) == 3 and out.areas[0].shape == (8,) and out.areas[-1] is None


def test_partition_mode_activates_one_block_per_sample():
    model = SALForImageClassification(tiny_config(area_mode="partition", hidden_sizes=[32])).eval()
    x, _ = tiny_batch(16)
    out = model(pixel_values=x, output_hidden_states=True, return_areas=True)
    hidden = out.hidden_states[1].view(16, 4, 8)  # (B, K, d/K)
    active = hidden.abs().sum(-1) > 0
    assert (active.sum(-1) <= 1).all()
    assert torch.equal(active.float().argmax(-1)[active.any(-1)], out.areas[0][active.any(-1)])


def test_expert_mode_runs_each_sample_through_its_own_area():
    model = SALForImageClassification(tiny_config(hidden_sizes=[8])).eval()
    x, _ = tiny_batch(16)
    out = model(pixel_values=x, output_hidden_states=True, return_areas=True)
    layer = model.sal.layers[0].areas
    for i in range(16):
        k = int(out.areas[0][i])
        expected = torch.relu(x[i] @ layer.weights[k].T + layer.biases[k])
        torch.testing.assert_close(out.hidden_states[1][i], expected)


@pytest.mark.parametrize(
    "pixel_values, message",
    [
        (torch.randn(4, 15), "input_size=16"),
        (torch.randn(4, 4, 5), "20 values per sample"),
        (torch.randn(16), "must be batched"),
        (torch.randn(0, 16), "empty batch"),
        (torch.randint(0, 255, (4, 16)), "floating point"),
    ],
)
def test_bad_inputs_raise_value_error(pixel_values, message):
    model = SALForImageClassification(tiny_config())
    with pytest.raises(ValueError, match=message):
        model(pixel_values=pixel_values)


@pytest.mark.parametrize(
    "labels, message",
    [
        (torch.tensor([0, 1, 5, 2]), "Label 5"),
        (torch.tensor([0, -1, 2, 2]), "Label -1"),
        (torch.tensor([0, 1]), "shape"),
    ],
)
def test_bad_labels_raise_value_error(labels, message):
    model = SALForImageClassification(tiny_config())
    with pytest.raises(ValueError, match=message):
        model(pixel_values=torch.randn(4, 16), labels=labels)


def test_bf16_model_loads_and_predicts(tmp_path):
    SALForImageClassification(tiny_config()).save_pretrained(tmp_path)
    model = SALForImageClassification.from_pretrained(tmp_path, dtype=torch.bfloat16)
    out = model(pixel_values=torch.randn(4, 16))
    assert out.logits.dtype == torch.bfloat16


def test_no_embedding_layer_is_reported():
    """Accelerate's FSDP2 preparation asks every model for its embeddings (found on an H100)."""
    model = SALForImageClassification(tiny_config())
    assert model.get_input_embeddings() is None and model.get_output_embeddings() is None
