"""Backprop-free means it: no gradient crosses a layer boundary, no feedback path uses forward weights."""

import pytest
import torch
from conftest import CONFIGS, defaults_config, reachable_leaves, tiny_batch, tiny_config

import sal_hf.learning_rule as learning_rule
from sal_hf import SALForImageClassification
from sal_hf.trainer import local_learning_rule


def ids(module: torch.nn.Module) -> set[int]:
    return {id(p) for p in module.parameters()}


def own_leaves(layer: torch.nn.Module, area: torch.Tensor | None) -> set[int]:
    """ids of the parameters a layer's own term must reach: its norm, its shared path and its areas (split: the
    selected ones only; masked puts every area in the graph, with a zero gradient where unselected), not its router
    (which learns from its own loss)."""
    areas = layer.areas
    every = area is None or areas.uses_masked(area.device)
    chosen = range(areas.num_areas) if every else set(area.tolist())
    selected = {f"areas.{kind}_{k}" for k in chosen for kind in ("weight", "bias")}
    return {
        id(p) for name, p in layer.named_parameters() if name in selected or not name.startswith(("areas.", "router."))
    }


LAYER_CASES = [
    {},
    {"routing_scope": "shared"},
    {"output_areas": True},
    {"area_mode": "partition"},
    {"residual": True, "norm": "layernorm"},
]


def case(make_config, overrides: dict):
    name = "-".join(f"{key}={value}" for key, value in overrides.items()) or "as-is"
    return pytest.param(make_config, overrides, id=f"{make_config.__name__.split('_')[0]}-{name}")


@pytest.mark.parametrize("implementation", ["split", "masked"])
@pytest.mark.parametrize(
    "make_config, overrides",
    [
        *(case(tiny_config, overrides) for overrides in LAYER_CASES),
        case(tiny_config, {"dual_path": True}),
        case(tiny_config, {"residual": True, "norm": "rmsnorm", "dual_path": True, "hidden_sizes": [32, 32, 32]}),
        # The shipped defaults: dual path (but not in partition mode), identical areas, K = 16.
        *(case(defaults_config, overrides) for overrides in LAYER_CASES),
    ],
)
def test_each_layer_term_reaches_exactly_its_own_parameters(make_config, overrides, implementation):
    torch.manual_seed(0)
    model = SALForImageClassification(make_config(area_implementation=implementation, **overrides)).train()
    x, y = tiny_batch(32)
    out = model(pixel_values=x, labels=y, local=True)
    layers = list(model.sal.layers)
    for index, (layer, a, area) in enumerate(zip(layers, out.pre_activations, out.areas)):
        reached = reachable_leaves((a * torch.randn_like(a)).sum())
        expected = own_leaves(layer, area)
        assert reached <= ids(layer), f"layer {index}: its update reaches another layer"
        assert reached == expected, f"layer {index}: reaches {len(reached)} parameters, its own {len(expected)}"
    assert reachable_leaves(out.logits.sum()) == own_leaves(model.classifier, out.areas[-1])
    routers = [r for r in model.routers if r.learned]
    assert len(out.routing_losses) == len(routers) > 0
    for loss, router in zip(out.routing_losses, routers):
        assert reachable_leaves(loss) == {id(router.projection)}


def test_bp_forward_does_cross_layers():
    """The traversal above can fail: without `local`, the first layer is reachable from the logits."""
    model = SALForImageClassification(tiny_config(learning_rule="bp"))
    x, _ = tiny_batch(8)
    reached = reachable_leaves(model(pixel_values=x).logits.sum())
    assert reached & ids(model.sal.layers[0])


def first_layer_update(model, x, y, error):
    model.train().zero_grad(set_to_none=True)
    out = model(pixel_values=x, labels=y, local=True)
    rule = local_learning_rule(model.config)
    orig = learning_rule.output_error
    learning_rule.output_error = lambda logits, labels: error
    try:
        rule(
            loss=out.loss,
            logits=out.logits,
            labels=y,
            pre_activations=out.pre_activations,
            feedback=model.feedback_matrices(),  # what SALTrainer passes (sign feedback would read weights here)
            routing_losses=(),
        ).backward()
    finally:
        learning_rule.output_error = orig
    # Every first-layer parameter: the areas, and under the defaults the shared path.
    return [p.grad.clone() if p.grad is not None else None for p in model.sal.layers[0].parameters()]


@pytest.mark.parametrize("make_config", CONFIGS)
@pytest.mark.parametrize("implementation", ["split", "masked"])
@pytest.mark.parametrize("rule", ["sal", "dfa"])
def test_later_forward_weights_do_not_change_an_earlier_update(rule, implementation, make_config):
    torch.manual_seed(0)
    config = make_config(learning_rule=rule, routing_scope="shared", area_implementation=implementation)
    model = SALForImageClassification(config)
    x, y = tiny_batch(32)
    error = torch.randn(32, 5) / 32  # the same output error for both
    before = first_layer_update(model, x, y, error)
    with torch.no_grad():
        for p in [*model.sal.layers[1].parameters(), *model.classifier.parameters()]:
            p.mul_(-3.0).add_(0.1)
    after = first_layer_update(model, x, y, error)
    assert any(g is not None for g in before)
    assert (model.sal.layers[0].shared is not None) == (make_config is defaults_config)
    for g0, g1 in zip(before, after):
        assert (g0 is None and g1 is None) or torch.equal(g0, g1)


def test_with_backprop_the_same_change_does_change_the_earlier_update():
    """Contrast for the test above: BP's first-layer gradient for the same output error depends on later weights."""
    torch.manual_seed(0)
    model = SALForImageClassification(tiny_config(learning_rule="bp", num_areas=1))
    x, _ = tiny_batch(32)
    error = torch.randn(32, 5) / 32

    def bp_update():
        model.zero_grad(set_to_none=True)
        model(pixel_values=x).logits.backward(error)
        return model.sal.layers[0].areas.weight_0.grad.clone()

    before = bp_update()
    with torch.no_grad():
        model.sal.layers[1].areas.weight_0.mul_(-3.0)
    assert not torch.allclose(before, bp_update())


@pytest.mark.parametrize("make_config", CONFIGS)
@pytest.mark.parametrize("feedback_rule", ["sal", "fa"])
def test_feedback_matrices_are_not_forward_weights(feedback_rule, make_config):
    """No feedback matrix shares memory with a forward weight. They are frozen buffers with `fixed` feedback (FA),
    and their own parameters with the `sal` default's Kolen-Pollack feedback (learned from local signals only)."""
    config = make_config(learning_rule=feedback_rule)
    model = SALForImageClassification(config)
    forward = {
        p.untyped_storage().data_ptr() for name, p in model.named_parameters() if not name.startswith("feedback.")
    }
    learned = config.effective_feedback_alignment == "kolen_pollack"
    assert learned == (feedback_rule == "sal")  # the derived defaults
    for matrix in model.feedback.matrices():
        assert matrix.untyped_storage().data_ptr() not in forward
        assert matrix.requires_grad == learned
    names = {name for name, _ in model.named_parameters()}
    assert any(name.startswith("feedback.") for name in names) == learned
