"""What transformers users pass the SAL transformer, handled as transformers' own models handle it (defects of a close
read, 2026-11-30; docs/RELIABILITY.md): pipelines with batches larger than the number of blocks, problem types, a
micro-batch with no labelled token, label smoothing of a causal LM, 1-D position ids, no pad token, attentions, a
resized vocabulary. The models are the tiny ones of test_transformer.py with the shipped feedback (no `feedback_alignment` pinned)."""

import pytest
import torch
import torch.nn.functional as F
from conftest import training_args
from test_transformer import TINY, one_thread, token_batch  # noqa: F401 (one_thread: autouse fixture)
from test_transformer_hub import tiny_tokenizer
from transformers import pipeline

from sal_hf import (
    SALConfig,
    SALForImageClassification,
    SALTrainer,
    SALTransformerConfig,
    SALTransformerForCausalLM,
    SALTransformerForSequenceClassification,
)


def shipped(**overrides) -> SALTransformerConfig:
    return SALTransformerConfig(**{**{k: v for k, v in TINY.items() if k != "feedback_alignment"}, **overrides})


def classifier(seed: int = 0, **overrides) -> SALTransformerForSequenceClassification:
    torch.manual_seed(seed)
    return SALTransformerForSequenceClassification(shipped(**overrides))


# ------------------------------------------------------------------------------------------------------- pipelines


def test_text_classification_and_features_take_batches_larger_than_the_number_of_blocks():
    """Pipelines split every output tensor per sample; `areas` (a tuple per block) was indexed by sample and raised
    IndexError once the batch held more samples than the model has blocks (or handed a sample another block's
    areas). Inference returns no `areas` unless asked."""
    tokenizer = tiny_tokenizer()
    model = classifier().eval()
    texts = ["the cat sat", "a dog ate the bone", "hello world", "the mat was red", "the cat", "a bone"] * 2
    assert len(texts) > model.config.num_hidden_layers
    one_by_one = pipeline("text-classification", model=model, tokenizer=tokenizer)(texts, batch_size=1)
    batched = pipeline("text-classification", model=model, tokenizer=tokenizer)(texts, batch_size=8)
    assert [r["label"] for r in batched] == [r["label"] for r in one_by_one]
    assert [r["score"] for r in batched] == pytest.approx([r["score"] for r in one_by_one], abs=1e-5)
    features = pipeline("feature-extraction", model=model.model, tokenizer=tokenizer)(texts, batch_size=8)
    assert len(features) == len(texts)
    assert model(input_ids=token_batch(3)).areas is None  # eval, not asked
    asked = model(input_ids=token_batch(3), return_areas=True).areas
    assert len(asked) == model.config.num_hidden_layers and asked[0].shape == (3, 8)
    assert model.train()(input_ids=token_batch(3)).areas is not None  # training forwards keep them


def test_image_classification_pipeline_takes_batches_larger_than_the_number_of_layers():
    from PIL import Image

    from sal_hf import SALImageProcessor

    torch.manual_seed(0)
    model = SALForImageClassification(SALConfig(input_size=64, hidden_sizes=[16], num_labels=3, num_areas=4)).eval()
    processor = SALImageProcessor.from_sal_config(model.config)  # 8 x 8 grayscale
    generator = torch.Generator().manual_seed(0)
    images = [Image.fromarray((torch.rand(8, 8, generator=generator) * 255).byte().numpy()) for _ in range(9)]
    classify = pipeline("image-classification", model=model, image_processor=processor)
    one_by_one, batched = classify(images, batch_size=1), classify(images, batch_size=8)
    assert [r[0]["label"] for r in batched] == [r[0]["label"] for r in one_by_one]
    # Right after `trainer.train()` the model is still in training mode; pipelines run under no_grad and never call
    # eval(): no `areas` there either (an IndexError before).
    model.train()
    assert [r[0]["label"] for r in classify(images, batch_size=8)] == [r[0]["label"] for r in one_by_one]


# --------------------------------------------------------------------------------------------------- problem types


