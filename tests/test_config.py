"""SALConfig: derived defaults and validation messages."""

import pytest
from conftest import tiny_config

from sal_hf import SALConfig


def test_defaults_and_derived_feedback():
    config = SALConfig()
    assert config.model_type == "sal"
    assert config.hidden_sizes == [256] and config.num_areas == 16 and config.learning_rule == "sal"
    assert config.feedback is None and config.feedback_mode == "direct"
    assert SALConfig(learning_rule="fa").feedback_mode == "layerwise"
    assert SALConfig(learning_rule="bp").feedback_mode is None
    assert SALConfig(learning_rule="sal", feedback="layerwise").feedback_mode == "layerwise"
    assert SALConfig(learning_rule="dfa", feedback="direct").feedback_mode == "direct"


def test_round_trip_through_dict():
    config = tiny_config(area_mode="partition", routing_scope="shared", feedback="layerwise")
    again = SALConfig.from_dict(config.to_dict())
    assert again.to_dict() == config.to_dict()


INVALID = [
    ({"num_areas": 0}, "num_areas"),
    ({"num_areas": "16"}, "num_areas='16'"),
    ({"input_size": -1}, "input_size"),
    ({"hidden_sizes": []}, "hidden_sizes"),
    ({"hidden_sizes": [32, 0]}, "hidden_sizes"),
    ({"routing_dim": 0}, "routing_dim"),
    ({"learning_rule": "backprop"}, "learning_rule='backprop'"),
    ({"hidden_act": "swish"}, "hidden_act='swish'"),
    ({"area_mode": "blocks"}, "area_mode='blocks'"),
    ({"area_init": "zeros"}, "area_init='zeros'"),
    ({"routing_scope": "global"}, "routing_scope='global'"),
    ({"router": "soft"}, "router='soft'"),
    ({"learning_rule": "dfa", "feedback": "layerwise"}, "implies feedback='direct'"),
    ({"learning_rule": "bp", "feedback": "direct"}, "learning_rule='bp' implies"),
    ({"feedback": "backward"}, "feedback='backward'"),
    ({"learning_rule": "dfa", "area_update_norm": "area"}, "area_update_norm='area'"),
    ({"area_update_norm": "sample"}, "area_update_norm='sample'"),
    ({"area_mode": "partition", "hidden_sizes": [30]}, "not divisible"),
    ({"area_mode": "partition", "output_areas": True}, "output_areas=False"),
    ({"area_mode": "partition", "hidden_act": "tanh"}, "partition.*hidden_act=.tanh.*tanh.s f.0. or f..0. is not 0"),
    ({"num_areas": 1, "dual_path": True}, "dual_path=True needs areas"),
    ({"routing_balance_rate": -0.1}, "routing_balance_rate"),
    ({"routing_center_momentum": 0.0}, "routing_center_momentum"),
    ({"num_labels": 1}, "num_labels"),
    ({"problem_type": "regression"}, "problem_type='regression'"),
    ({"norm": "batchnorm"}, "norm='batchnorm'"),
    ({"residual": 1}, "residual=1"),
    ({"residual_scale": 0.0}, "residual_scale=0.0"),
    ({"residual": True, "hidden_sizes": [32, 16]}, "hidden_sizes=[32, 16]"),
    ({"area_implementation": "dense"}, "area_implementation='dense'"),
    # A string "false" read as True; an int failed on iteration; RGB on 784 values failed only in the processor.
    ({"output_areas": "false"}, "output_areas='false'"),
    ({"hidden_sizes": 256}, "hidden_sizes=256 (one hidden layer: hidden_sizes=[256]"),
    ({"num_channels": 3}, "input_size=16 does not split into num_channels=3"),
]


@pytest.mark.parametrize("overrides, message", INVALID)
def test_invalid_settings_raise_value_error_naming_the_field(overrides, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("[", r"\[")):
        tiny_config(**overrides)


def test_partition_with_a_smooth_activation_is_refused_for_the_local_rules_only():
    """Backprop reads no error at the inactive blocks' constant pre-activation: the refusal is the local rules'."""
    assert tiny_config(area_mode="partition", hidden_act="tanh", learning_rule="bp").hidden_act == "tanh"
    with pytest.raises(ValueError, match="partition under a local rule"):
        tiny_config(area_mode="partition", hidden_act="gelu", learning_rule="dfa")
