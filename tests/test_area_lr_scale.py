"""config.area_lr_scale: SALTrainer gives the area parameters (K > 1) their own scaled learning rate; the
defaults that depend on K."""

import pytest
import torch
from conftest import one_sgd_step, tiny_config


def test_area_parameters_move_scale_times_as_far_under_sgd(tmp_path):
    _, base = one_sgd_step(tiny_config(area_lr_scale=1.0, dual_path=True), tmp_path)
    trainer, scaled = one_sgd_step(tiny_config(area_lr_scale=0.25, dual_path=True), tmp_path)
    area_names = [n for n in base if ".areas." in n and not n.startswith("classifier")]
    other_names = [n for n in base if n not in area_names]
    assert area_names and any(".shared." in n for n in other_names)
    moved = [n for n in area_names if base[n].abs().sum() > 0]
    assert moved, "no area was updated"
    for name in moved:
        torch.testing.assert_close(scaled[name], 0.25 * base[name], rtol=1e-4, atol=1e-7)
    for name in other_names:  # shared path, routers and the K = 1 output layer keep the base lr
        torch.testing.assert_close(scaled[name], base[name], rtol=1e-4, atol=1e-7)
    lrs = sorted({group["lr"] for group in trainer.optimizer.param_groups})
    assert lrs == pytest.approx([0.025, 0.1])


def test_area_lr_scale_must_be_positive():
    with pytest.raises(ValueError, match="area_lr_scale"):
        tiny_config(area_lr_scale=0.0)
    with pytest.raises(ValueError, match="area_lr_scale"):
        tiny_config(area_lr_scale="1/K")


def test_defaults_depend_on_the_number_of_areas():
    from sal_hf import SALConfig

    sal = SALConfig(num_labels=10, num_areas=16)
    assert sal.dual_path is None and sal.area_lr_scale is None  # stored as given: derived on read
    assert sal.effective_dual_path is True and sal.area_init == "identical" and sal.effective_area_lr_scale == 1 / 16
    dense = SALConfig(num_labels=10, num_areas=1, learning_rule="dfa")  # dual_path needs areas: off for K = 1
    assert dense.effective_dual_path is False and dense.effective_area_lr_scale == 1.0
    explicit = SALConfig(num_labels=10, num_areas=16, dual_path=False, area_lr_scale=1.0)
    assert explicit.effective_dual_path is False and explicit.effective_area_lr_scale == 1.0
    again = SALConfig.from_dict(sal.to_dict())
    assert again.effective_dual_path is True and again.effective_area_lr_scale == 1 / 16
