"""Backprop-free means it: no gradient crosses a layer boundary, no feedback path uses forward weights."""

import pytest
import torch
from conftest import tiny_batch, tiny_config

import sal_hf.learning_rule as learning_rule
from sal_hf import SALForImageClassification


def reachable_leaves(tensor: torch.Tensor) -> set[int]:
    """ids of the leaf tensors (parameters) that a backward from `tensor` would write `.grad` to."""
    seen, leaves, stack = set(), set(), [tensor.grad_fn]
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        if hasattr(fn, "variable"):
            leaves.add(id(fn.variable))
        stack.extend(next_fn for next_fn, _ in fn.next_functions)
    return leaves


def ids(module: torch.nn.Module) -> set[int]:
    return {id(p) for p in module.parameters()}


@pytest.mark.parametrize("implementation", ["split", "masked"])
@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"routing_scope": "shared"},
        {"dual_path": True},
        {"output_areas": True},
        {"area_mode": "partition"},
        {"residual": True, "norm": "layernorm"},
        {"residual": True, "norm": "rmsnorm", "dual_path": True, "hidden_sizes": [32, 32, 32]},
    ],
)
def test_each_layer_term_reaches_only_its_own_parameters(overrides, implementation):
    torch.manual_seed(0)
    model = SALForImageClassification(tiny_config(area_implementation=implementation, **overrides)).train()
    x, y = tiny_batch(32)
    out = model(pixel_values=x, labels=y, local=True)
    layers = list(model.sal.layers)
    for layer, a in zip(layers, out.pre_activations):
        reached = reachable_leaves((a * torch.randn_like(a)).sum())
        assert reached and reached <= ids(layer), "a hidden layer's update reaches another layer"
    assert reachable_leaves(out.logits.sum()) <= ids(model.classifier)
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
    rule = learning_rule.LocalLearningRule(
        model.config.learning_rule,
        feedback_mode=model.config.feedback_mode,
        activation=torch.relu,
        num_areas=model.config.num_areas,
    )
    orig = learning_rule.output_error
    learning_rule.output_error = lambda logits, labels: error
    try:
        rule(
            loss=out.loss,
            logits=out.logits,
            labels=y,
            pre_activations=out.pre_activations,
            areas=out.areas,
            feedback=model.feedback.matrices(),
            routing_losses=(),
        ).backward()
    finally:
        learning_rule.output_error = orig
    return [p.grad.clone() if p.grad is not None else None for p in model.sal.layers[0].areas.parameters()]


@pytest.mark.parametrize("implementation", ["split", "masked"])
@pytest.mark.parametrize("rule", ["sal", "dfa"])
def test_later_forward_weights_do_not_change_an_earlier_update(rule, implementation):
    torch.manual_seed(0)
    config = tiny_config(learning_rule=rule, routing_scope="shared", area_implementation=implementation)
    model = SALForImageClassification(config)
    x, y = tiny_batch(32)
    error = torch.randn(32, 5) / 32  # the same output error for both
    before = first_layer_update(model, x, y, error)
    with torch.no_grad():
        for p in [*model.sal.layers[1].parameters(), *model.classifier.parameters()]:
            p.mul_(-3.0).add_(0.1)
    after = first_layer_update(model, x, y, error)
    assert any(g is not None for g in before)
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


@pytest.mark.parametrize("feedback_rule", ["sal", "fa"])
def test_feedback_matrices_are_not_forward_weights(feedback_rule):
    model = SALForImageClassification(tiny_config(learning_rule=feedback_rule))
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    for matrix in model.feedback.matrices():
        assert matrix.untyped_storage().data_ptr() not in params
        assert not matrix.requires_grad
    names = {name for name, _ in model.named_parameters()}
    assert not any(name.startswith("feedback") for name in names)