def test_local_rules_refuse_regression_and_float_labels_naming_the_fix():
    with pytest.raises(ValueError, match="num_labels=1.*learning_rule='bp'"):
        classifier(num_labels=1)
    model = classifier(num_labels=3)
    with pytest.raises(ValueError, match="dtype torch.float32.*multi-label"):
        model(input_ids=token_batch(2), labels=torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]), local=True)
    with pytest.raises(ValueError, match=r"Label 3 is outside \[0, 3\)"):
        model(input_ids=token_batch(2), labels=torch.tensor([0, 3]), local=True)


@torch.no_grad()
def test_bp_infers_the_problem_type_like_transformers():
    x = token_batch(2)
    regression = classifier(learning_rule="bp", num_labels=1)
    out = regression(input_ids=x, labels=torch.tensor([0.5, -1.0]))
    assert regression.config.problem_type == "regression"
    assert float(out.loss) == pytest.approx(float(F.mse_loss(out.logits.squeeze(-1), torch.tensor([0.5, -1.0]))))
    multi = classifier(learning_rule="bp", num_labels=3)
    hot = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    out = multi(input_ids=x, labels=hot)
    assert multi.config.problem_type == "multi_label_classification"
    assert float(out.loss) == pytest.approx(float(F.binary_cross_entropy_with_logits(out.logits, hot)))
    single = classifier(learning_rule="bp", num_labels=3)
    out = single(input_ids=x, labels=torch.tensor([[2], [0]], dtype=torch.int32))  # (B, 1) int32, as HF takes it
    assert float(out.loss) == pytest.approx(float(F.cross_entropy(out.logits, torch.tensor([2, 0]))))


# ---------------------------------------------------------------------------------------------------- causal LM


def test_a_micro_batch_with_no_labelled_token_trains_as_zero_loss_not_nan(tmp_path):
    """A prompt-only row (every label -100) alone in a micro-batch: the mean over no token was 0/0, and SALTrainer
    stopped on the NaN. It is a zero loss now, and the step moves nothing of the blocks."""
    torch.manual_seed(0)
    model = SALTransformerForCausalLM(shipped())
    x = token_batch(1)
    out = model(input_ids=x, labels=torch.full_like(x, -100), local=True)
    assert out.loss == 0.0
    labels = x.clone()
    mean = F.cross_entropy(out.logits[0, :-1].detach(), labels[0, 1:])
    assert float(model(input_ids=x, labels=labels).loss.detach()) == pytest.approx(
        float(mean), rel=1e-6
    )  # still the mean
    rows = [{"input_ids": x[0], "labels": torch.full_like(x[0], -100)}, {"input_ids": x[0], "labels": labels[0]}]
    args = training_args(tmp_path, per_device_train_batch_size=1, gradient_accumulation_steps=2, max_steps=2)
    SALTrainer(model=model, args=args, train_dataset=rows * 2).train()  # raised FloatingPointError before
    # A whole accumulation window of such rows (Trainer's count is 0), under the local rule and under bp.
    for rule in ("sal", "bp"):
        model = SALTransformerForCausalLM(shipped(learning_rule=rule))
        args = training_args(
            tmp_path / rule, per_device_train_batch_size=1, max_steps=2, train_sampling_strategy="sequential"
        )
        SALTrainer(model=model, args=args, train_dataset=rows).train()


def test_bp_label_smoothing_scores_the_next_token(tmp_path):
    """Trainer shifts the labels for label smoothing only for transformers' own causal LMs (by class name)."""
    torch.manual_seed(0)
    model = SALTransformerForCausalLM(shipped(learning_rule="bp"))
    x = token_batch(2)
    args = training_args(tmp_path, label_smoothing_factor=0.1)
    trainer = SALTrainer(model=model, args=args, train_dataset=[{"input_ids": r, "labels": r} for r in x])
    loss = trainer.compute_loss(model, {"input_ids": x, "labels": x}).detach()
    logits = model(input_ids=x).logits.detach()
    expected = F.cross_entropy(logits[:, :-1].reshape(-1, 64), x[:, 1:].reshape(-1), label_smoothing=0.1)
    assert float(loss) == pytest.approx(float(expected), rel=1e-4)


