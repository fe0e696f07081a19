"""The 1e9-parameter configuration, counted on the meta device (nothing is allocated)."""

import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny_config

from sal_hf import SALConfig, SALForImageClassification


sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from scale import SCALE_CONFIG, expected_parameters  # noqa: E402


def meta_model(config: SALConfig) -> SALForImageClassification:
    with torch.device("meta"):
        return SALForImageClassification(config)


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"num_areas": 1},
        {"area_mode": "partition"},
        {"dual_path": True, "output_areas": True},
        {"routing_scope": "shared", "router": "random"},
        {"residual": True, "norm": "layernorm"},
        {"norm": "rmsnorm", "output_areas": True, "routing_scope": "shared"},
    ],
)
def test_closed_form_parameter_count_matches_the_model(overrides):
    config = tiny_config(**overrides)
    total, active = expected_parameters(config)
    model = meta_model(config)
    assert model.num_parameters() == total
    # The learned feedback matrices (SAL's default Kolen-Pollack) are parameters the forward never reads.
    feedback = sum(p.numel() for name, p in model.named_parameters() if name.startswith("feedback."))
    assert (feedback > 0) == (config.effective_feedback_alignment == "kolen_pollack")
    # One area per layer: with K areas everywhere the rest is shared, so active < total exactly when K > 1.
    assert (active < total - feedback) == (config.num_areas > 1)


def test_scale_config_has_a_billion_parameters_and_a_small_active_set():
    config = SALConfig(**SCALE_CONFIG)
    model = meta_model(config)
    assert all(p.is_meta for p in model.parameters())  # nothing was allocated
    total, active = expected_parameters(config)
    assert model.num_parameters() == total >= 1_000_000_000
    dense = expected_parameters(SALConfig(**{**SCALE_CONFIG, "num_areas": 1}))[0]
    assert active < 1.05 * dense and active < total / 500  # per-sample compute of the K=1 model
