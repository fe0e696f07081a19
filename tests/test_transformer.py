"""The SAL transformer: config, block locality, the DFA signal, bp = autograd, causality, masking, SALTrainer."""

import copy
import json

import pytest
import torch
from conftest import reachable_leaves, record_training_areas, training_args
from torch.nn import functional as F

from sal_hf import SALTrainer, SALTransformerConfig, SALTransformerForCausalLM, SALTransformerForSequenceClassification
from sal_hf.areas import SALAreaLinear
from sal_hf.block_rule import BlockLocalRule, block_local_surrogate, point_deltas
from sal_hf.trainer import local_learning_rule


TINY = {
    "vocab_size": 64,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "max_position_embeddings": 16,
    "num_areas": 4,
    "routing_dim": 8,
    "pad_token_id": 0,
    # Fixed random feedback (the transformer's only kind until 2026-11-29), pinned so that these tests keep testing
    # what they were written for; the shipped default (`identity` for `sal`) has its own cases.
    "feedback_alignment": "fixed",
}
LENGTH = 8


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny matmuls on a shared, loaded CPU: torch's thread pool costs more than it gains (a generate() call
    took 10 s with 2 threads under load, 0.15 s with one)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny(**overrides) -> SALTransformerConfig:
    return SALTransformerConfig(**{**TINY, **overrides})


def lm(seed: int = 0, **overrides) -> SALTransformerForCausalLM:
    torch.manual_seed(seed)
    return SALTransformerForCausalLM(tiny(**overrides))


def token_batch(n: int = 4, length: int = LENGTH, seed: int = 0, vocab: int = TINY["vocab_size"]) -> torch.Tensor:
    return torch.randint(1, vocab, (n, length), generator=torch.Generator().manual_seed(seed))


def ids(*modules: torch.nn.Module) -> set[int]:
    return {id(p) for module in modules for p in module.parameters()}


def surrogate(model, ids_, labels=None, **kwargs) -> torch.Tensor:
    out = model(input_ids=ids_, labels=ids_ if labels is None else labels, local=True, **kwargs)
    return local_learning_rule(model.config).surrogate(out, labels, model.feedback_matrices())


# ----------------------------------------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"learning_rule": "fa"}, "learning_rule"),
        ({"learning_rule": "hebbian"}, "learning_rule"),
        ({"feedback_points": "everywhere"}, "feedback_points"),
        ({"error_source": "logits"}, "error_source"),
        ({"num_areas": 0}, "num_areas"),
        ({"hidden_size": 30, "num_attention_heads": 4}, "hidden_size"),
        ({"intermediate_size": -1}, "intermediate_size"),
        ({"area_lr_scale": 0.0}, "area_lr_scale"),
        ({"num_areas": 1, "dual_path": True}, "dual_path"),
        ({"tie_word_embeddings": True}, "tie_word_embeddings"),
        ({"tie_word_embeddings": True, "learning_rule": "dfa"}, "tie_word_embeddings"),
        ({"hidden_act": "swish2"}, "hidden_act"),
        # The MLP's fields would be stored and ignored (PreTrainedConfig keeps unknown keywords).
        ({"feedback_gain": 11.3}, "feedback_gain"),
        ({"hidden_sizes": [64], "norm": "layernorm"}, "hidden_sizes=.*norm="),
        # A string "false" read as True; token ids outside the vocabulary were kept.
        ({"area_down_proj": "false"}, "area_down_proj='false'"),
        ({"use_cache": "no"}, "use_cache='no'"),
        ({"pad_token_id": 64}, r"pad_token_id must be a token id in \[0, vocab_size=64\)"),
        ({"pad_token_id": -1}, "pad_token_id=-1"),
        ({"eos_token_id": [1, 900]}, r"eos_token_id=\[1, 900\]"),
        # Llama-style fields for what this model does not do were kept and ignored (a ported config).
        ({"rope_scaling": {"rope_type": "linear", "factor": 4.0}}, "rope_scaling=.*not implemented"),
        ({"rope_parameters": {"rope_type": "yarn", "factor": 2.0}}, "rope_parameters=.*only the default RoPE"),
        ({"num_key_value_heads": 1}, "num_key_value_heads=1.*grouped-query"),
        ({"attention_bias": True}, "attention_bias=True"),
        ({"head_dim": 32}, "head_dim=32.*hidden_size / num_attention_heads"),
    ],
)
def test_invalid_config_raises_naming_the_field(overrides, field):
    with pytest.raises(ValueError, match=field):
        tiny(**overrides)


