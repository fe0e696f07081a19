"""Learned (Kolen-Pollack) and identity feedback for the SAL transformer (`SALTransformerConfig.feedback_alignment`).

Early validation, the hand-computed update of every ``B_l``, locality (no forward weight read, nothing crosses a
block), training through SALTrainer and checkpoints."""

import json

import pytest
import torch
from conftest import reachable_leaves, training_args
from safetensors import safe_open
from test_transformer import TINY, one_thread, token_batch  # noqa: F401 (one_thread: autouse fixture)

from sal_hf import SALTrainer, SALTransformerConfig, SALTransformerForCausalLM, SALTransformerForSequenceClassification
from sal_hf.block_rule import BlockLocalRule, kolen_pollack_terms
from sal_hf.trainer import local_learning_rule


KP = {"feedback_alignment": "kolen_pollack"}


def lm(base=None, seed: int = 0, **overrides) -> SALTransformerForCausalLM:
    torch.manual_seed(seed)
    return SALTransformerForCausalLM(SALTransformerConfig(**{**(TINY if base is None else base), **overrides}))


def tokens(n: int = 3, length: int = 8, seed: int = 0, vocab: int = TINY["vocab_size"]) -> torch.Tensor:
    return token_batch(n, length, seed, vocab)


def local_grads(model, inputs: dict, error: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Every parameter's gradient after one local update as SALTrainer computes it; with `error`, the rule's error
    is replaced by that constant (so only what the rule itself reads can change the result)."""
    model.train().zero_grad(set_to_none=True)
    for router in model.routers:
        router.reset_parameters()
    rule = local_learning_rule(model.config)
    if error is not None:
        rule.error = lambda outputs: error
    out = model(**inputs, local=True)
    rule.surrogate(out, inputs["labels"], model.feedback_matrices()).backward()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


# ----------------------------------------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (
            {"feedback_alignment": "kp"},
            r"feedback_alignment must be one of .*got feedback_alignment='kp'.*Use 'identity', 'fixed'",
        ),
        ({"feedback_alignment": "sign"}, r"feedback_alignment='sign'.*layer-wise feedback.*direct"),
        ({**KP, "learning_rule": "bp"}, r"feedback_alignment='kolen_pollack'.*learning_rule='bp'.*'fixed'"),
        ({**KP, "feedback_decay": -1.0}, r"feedback_decay must be a finite number >= 0; got feedback_decay=-1.0"),
        ({**KP, "feedback_decay": True}, r"feedback_decay"),
        (
            {"feedback_alignment": "identity", "error_source": "vocab"},
            r"feedback_alignment='identity'.*got error_source='vocab'.*Use error_source='hidden'",
        ),
        ({"feedback_alignment": "identity", "learning_rule": "bp"}, r"feedback_alignment='identity'.*'bp'"),
    ],
)
def test_invalid_feedback_settings_fail_early_naming_field_value_and_fix(overrides, match):
    with pytest.raises(ValueError, match=match):
        SALTransformerConfig(**{**TINY, **overrides})


@pytest.mark.parametrize(
    ("fields", "derived"),
    [
        ({}, "identity"),  # what users get: `sal` with the error at the final hidden state
        ({"learning_rule": "dfa"}, "fixed"),  # DFA stays the published algorithm
        ({"error_source": "vocab"}, "fixed"),  # a vocabulary error has another size than the blocks
        ({"learning_rule": "bp"}, "fixed"),
        ({"feedback_alignment": "fixed"}, "fixed"),  # SAL's transformer as published: one flag
    ],
)
def test_the_feedback_alignment_default_is_derived_and_stored_unset(fields, derived, tmp_path):
    config = SALTransformerConfig(**{**TINY, "feedback_alignment": None, **fields})
    assert config.effective_feedback_alignment == derived
    model = SALTransformerForCausalLM(config)
    if derived == "identity":
        assert all(torch.equal(m, torch.eye(TINY["hidden_size"])) for m in model.feedback_matrices())
    config.save_pretrained(tmp_path)
    assert SALTransformerConfig.from_pretrained(tmp_path).feedback_alignment == fields.get("feedback_alignment")
    # A config.json written before the field existed (fixed feedback was the only kind) loads as fixed.
    saved = json.loads((tmp_path / "config.json").read_text())
    del saved["feedback_alignment"]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    assert SALTransformerConfig.from_pretrained(tmp_path).effective_feedback_alignment == "fixed"


def test_kolen_pollack_starts_from_the_fixed_draw(tmp_path):
    assert SALTransformerConfig().feedback_decay == 0.0
    fixed, learned = lm(), lm(**KP, feedback_decay=0.01)
    assert not [n for n, _ in fixed.named_parameters() if n.startswith("feedback")]
    names = [n for n, _ in learned.named_parameters() if n.startswith("feedback")]
    assert names == ["feedback.layer_0", "feedback.layer_1"]
    assert not [n for n, _ in learned.named_buffers() if n.startswith("feedback")]
    for a, b in zip(fixed.feedback_matrices(), learned.feedback_matrices()):
        assert torch.equal(a, b) and b.requires_grad and not a.requires_grad
    learned.config.save_pretrained(tmp_path)
    again = SALTransformerConfig.from_pretrained(tmp_path)
    assert (again.feedback_alignment, again.feedback_decay) == ("kolen_pollack", 0.01)


def test_kolen_pollack_refuses_frozen_matrices():
    model = lm()  # fixed: buffers
    x = tokens()
    out = model(input_ids=x, labels=x, local=True)
    rule = BlockLocalRule("sal", feedback_alignment="kolen_pollack")
    with pytest.raises(ValueError, match="learnable feedback"):
        rule.surrogate(out, x, model.feedback_matrices())
    with pytest.raises(ValueError, match="feedback_alignment='sign'"):
        BlockLocalRule("sal", feedback_alignment="sign")


# ------------------------------------------------------------------------------------------------- the KP update


@pytest.mark.parametrize(
    "base",
    [
        pytest.param(TINY, id="tiny"),
        pytest.param({"vocab_size": 512, "max_position_embeddings": 16, "pad_token_id": 0}, id="defaults"),
        pytest.param({**TINY, "feedback_points": "micro", "error_source": "vocab"}, id="micro-vocab"),
    ],
)
def test_kolen_pollack_update_of_a_causal_lm_matches_a_hand_computation(base):
    """grad B_l = sum over counted tokens of e_t^T o_l,t + lambda B_l, with e_t the gradient of the mean loss
    (zero at ignored positions); every other parameter gets exactly the update of fixed feedback with the same B."""
    decay = 0.05
    model = lm(base, **KP, feedback_decay=decay)
    fixed = lm(base, feedback_alignment="fixed")
    x = tokens(2, vocab=model.config.vocab_size)
    labels = x.clone()
    labels[0, 5:] = -100
    inputs = {"input_ids": x, "labels": labels}
    grads = local_grads(model, inputs)

    out = model(**inputs, local=True)
    target = out.head_input if model.config.error_source == "hidden" else out.logits
    (error,) = torch.autograd.grad(out.loss, target)  # (B, T, d_e): already divided by the counted tokens
    assert error[0, 4:].abs().max() == 0  # positions predicting an ignored label carry no error
    for index, (point, matrix) in enumerate(zip(out.feedback_outputs, model.feedback_matrices())):
        expected = torch.einsum("btc,btd->cd", error, point.detach()) + decay * matrix.detach()
        torch.testing.assert_close(grads[f"feedback.layer_{index}"], expected, rtol=1e-5, atol=1e-6)
    reference = local_grads(fixed, inputs)
    assert reference.keys() == {n for n in grads if not n.startswith("feedback.")}
    for name, grad in reference.items():
        assert torch.equal(grads[name], grad), name


@pytest.mark.parametrize("error_source", ["hidden", "vocab"])
def test_kolen_pollack_update_of_a_classifier_reads_the_pooled_token_only(error_source):
    torch.manual_seed(0)
    config = SALTransformerConfig(**{**TINY, **KP}, num_labels=3, error_source=error_source)
    model = SALTransformerForSequenceClassification(config)
    x = tokens(4)
    mask = torch.ones_like(x)
    mask[::2, 5:] = 0
    x = x.masked_fill(mask == 0, 0)
    labels = torch.tensor([0, 1, 2, 1])
    inputs = {"input_ids": x, "attention_mask": mask, "labels": labels}
    grads = local_grads(model, inputs)
    out = model(**inputs, local=True)
    rows = torch.arange(4)
    assert out.pooled_positions.tolist() == [4, 7, 4, 7]
    if error_source == "hidden":
        (error,) = torch.autograd.grad(out.loss, out.head_input)
        error = error[rows, out.pooled_positions]  # (B, d): zero at every other token
    else:
        error = (out.logits.detach().softmax(-1) - torch.nn.functional.one_hot(labels, 3)) / 4  # (B, C)
    for index, point in enumerate(out.feedback_outputs):
        expected = error.T @ point.detach()[rows, out.pooled_positions]
        torch.testing.assert_close(grads[f"feedback.layer_{index}"], expected, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------------- locality


def test_kolen_pollack_never_reads_a_forward_weight():
    """With the error held fixed, changing the weights that read a point's output (the head, the final norm, a later
    block) leaves every B_l's update unchanged where its own point's output is unchanged, and block 0's update
    unchanged. (B_1's own activity is block 1's output: changing block 1 may change it, the head may not.)"""
    model = lm(**KP, feedback_decay=0.01)
    x = tokens()
    inputs = {"input_ids": x, "labels": x}
    error = torch.randn(3, 8, TINY["hidden_size"], generator=torch.Generator().manual_seed(5)) / 24
    before = local_grads(model, inputs, error)
    with torch.no_grad():
        for p in [*model.lm_head.parameters(), *model.model.norm.parameters()]:
            p.mul_(-3.0).add_(0.1)
    after_head = local_grads(model, inputs, error)
    with torch.no_grad():
        for p in model.model.layers[1].parameters():
            p.mul_(-3.0).add_(0.1)
    after_block = local_grads(model, inputs, error)
    for name in ("feedback.layer_0", "feedback.layer_1"):
        assert torch.equal(before[name], after_head[name]), name
    assert torch.equal(before["feedback.layer_0"], after_block["feedback.layer_0"])
    assert not torch.equal(before["feedback.layer_1"], after_block["feedback.layer_1"])  # its own activity changed
    block0 = [n for n in before if n.startswith(("model.layers.0.", "model.embed_tokens."))]
    assert block0
    for name in block0:
        assert torch.equal(before[name], after_head[name]) and torch.equal(before[name], after_block[name]), name


def test_no_gradient_crosses_a_block_with_kolen_pollack_on():
    """The Kolen-Pollack term reaches the feedback matrices and nothing else; every feedback point still reaches
    only its own block (and block 0 the embedding)."""
    model = lm(**KP, feedback_points="micro").train()
    x = tokens()
    out = model(input_ids=x, labels=x, local=True)
    matrices = model.feedback_matrices()
    error = BlockLocalRule("sal").error(out)
    term = kolen_pollack_terms(error, out.feedback_outputs, matrices, decay=0.1)
    assert reachable_leaves(term) == {id(m) for m in matrices}
    assert all(grad.abs().sum() > 0 for grad in torch.autograd.grad(term, matrices))
    blocks = list(model.model.layers)
    for index, point in enumerate(out.feedback_outputs):
        block = blocks[index // 2]
        own = {id(p) for p in block.parameters()}
        own |= {id(p) for p in model.model.embed_tokens.parameters()} if index < 2 else set()
        reached = reachable_leaves((point * torch.randn_like(point)).sum())
        assert reached and reached <= own, f"feedback point {index} reaches another block"


# -------------------------------------------------------------------------------------------------- SALTrainer


@pytest.mark.parametrize("alignment", ["fixed", "kolen_pollack"])
def test_sal_trainer_steps_learned_feedback_and_leaves_fixed_buffers(alignment, tmp_path):
    model = lm(feedback_alignment=alignment)
    initial = [m.detach().clone() for m in model.feedback_matrices()]
    x = tokens(8, seed=1)
    data = [{"input_ids": row, "labels": row} for row in x]
    args = training_args(tmp_path, per_device_train_batch_size=4, max_steps=2, learning_rate=1e-2)
    trainer = SALTrainer(model=model, args=args, train_dataset=data)
    trainer.train()
    stepped = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    for matrix, start in zip(model.feedback_matrices(), initial):
        assert (id(matrix) in stepped) == (alignment == "kolen_pollack")
        assert torch.equal(matrix, start) == (alignment == "fixed")


def test_learned_feedback_survives_save_and_load(tmp_path):
    model = lm(**KP, feedback_decay=0.01)
    x = tokens(8, seed=2)
    data = [{"input_ids": row, "labels": row} for row in x]
    args = training_args(tmp_path, per_device_train_batch_size=4, max_steps=2, learning_rate=1e-2)
    SALTrainer(model=model, args=args, train_dataset=data).train()
    draw = lm().feedback_matrices()
    assert all(not torch.equal(m, d) for m, d in zip(model.feedback_matrices(), draw))  # learned, not redrawn
    model.save_pretrained(tmp_path / "kp")
    with safe_open(str(tmp_path / "kp" / "model.safetensors"), "pt") as file:
        assert {"feedback.layer_0", "feedback.layer_1"} <= set(file.keys())
    loaded = SALTransformerForCausalLM.from_pretrained(tmp_path / "kp")
    assert (loaded.config.feedback_alignment, loaded.config.feedback_decay) == ("kolen_pollack", 0.01)
    for a, b in zip(model.feedback_matrices(), loaded.feedback_matrices()):
        assert isinstance(b, torch.nn.Parameter) and torch.equal(a, b)
    for (name, p), q in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(p, q), name
    model.eval(), loaded.eval()
    with torch.no_grad():
        assert torch.equal(model(input_ids=x).logits, loaded(input_ids=x).logits)


# --------------------------------------------------------------------------------------------------------- identity


def test_identity_feedback_gives_the_last_block_exactly_the_backprop_gradient(tmp_path):
    """`feedback_alignment="identity"`: frozen identity buffers (saved, reloaded), every point receives the error at
    the final hidden state as it is, which for the last block is the true gradient: its update equals autograd's on
    the same weights. The first block's does not (the later block's Jacobian is left out)."""
    model = lm(feedback_alignment="identity", num_areas=1)
    assert not [n for n, _ in model.named_parameters() if n.startswith("feedback")]
    for matrix in model.feedback_matrices():
        assert torch.equal(matrix, torch.eye(TINY["hidden_size"]))
    x = tokens(4, seed=3)
    local = local_grads(model, {"input_ids": x, "labels": x})
    bp = lm(learning_rule="bp", num_areas=1)
    bp.load_state_dict(model.state_dict(), strict=False)
    bp.train().zero_grad(set_to_none=True)
    bp(input_ids=x, labels=x).loss.backward()
    exact = {name: p.grad for name, p in bp.named_parameters() if p.grad is not None}
    last = [n for n in local if n.startswith("model.layers.1.")]
    first = [n for n in local if n.startswith("model.layers.0.") and "router" not in n]
    assert last and first
    for name in last:
        torch.testing.assert_close(local[name], exact[name], rtol=1e-5, atol=1e-7, msg=name)
    assert any(not torch.allclose(local[n], exact[n], rtol=1e-3, atol=1e-6) for n in first)
    model.save_pretrained(tmp_path / "identity")
    loaded = SALTransformerForCausalLM.from_pretrained(tmp_path / "identity")
    assert loaded.config.feedback_alignment == "identity"
    assert all(torch.equal(m, torch.eye(TINY["hidden_size"])) for m in loaded.feedback_matrices())


def test_identity_feedback_trains_through_sal_trainer(tmp_path):
    model = lm(feedback_alignment="identity")
    x = tokens(16, seed=4)
    before = model.model.layers[0].self_attn.q_proj.weight.detach().clone()
    args = training_args(tmp_path, per_device_train_batch_size=8, max_steps=2, learning_rate=1e-2)
    SALTrainer(model=model, args=args, train_dataset=[{"input_ids": r, "labels": r} for r in x]).train()
    assert not torch.equal(model.model.layers[0].self_attn.q_proj.weight, before)
    assert all(torch.equal(m, torch.eye(TINY["hidden_size"])) for m in model.feedback_matrices())


def test_frozen_feedback_follows_the_config_a_checkpoint_is_loaded_with(tmp_path):
    """Found in review: frozen matrices loaded from a checkpoint overrode the derived setting. A `dfa` checkpoint
    (random draw) loaded as `sal` derives identity feedback and must use it, and a `sal` one (identity) loaded as
    `dfa` the random draw of its seed."""
    eye = torch.eye(TINY["hidden_size"])
    dfa = lm(learning_rule="dfa", feedback_alignment=None)
    dfa.save_pretrained(tmp_path / "dfa")
    as_sal = SALTransformerForCausalLM.from_pretrained(tmp_path / "dfa", learning_rule="sal")
    assert as_sal.config.effective_feedback_alignment == "identity"
    assert all(torch.equal(m, eye) for m in as_sal.feedback_matrices())
    sal = lm(feedback_alignment=None)
    sal.save_pretrained(tmp_path / "sal")
    as_dfa = SALTransformerForCausalLM.from_pretrained(tmp_path / "sal", learning_rule="dfa")
    assert as_dfa.config.effective_feedback_alignment == "fixed"
    for loaded, drawn in zip(as_dfa.feedback_matrices(), dfa.feedback_matrices()):
        assert torch.equal(loaded, drawn)
    again = SALTransformerForCausalLM.from_pretrained(tmp_path / "sal")  # and as saved: identity
    assert all(torch.equal(m, eye) for m in again.feedback_matrices())
