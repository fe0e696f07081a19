"""scripts/scale_text.py: the >= 1e9-parameter SAL transformer (its configuration, and the script end to end)."""

import sys
from pathlib import Path

import pytest
import torch
from test_transformer import one_thread  # noqa: F401 (autouse fixture)

from sal_hf import SALTransformerConfig, SALTransformerForCausalLM


sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from scale_text import SCALE_CONFIG, active_parameters_per_token, run  # noqa: E402


def test_scale_config_has_a_billion_parameters_and_a_small_active_set():
    config = SALTransformerConfig(**SCALE_CONFIG)
    with torch.device("meta"):  # shapes only: no 4 GB allocation
        model = SALTransformerForCausalLM(config)
    total = model.num_parameters()
    assert total >= 1e9
    active = active_parameters_per_token(model)
    assert active < 0.03 * total
    d, inner, k = config.hidden_size, config.effective_intermediate_size, config.num_areas
    areas = config.num_hidden_layers * k * (2 * d * inner + inner + d)
    assert (
        total - areas == active - config.num_hidden_layers * (2 * d * inner + inner + d) + (config.vocab_size - 1) * d
    )


def test_the_script_trains_saves_and_reloads_a_tiny_model():
    report = run(tiny=True, steps=3, batch_size=2, length=8)
    assert report["steps"] == 3 and report["finite"]
    assert report["reload_identical_logits"] and report["reload_state_identical"] and report["reload_matches"]


@pytest.mark.slow
def test_a_billion_parameters_train_20_steps_save_and_reload_on_the_cpu():
    report = run(steps=20)
    assert report["parameters"] >= 1e9 and report["steps"] == 20 and report["finite"]
    assert report["reload_matches"] and report["reload_state_identical"]