def test_a_transformer_setting_the_config_ignores_is_named(caplog):
    with caplog.at_level("WARNING"):
        config = tiny(feedback_decay=0.1)  # identity feedback (the default for sal): nothing learns, nothing decays
    assert "feedback_decay=0.1 has no effect" in caplog.text and config.ignored_settings()
    assert tiny(feedback_decay=0.1, feedback_alignment="kolen_pollack").ignored_settings() == []
    assert tiny().ignored_settings() == []


def test_llama_fields_that_say_what_the_model_does_are_taken(tmp_path):
    config = tiny(rope_parameters={"rope_type": "default", "rope_theta": 500.0}, head_dim=16, num_key_value_heads=2)
    assert config.rope_theta == 500.0 and config.head_dim == 16
    assert not hasattr(config, "rope_parameters") and not hasattr(config, "num_key_value_heads")
    with pytest.raises(ValueError, match="rope_theta=10.0 and rope_parameters with rope_theta=20.0"):
        tiny(rope_theta=10.0, rope_parameters={"rope_theta": 20.0})
    # The same checks for from_pretrained's overrides (head_dim had been an AttributeError, the rest unused kwargs).
    tiny().save_pretrained(tmp_path)
    assert SALTransformerConfig.from_pretrained(tmp_path, head_dim=16).head_dim == 16
    with pytest.raises(ValueError, match="num_key_value_heads=1.*grouped-query"):
        SALTransformerConfig.from_pretrained(tmp_path, num_key_value_heads=1)
    with pytest.raises(ValueError, match="head_dim=8"):
        SALTransformerConfig.from_pretrained(tmp_path, head_dim=8)


def test_tied_embeddings_work_under_bp_only():
    model = lm(learning_rule="bp", tie_word_embeddings=True)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert model.feedback is None
    assert lm().lm_head.weight is not lm().model.embed_tokens.weight


def test_derived_values_are_stored_unset_and_derived_on_read_after_overrides(tmp_path):
    config = tiny()
    # dual_path unset derives False (areas only: docs/RESULTS_TEXT.md's ablation), whatever K.
    assert (config.effective_intermediate_size, config.effective_dual_path, config.effective_area_lr_scale) == (
        128,
        False,
        0.25,
    )
    assert tiny(dual_path=True).effective_dual_path is True
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["intermediate_size"] is None and saved["dual_path"] is None and saved["area_lr_scale"] is None
    assert "area_implementation" not in saved
    for overrides in ({"num_areas": 1}, {"num_areas": 8, "hidden_size": 16}):
        again = SALTransformerConfig.from_pretrained(tmp_path, **overrides)
        fresh = tiny(**overrides)
        for name in ("effective_intermediate_size", "effective_dual_path", "effective_area_lr_scale"):
            assert getattr(again, name) == getattr(fresh, name), name
    with pytest.raises(ValueError, match="tie_word_embeddings"):
        SALTransformerForCausalLM(SALTransformerConfig.from_pretrained(tmp_path, tie_word_embeddings=True))