def test_bp_label_smoothing_under_gradient_accumulation_steps_like_one_batch(tmp_path):
    """Two micro-batches of 2 against one batch of 4 (SGD, lr 1, no clipping): the same update. Smoothing the loss by
    hand in `compute_loss` summed the micro-batch means (twice the update), since Trainer counts the tokens itself."""
    x = token_batch(4)
    rows = [{"input_ids": r, "labels": r} for r in x]
    changes = []
    for batch, steps in ((4, 1), (2, 2)):
        torch.manual_seed(0)
        model = SALTransformerForCausalLM(shipped(learning_rule="bp"))
        before = [p.detach().clone() for p in model.parameters()]
        args = training_args(
            tmp_path / f"b{batch}",
            label_smoothing_factor=0.1,
            optim="sgd",
            learning_rate=1.0,
            max_grad_norm=0.0,
            per_device_train_batch_size=batch,
            gradient_accumulation_steps=steps,
            max_steps=1,
        )
        SALTrainer(model=model, args=args, train_dataset=rows).train()
        changes.append(torch.cat([(p.detach() - b).flatten() for p, b in zip(model.parameters(), before)]))
    assert changes[0].abs().sum() > 0
    torch.testing.assert_close(changes[1], changes[0], rtol=1e-4, atol=1e-6)


# ------------------------------------------------------------------------------------------------------ inputs


def test_one_dimensional_position_ids_are_the_batchs_and_a_wrong_shape_is_named():
    torch.manual_seed(0)
    model = SALTransformerForCausalLM(shipped(num_attention_heads=2)).eval()
    x = token_batch(3, length=2)  # as many positions as heads: a (T,) tensor broadcast along the heads before
    positions = torch.tensor([3, 4])
    flat = model(input_ids=x, position_ids=positions).logits
    assert torch.equal(flat, model(input_ids=x, position_ids=positions[None].expand(3, 2)).logits)
    with pytest.raises(ValueError, match=r"position_ids must have shape \(batch, 2\) or \(2,\); got \(3,\)"):
        model(input_ids=x, position_ids=torch.tensor([0, 1, 2]))


def test_a_batch_without_pad_token_or_attention_mask_is_refused():
    model = classifier(pad_token_id=None).eval()
    with pytest.raises(ValueError, match="neither an attention_mask nor config.pad_token_id"):
        model(input_ids=token_batch(2))
    assert model(input_ids=token_batch(1)).logits.shape == (1, 2)  # one sequence: its last token
    assert model(input_ids=token_batch(2), attention_mask=torch.ones(2, 8)).logits.shape == (2, 2)
    # Embeddings too (found in review: only ids were refused); with a pad id, embeddings hide the padding: a warning.
    with pytest.raises(ValueError, match="neither an attention_mask nor config.pad_token_id"):
        model(inputs_embeds=model.model.embed_tokens(token_batch(2)))


def test_padded_embeddings_without_a_mask_are_warned_about(caplog):
    from transformers.utils import logging

    logging.warning_once.cache_clear()  # (warned once per process: an earlier test may have warned already)
    model = classifier(pad_token_id=0).eval()
    ids = torch.tensor([[5, 6, 7, 8], [5, 6, 0, 0]])
    with caplog.at_level("WARNING"):
        model(inputs_embeds=model.model.embed_tokens(ids))
    assert "inputs_embeds without an attention_mask" in caplog.text
    masked = model(inputs_embeds=model.model.embed_tokens(ids), attention_mask=(ids != 0).long()).logits
    torch.testing.assert_close(masked, model(input_ids=ids).logits)


def test_output_attentions_are_llamas_under_eager_attention_and_refused_under_sdpa():
    """Found in review: refused under every kernel, though the eager kernel returns its weights."""
    model = classifier().eval()
    with pytest.raises(ValueError, match="output_attentions=True needs the eager attention kernel.*'sdpa'"):
        model(input_ids=token_batch(2), output_attentions=True)
    assert model(input_ids=token_batch(2), output_attentions=False).attentions is None
    model.set_attn_implementation("eager")
    ids = token_batch(2)
    out = model(input_ids=ids, output_attentions=True)
    assert len(out.attentions) == TINY["num_hidden_layers"]
    weights = out.attentions[0]
    assert weights.shape == (2, TINY["num_attention_heads"], ids.shape[1], ids.shape[1])
    torch.testing.assert_close(weights.sum(-1), torch.ones(weights.shape[:-1]))
    assert torch.all(weights.triu(1) == 0)  # causal: no weight on later tokens
    # The weights are those the layer used: recomputed from its projections, they give its output.
    block = model.model.layers[0]
    captured = {}
    block.self_attn.register_forward_hook(lambda module, args, output: captured.update(out=output[0], args=args))
    model(input_ids=ids)
    attention = block.self_attn
    hidden = captured["args"][0]
    value = attention.v_proj(hidden).view(2, ids.shape[1], -1, attention.head_dim).transpose(1, 2)
    mixed = (weights @ value).transpose(1, 2).reshape(2, ids.shape[1], -1)
    torch.testing.assert_close(attention.o_proj(mixed), captured["out"])


def test_a_causal_lm_batch_without_labels_names_the_lm_collator(tmp_path):
    torch.manual_seed(0)
    model = SALTransformerForCausalLM(shipped())
    rows = [{"input_ids": row} for row in token_batch(4)]
    trainer = SALTrainer(model=model, args=training_args(tmp_path, max_steps=1), train_dataset=rows)
    with pytest.raises(ValueError, match=r"causal LM needs `labels`.*DataCollatorForLanguageModeling"):
        trainer.train()


def test_hidden_states_end_with_the_normalised_last_hidden_state_as_in_transformers():
    torch.manual_seed(0)
    model = SALTransformerForCausalLM(shipped()).eval()
    with torch.no_grad():
        out = model.model(input_ids=token_batch(2), output_hidden_states=True)
    assert len(out.hidden_states) == model.config.num_hidden_layers + 1
    assert torch.equal(out.hidden_states[-1], out.last_hidden_state)
    assert not torch.equal(out.hidden_states[-2], out.last_hidden_state)


@pytest.mark.parametrize("alignment", [None, "kolen_pollack"])
def test_resizing_the_vocabulary_resizes_the_logit_errors_feedback(tmp_path, alignment):
    """With `error_source="vocab"` each feedback matrix has a row per token: `resize_token_embeddings` (a tokenizer
    with added tokens) left them at the old size, and the first local step failed on a shape mismatch."""
    torch.manual_seed(0)
    extra = {"feedback_alignment": alignment} if alignment else {}
    model = SALTransformerForCausalLM(shipped(error_source="vocab", **extra))
    vocab = model.config.vocab_size
    before = [m.detach().clone() for m in model.feedback.matrices()]
    model.resize_token_embeddings(vocab + 8)
    assert model.config.vocab_size == vocab + 8
    for old, new in zip(before, model.feedback.matrices()):
        assert new.shape == (vocab + 8, old.shape[1]) and torch.equal(new[:vocab], old)  # kept rows kept
        assert new[vocab:].abs().sum() > 0  # the new tokens' rows are drawn, not zero
    assert model.feedback.learned == (alignment == "kolen_pollack")
    x = token_batch(4, vocab=vocab + 8)
    rows = [{"input_ids": row, "labels": row} for row in x]
    args = training_args(tmp_path, per_device_train_batch_size=4, max_steps=2)
    SALTrainer(model=model, args=args, train_dataset=rows).train()  # a shape mismatch before
    model.save_pretrained(tmp_path / "resized")
    again = SALTransformerForCausalLM.from_pretrained(tmp_path / "resized")
    for saved, loaded in zip(model.feedback.matrices(), again.feedback.matrices()):
        assert torch.equal(saved, loaded)
    model.resize_token_embeddings(vocab - 4)  # shrinking keeps the first rows
    assert [m.shape[0] for m in model.feedback.matrices()] == [vocab - 4] * len(before)