# --------------------------------------------------------------------------------------------------------- locality


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"num_areas": 16, "routing_dim": 32},  # the shipped K and routing space
        {"num_areas": 1},
        {"feedback_points": "micro"},
        {"area_down_proj": True},
        {"dual_path": True, "area_down_proj": True},  # the shared up- and down-projections beside the areas
        {"error_source": "vocab", "area_implementation": "masked"},
        {"feedback_alignment": "identity", "feedback_points": "micro"},
    ],
)
def test_each_feedback_point_reaches_only_its_own_block(overrides):
    model = lm(**overrides).train()
    x = token_batch()
    out = model(input_ids=x, labels=x, local=True)
    blocks = list(model.model.layers)
    micro = model.config.feedback_points == "micro"
    per_block = 2 if micro else 1
    assert len(out.feedback_outputs) == per_block * len(blocks)
    for index, point in enumerate(out.feedback_outputs):
        block = blocks[index // per_block]
        own = ids(block) | (ids(model.model.embed_tokens) if index // per_block == 0 else set())
        if micro and index % 2 == 0:  # after attention: the MLP half is not in its graph
            own -= ids(block.mlp, block.post_attention_layernorm)
        reached = reachable_leaves((point * torch.randn_like(point)).sum())
        assert reached and reached <= own, f"feedback point {index} reaches another block"
        assert not reached & ids(*(r for r in model.routers)), "a router learns from the error"
    head = ids(model.lm_head, model.model.norm)
    assert reachable_leaves(out.loss) == head | {id(out.head_input)}
    routers = [r for r in model.routers if r.learned]
    assert len(out.routing_losses) == len(routers) == (len(blocks) if model.config.num_areas > 1 else 0)
    for loss, router in zip(out.routing_losses, routers):
        assert reachable_leaves(loss) == {id(router.projection)}


def test_bp_forward_does_cross_blocks():
    """The traversal above can fail: without `local`, block 0 is reachable from the logits."""
    model = lm(learning_rule="bp")
    assert reachable_leaves(model(input_ids=token_batch()).logits.sum()) & ids(model.model.layers[0])


def first_block_update(model, x, error):
    """Block 0's gradient for a fixed error at the final hidden state."""
    model.train().zero_grad(set_to_none=True)
    out = model(input_ids=x, labels=x, local=True)
    deltas = point_deltas(error, model.feedback.matrices())
    block_local_surrogate(out.loss, out.feedback_outputs, deltas).backward()
    return {n: p.grad.clone() for n, p in model.model.layers[0].named_parameters() if p.grad is not None}


@pytest.mark.parametrize("overrides", [{}, {"feedback_points": "micro"}, {"feedback_alignment": "identity"}])
def test_later_block_weights_do_not_change_an_earlier_update(overrides):
    model = lm(**overrides)
    x = token_batch()
    error = torch.randn(4, LENGTH, TINY["hidden_size"], generator=torch.Generator().manual_seed(5)) / 32
    before = first_block_update(model, x, error)
    with torch.no_grad():
        for p in [*model.model.layers[1].parameters(), *model.lm_head.parameters(), *model.model.norm.parameters()]:
            p.mul_(-3.0).add_(0.1)
    after = first_block_update(model, x, error)
    assert before and before.keys() == after.keys()
    assert all(torch.equal(before[n], after[n]) for n in before)


def test_with_backprop_the_same_change_does_change_the_earlier_update():
    model = lm(learning_rule="bp", num_areas=1)
    x = token_batch()

    def update():
        model.zero_grad(set_to_none=True)
        model(input_ids=x, labels=x).loss.backward()
        return model.model.layers[0].mlp.down.weight.grad.clone()

    before = update()
    with torch.no_grad():
        model.model.layers[1].mlp.down.weight.mul_(-3.0)
    assert not torch.allclose(before, update())


def test_feedback_matrices_are_fixed_buffers_not_forward_weights():
    model = lm()
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    names = dict(model.named_buffers())
    assert [n for n in names if n.startswith("feedback")] == ["feedback.layer_0", "feedback.layer_1"]
    for matrix in model.feedback.matrices():
        assert matrix.shape == (32, 32) and not matrix.requires_grad
        assert matrix.untyped_storage().data_ptr() not in params
    vocab = lm(error_source="vocab", feedback_points="micro")
    assert [m.shape for m in vocab.feedback.matrices()] == [(64, 32)] * 4
    again = lm(seed=7)  # the feedback comes from `feedback_seed`, not from the global RNG
    assert all(torch.equal(a, b) for a, b in zip(model.feedback.matrices(), again.feedback.matrices()))


# ------------------------------------------------------------------------------------------------ the DFA signal


def test_hand_checked_dfa_signal_on_a_tiny_example():
    """K = 1, no shared path: the error at the final hidden state is written out by hand (cross-entropy through
    the LM head and the RMSNorm), and each block's down-projection gradient is ``sum_t (e_t B_l)^T f(a_t)``."""
    model = lm(num_areas=1)
    x = token_batch(2)
    labels = x.clone()
    labels[0, 5:] = -100
    inner = {}
    for index, block in enumerate(model.model.layers):
        block.mlp.down.register_forward_hook(lambda m, args, out, i=index: inner.__setitem__(i, args[0].detach()))
    model.zero_grad(set_to_none=True)
    out = model(input_ids=x, labels=labels, local=True)
    BlockLocalRule("sal").surrogate(out, labels, model.feedback.matrices()).backward()

    # e_t by hand: logits z_t = W (w * h_t / rms(h_t)), loss = mean over counted t of CE(z_t, y_{t+1}).
    h = out.head_input.detach()  # (B, T, d)
    target = F.pad(labels[:, 1:], (0, 1), value=-100)  # (B, T): the token position t predicts
    counted = target != -100
    probs = torch.softmax(out.logits.detach().float(), dim=-1)
    error_z = (probs - F.one_hot(target.clamp(min=0), 64)) * counted.unsqueeze(-1) / counted.sum()  # (B, T, V)
    g = (error_z @ model.lm_head.weight.detach()) * model.model.norm.weight.detach()  # dL/d(h / rms), (B, T, d)
    rms = (h.square().mean(-1, keepdim=True) + model.config.rms_norm_eps).sqrt()
    error = g / rms - h * (g * h).mean(-1, keepdim=True) / rms**3  # (B, T, d)
    assert torch.allclose(BlockLocalRule("sal").error(model(input_ids=x, labels=labels, local=True)), error, atol=1e-6)
    assert error[~counted].abs().max() == 0

    for index, (block, matrix) in enumerate(zip(model.model.layers, model.feedback.matrices())):
        delta = (error @ matrix).reshape(-1, 32)  # (N, d)
        expected = delta.T @ inner[index].reshape(-1, inner[index].shape[-1])  # (d, inner)
        assert torch.allclose(block.mlp.down.weight.grad, expected, atol=1e-6), index
    # The head learns from the true error.
    assert torch.allclose(
        model.lm_head.weight.grad, error_z.reshape(-1, 64).T @ model.model.norm(h).reshape(-1, 32).detach(), atol=1e-6
    )


def test_vocab_error_source_projects_the_logit_error():
    model = lm(num_areas=1, error_source="vocab")
    x = token_batch(2)
    out = model(input_ids=x, labels=x, local=True)
    rule = BlockLocalRule("sal", error_source="vocab")
    error = rule.error(out)
    target = x[:, 1:]
    probs = torch.softmax(out.logits.detach().float(), dim=-1)
    expected = torch.zeros_like(probs)
    expected[:, :-1] = (probs[:, :-1] - F.one_hot(target, 64)) / target.numel()
    assert torch.allclose(error, expected, atol=1e-7)


def test_surrogate_value_is_the_lm_loss_and_head_gradient_is_true():
    model = lm()
    x = token_batch()
    reference = copy.deepcopy(model)
    loss = surrogate(model, x)
    ref_loss = reference(input_ids=x, labels=x).loss
    assert torch.allclose(loss, ref_loss)
    loss.backward()
    ref_loss.backward()
    for name in ("lm_head.weight", "model.norm.weight"):
        assert torch.allclose(model.get_parameter(name).grad, reference.get_parameter(name).grad, atol=1e-6), name


# ------------------------------------------------------------------------------------------------- bp = autograd


def test_bp_through_sal_trainer_equals_plain_autograd(tmp_path):
    """`bp` is ordinary backpropagation of the same architecture: two SALTrainer steps equal two hand-written
    autograd + SGD steps (one batch holds the whole data, so shuffling only reorders rows)."""
    model = lm(learning_rule="bp", area_lr_scale=1.0)
    reference = copy.deepcopy(model).train()
    x = token_batch(4)
    data = [{"input_ids": row, "labels": row} for row in x]
    args = training_args(tmp_path, per_device_train_batch_size=4, max_steps=2, optim="sgd", learning_rate=0.5)
    SALTrainer(model=model, args=args, train_dataset=data).train()
    optimizer = torch.optim.SGD(reference.parameters(), lr=0.5)
    for _ in range(2):
        optimizer.zero_grad()
        reference(input_ids=x, labels=x).loss.backward()
        torch.nn.utils.clip_grad_norm_(reference.parameters(), args.max_grad_norm)
        for group in optimizer.param_groups:  # Trainer's default linear schedule: 0.5, then 0.25
            group["lr"] = 0.5 * (1 - _ / 2)
        optimizer.step()
        reference.update_routing_statistics()
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        assert torch.allclose(p, q, atol=1e-6), name


# ------------------------------------------------------------------------------------------------------- causality


@pytest.mark.parametrize("local", [False, True])
def test_a_later_token_changes_neither_earlier_logits_nor_earlier_routing(local):
    model = lm().eval()
    x = token_batch(2)
    y = x.clone()
    y[:, 5] = (y[:, 5] + 7) % 63 + 1
    with torch.no_grad():
        a = model(input_ids=x, local=local, return_areas=True)
        b = model(input_ids=y, local=local, return_areas=True)
    assert torch.allclose(a.logits[:, :5], b.logits[:, :5], atol=1e-6)
    assert not torch.equal(a.logits[:, 5:], b.logits[:, 5:])
    for area_a, area_b in zip(a.areas, b.areas):
        assert torch.equal(area_a[:, :5], area_b[:, :5])


# --------------------------------------------------------------------------------------------- -100 and padding


def test_ignored_and_padded_positions_contribute_nothing():
    model = lm().train()
    x = token_batch(2)
    mask = torch.ones_like(x)
    mask[1, 5:] = 0
    labels = x.masked_fill(mask == 0, -100)
    labels[0, 2] = -100

    def grads(tokens):
        model.zero_grad(set_to_none=True)
        for router in model.routers:
            router.reset_parameters()
        surrogate(model, tokens, labels=labels, attention_mask=mask).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    other = x.clone()
    other[1, 5:] = 1  # different padding content
    before, after = grads(x), grads(other)
    assert before.keys() == after.keys()
    assert all(torch.allclose(before[n], after[n], atol=1e-6) for n in before)
    out = model(input_ids=x, labels=labels, attention_mask=mask, local=True)
    error = BlockLocalRule("sal").error(out)
    assert error[1, 4:].abs().max() == 0  # position 4 predicts the padded position 5
    assert error[0, 1].abs().max() == 0  # predicts the ignored label at position 2
    assert error[0, 3].abs().max() > 0


# ----------------------------------------------------------------------------------------------------- SALTrainer


@pytest.mark.parametrize("implementation", ["split", "masked"])
def test_unselected_areas_stay_bit_identical_under_adamw(implementation, tmp_path):
    model = lm(num_areas=16, area_down_proj=True, area_implementation=implementation)
    before = copy.deepcopy(model.state_dict())
    layers = {n: m for n, m in model.named_modules() if isinstance(m, SALAreaLinear)}
    seen = record_training_areas(layers)
    x = token_batch(1, length=6)  # 6 tokens cannot reach 16 areas
    args = training_args(tmp_path, per_device_train_batch_size=1, max_steps=1, weight_decay=0.1, learning_rate=1e-2)
    SALTrainer(model=model, args=args, train_dataset=[{"input_ids": x[0], "labels": x[0]}]).train()
    for name in layers:
        selected = set().union(*seen[name])
        assert 0 < len(selected) < 16
        for k in range(16):
            for part in ("weight", "bias"):
                key = f"{name}.{part}_{k}"
                unchanged = torch.equal(model.state_dict()[key], before[key])
                assert unchanged == (k not in selected), (key, k in selected)


@pytest.mark.parametrize("rule, areas", [("sal", 4), ("dfa", 1), ("bp", 4)])
def test_sal_trainer_lowers_the_loss_and_moves_routing(rule, areas, tmp_path):
    model = lm(learning_rule=rule, num_areas=areas)
    before = copy.deepcopy(model.state_dict())
    x = token_batch(4, seed=1).repeat(4, 1)  # a few sequences seen again and again: learnable in a few steps
    data = [{"input_ids": row, "labels": row} for row in x]
    args = training_args(tmp_path, per_device_train_batch_size=8, num_train_epochs=8, learning_rate=1e-2)
    trainer = SALTrainer(model=model, args=args, train_dataset=data, eval_dataset=data[:4])
    trainer.train()
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    assert losses[-1] < 0.9 * losses[0]
    # Evaluation runs the ordinary forward: its loss is the LM loss, whatever the rule.
    metrics = trainer.evaluate()
    model.eval()
    with torch.no_grad():
        expected = model(input_ids=x[:4], labels=x[:4]).loss
    assert abs(metrics["eval_loss"] - float(expected)) < 1e-4
    # Under `bp` the routers' projections learn nothing (their objective is a local rule's term), as in the MLP.
    unchanged = [n for n, p in model.named_parameters() if torch.equal(p.detach(), before[n])]
    assert unchanged == ([n for n, _ in model.named_parameters() if "router" in n] if rule == "bp" else []), unchanged
    assert all(torch.equal(b, before[n]) for n, b in model.named_buffers() if n.startswith("feedback"))
    if areas > 1:
        assert all(int(r.num_updates) == trainer.state.global_step for r in model.routers)
        assert any(key.startswith("area/router_") for log in trainer.state.log_history for key in log)


def test_sequence_classification_trains_locally_from_the_last_real_token(tmp_path):
    torch.manual_seed(0)
    model = SALTransformerForSequenceClassification(tiny(num_labels=3, num_areas=1))
    x = token_batch(12, seed=2)
    mask = torch.ones_like(x)
    mask[::2, 6:] = 0
    x = x.masked_fill(mask == 0, 0)
    labels = torch.arange(12) % 3
    out = model(input_ids=x, attention_mask=mask, labels=labels, local=True)
    assert out.pooled_positions.tolist() == [5, 7] * 6
    error = BlockLocalRule("sal").error(out)
    keep = torch.zeros_like(mask, dtype=torch.bool)
    keep[torch.arange(12), out.pooled_positions] = True
    assert error[~keep].abs().max() == 0 and error[keep].abs().max() > 0

    vocab = SALTransformerForSequenceClassification(tiny(num_labels=3, error_source="vocab"))
    out = vocab(input_ids=x, attention_mask=mask, labels=labels, local=True)
    assert [m.shape for m in vocab.feedback_matrices()] == [(3, 32)] * 2
    local_learning_rule(vocab.config).surrogate(out, labels, vocab.feedback_matrices()).backward()
    assert vocab.model.embed_tokens.weight.grad.abs().sum() > 0

    before = copy.deepcopy(model.state_dict())
    data = [{"input_ids": a, "attention_mask": m, "labels": int(y)} for a, m, y in zip(x, mask, labels)]
    args = training_args(tmp_path, per_device_train_batch_size=6, num_train_epochs=4, learning_rate=1e-2)
    trainer = SALTrainer(model=model, args=args, train_dataset=data)
    trainer.train()
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    assert losses[-1] < losses[0]
    assert not [n for n, p in model.named_parameters() if torch.equal(p.detach(), before[n])]


def test_32_blocks_train_without_nan(tmp_path):
    model = lm(num_hidden_layers=32, hidden_size=8, num_areas=2, intermediate_size=8, routing_dim=4)
    x = token_batch(4, seed=3)
    data = [{"input_ids": row, "labels": row} for row in x]
    args = training_args(tmp_path, per_device_train_batch_size=2, max_steps=4, learning_rate=1e-2)
    trainer = SALTrainer(model=model, args=args, train_dataset=data)
    trainer.train()
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    assert len(losses) == 4 and all(torch.isfinite(torch.tensor(losses)))
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_eager_and_sdpa_attention_agree_with_padding():
    x = token_batch(2)
    mask = torch.ones_like(x)
    mask[0, :3] = 0  # left padding
    outputs = []
    for implementation in ("sdpa", "eager"):
        torch.manual_seed(0)
        model = SALTransformerForCausalLM._from_config(tiny(), attn_implementation=implementation).eval()
        assert model.config._attn_implementation == implementation
        with torch.no_grad():
            outputs.append(model(input_ids=x, attention_mask=mask).logits)
    assert torch.allclose(outputs[0][:, 3:], outputs[1][:, 3:], atol=1e-5)
    assert torch.allclose(outputs[0][1], outputs[1][1], atol=1e-5)


@pytest.mark.parametrize("prompt", [0, 5])
def test_in_place_area_sgd_equals_the_optimizer_path(prompt, tmp_path):
    """With weight decay, and with a prompt labelled -100 (5 of 8 tokens): areas that only error-free tokens select
    take no step on either path (the optimizer path drops their zero gradient; in place, their decay is skipped)."""
    x = token_batch(4, seed=8)
    data = [{"input_ids": row, "labels": torch.where(torch.arange(LENGTH) < prompt, -100, row)} for row in x]
    models = []
    for in_place in (False, True):
        model = lm(num_areas=8, area_down_proj=True)
        args = training_args(
            tmp_path, per_device_train_batch_size=4, max_steps=2, optim="sgd", max_grad_norm=0.0, weight_decay=0.1
        )
        SALTrainer(model=model, args=args, train_dataset=data, in_place_area_update=in_place).train()
        models.append(model)
    for (name, p), q in zip(models[0].named_parameters(), models[1].parameters()):
        assert torch.allclose(p, q, atol=1e-6), name


def test_alignment_angles_are_zero_for_the_last_block_with_identity_feedback():
    """With the hidden error and B = I, the last block's local update is its true gradient (angle 0); earlier
    blocks' updates are not (their signal skips the later blocks)."""
    from sal_hf.block_rule import block_alignment_angles

    model = lm(num_areas=1).eval()
    x = token_batch()
    identity = [torch.eye(32)] * 2
    angles = block_alignment_angles(model, BlockLocalRule("dfa"), model.model.layers, identity, input_ids=x, labels=x)
    assert angles[1] < 1e-2 and angles[0] > 1.0


def test_routers_gather_statistics_on_training_forwards_only():
    model = lm()
    x = token_batch(2)
    with torch.no_grad():
        model.train()(input_ids=x)  # a no_grad probe in training mode
    model.eval()(input_ids=x)
    assert all(float(r.pending_load.sum()) == 0 for r in model.routers)
    model.train()(input_ids=x, labels=x, local=True)
    assert all(float(r.pending_load.sum()) == x.numel() for r in model.routers)
    health = model.area_health()
    assert set(health) >= {f"area/router_{i}/dead" for i in range(2)}


def test_padding_moves_no_routing_statistic():
    """Padded positions still get an area, but count in no running mean, balancing bias or area health."""
    model = lm(num_areas=4).train()
    ids = token_batch(3)
    mask = torch.ones_like(ids)
    mask[0, :5] = 0  # left padding of the first sequence
    model(input_ids=ids, attention_mask=mask)
    for router in model.routers:
        assert float(router.pending_load.sum()) == float(mask.sum())
        assert float(router.logged_load.sum()) == float(mask.sum())