@pytest.mark.parametrize("alignment", [None, "kolen_pollack"])
def test_a_vocab_error_language_model_loads_as_a_classifier(tmp_path, alignment):
    """An LM with `error_source="vocab"` has a feedback row per token, the classifier one per label: loading it for
    classification (the usual start of fine-tuning) drew the new shape instead of raising that the weights 'do not
    fit'. Any other mismatch still raises, naming the weight and its shapes."""
    extra = {"feedback_alignment": alignment} if alignment else {}
    SALTransformerForCausalLM(shipped(error_source="vocab", **extra)).save_pretrained(tmp_path / "lm")
    model = SALTransformerForSequenceClassification.from_pretrained(tmp_path / "lm", num_labels=4)
    assert [m.shape[0] for m in model.feedback.matrices()] == [4] * len(model.feedback.matrices())
    fresh = SALTransformerForSequenceClassification(shipped(error_source="vocab", num_labels=4, **extra))
    for loaded, drawn in zip(model.feedback.matrices(), fresh.feedback.matrices()):
        assert torch.equal(loaded, drawn)
    x = token_batch(4)
    model.train()(input_ids=x, labels=torch.tensor([0, 1, 2, 3]), local=True).loss.backward()
    SALTransformerForSequenceClassification(shipped(num_labels=4)).save_pretrained(tmp_path / "cls")
    with pytest.raises(
        ValueError, match=r"score.weight saved \(4, 32\), here \(5, 32\) \(this call sets num_labels=5\)"
    ):
        SALTransformerForSequenceClassification.from_pretrained(tmp_path / "cls", num_labels=5)


def bad_transformer_inputs():
    ids = torch.randint(1, 64, (2, 5), generator=torch.Generator().manual_seed(0))
    return [
        (dict(input_ids=ids.float()), "input_ids must be integer token ids; got dtype=torch.float32"),
        (dict(input_ids=torch.tensor([[1, 2, 64]])), r"Token id 64 is outside \[0, 64\).*resize_token_embeddings"),
        (dict(input_ids=torch.tensor([[1, -1]])), r"Token id -1 is outside \[0, 64\)"),
        (dict(input_ids=ids[0]), r"shape \(batch, length\); got \(5,\).*unsqueeze\(0\)"),
        (dict(input_ids=ids[:0]), r"empty batch: input_ids has shape \(0, 5\)"),
        (
            dict(input_ids=ids, attention_mask=torch.ones(2, 3)),
            r"attention_mask must have shape .* \(2, 5\).*got \(2, 3\)",
        ),
        (
            dict(input_ids=ids[:1], attention_mask=torch.ones(1, 7)),
            r"\(1, 5\) \(past = 0 cached tokens\); got \(1, 7\)",
        ),
        (dict(input_ids=ids, attention_mask=torch.ones(5)), r"got \(5,\)"),
        (dict(inputs_embeds=torch.rand(2, 5, 31)), r"inputs_embeds must have shape \(batch, length, 32\)"),
        (dict(input_ids=ids, labels=torch.full((2, 5), 70)), r"Label 70 is outside \[0, 64\).*not -100"),
        (dict(input_ids=ids, labels=torch.full((2, 5), -5)), r"Label -5 is outside"),
        (dict(input_ids=ids, labels=ids.float()), r"integer token ids of the input's shape \(2, 5\).*float32"),
        (dict(input_ids=ids, labels=ids[:, :3]), r"input's shape \(2, 5\).*got shape \(2, 3\)"),
    ]


@pytest.mark.parametrize("inputs, says", bad_transformer_inputs())
def test_bad_ids_masks_and_labels_are_named_before_torch_fails(inputs, says):
    """Each reached torch: 'index out of range in self' (a device-side assert on CUDA), 'not enough values to
    unpack', a reshape or size error, a target-dtype error; a mask longer than the tokens masked the wrong ones
    silently. With the defaults."""
    size = dict(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=16)
    model = SALTransformerForCausalLM(SALTransformerConfig(**size)).eval()
    with pytest.raises(ValueError, match=says):
        model(**inputs)
    if "labels" not in inputs:  # the classifier reads its inputs through the same body
        classifier = SALTransformerForSequenceClassification(SALTransformerConfig(**size, pad_token_id=0)).eval()
        with pytest.raises(ValueError, match=says):
            classifier(**inputs)
