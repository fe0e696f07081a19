"""The SAL transformer on the Hugging Face surface: save/load, generate with a KV cache, pipelines, remote code."""

import json
import os
import re
import subprocess
import sys

import pytest
import torch
from test_transformer import TINY, lm, one_thread, tiny, token_batch  # noqa: F401 (one_thread: autouse fixture)
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedTokenizerFast,
    pipeline,
)

from sal_hf import (
    SALTransformerConfig,
    SALTransformerForCausalLM,
    SALTransformerForSequenceClassification,
    SALTransformerModel,
)


SENTENCES = ["the cat sat on the mat", "a dog ate the bone", "hello world, said the cat", "the mat was red"]


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE trained offline on four sentences (at most 64 tokens: TINY's vocabulary)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=TINY["vocab_size"], special_tokens=["<pad>", "<eos>"])
    tokenizer.train_from_iterator(SENTENCES * 4, trainer=trainer)
    assert tokenizer.get_vocab_size() <= TINY["vocab_size"]
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", eos_token="<eos>")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A causal LM and a classifier, each saved with the tokenizer beside it."""
    root = tmp_path_factory.mktemp("saved")
    tokenizer = tiny_tokenizer()
    model = lm(eos_token_id=1).eval()
    tokenizer.save_pretrained(root / "lm")
    model.save_pretrained(root / "lm")
    torch.manual_seed(1)
    labels = ["cats", "dogs", "other"]
    classifier = SALTransformerForSequenceClassification(
        tiny(id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)})
    ).eval()
    tokenizer.save_pretrained(root / "classifier")
    classifier.save_pretrained(root / "classifier")
    return model, classifier, tokenizer, root


def test_save_and_load_give_identical_logits_and_routing(saved):
    model, classifier, _, root = saved
    x = token_batch(3)
    assert type(AutoConfig.from_pretrained(root / "lm")) is SALTransformerConfig
    again = AutoModelForCausalLM.from_pretrained(root / "lm").eval()
    assert type(again) is SALTransformerForCausalLM
    assert type(AutoModel.from_pretrained(root / "lm")) is SALTransformerModel
    with torch.no_grad():
        a, b = model(input_ids=x, return_areas=True), again(input_ids=x, return_areas=True)
    assert torch.equal(a.logits, b.logits)
    assert len(a.areas) == model.config.num_hidden_layers and all(torch.equal(p, q) for p, q in zip(a.areas, b.areas))
    state, loaded = model.state_dict(), again.state_dict()
    assert state.keys() == loaded.keys() and all(torch.equal(state[k], loaded[k]) for k in state)
    assert any(k.startswith("feedback.") for k in state) and any(k.endswith("prototypes") for k in state)
    back = AutoModelForSequenceClassification.from_pretrained(root / "classifier").eval()
    assert type(back) is SALTransformerForSequenceClassification
    with torch.no_grad():
        assert torch.equal(back(input_ids=x).logits, classifier(input_ids=x).logits)


def test_auto_map_and_self_contained_code(saved):
    _, _, _, root = saved
    auto_map = json.loads((root / "lm" / "config.json").read_text())["auto_map"]
    assert auto_map == {
        "AutoConfig": "configuration_sal_transformer.SALTransformerConfig",
        "AutoModel": "modeling_sal_transformer.SALTransformerModel",
        "AutoModelForCausalLM": "modeling_sal_transformer.SALTransformerForCausalLM",
        "AutoModelForSequenceClassification": "modeling_sal_transformer.SALTransformerForSequenceClassification",
    }
    files = {name for name in os.listdir(root / "lm") if name.endswith(".py")}
    assert {"configuration_sal_transformer.py", "modeling_sal_transformer.py", "areas.py", "routing.py"} <= files
    for name in files:
        text = (root / "lm" / name).read_text()
        assert not re.search(r"^\s*(from|import)\s+sal_hf", text, re.MULTILINE), name


@pytest.mark.parametrize("left_padding", [False, True])
def test_generate_is_identical_with_and_without_cache(saved, left_padding):
    model, _, _, _ = saved
    prompt = token_batch(2, length=5, seed=4)
    mask = torch.ones_like(prompt)
    if left_padding:
        prompt[0, :2] = 0
        mask[0, :2] = 0
    settings = dict(attention_mask=mask, max_new_tokens=12, do_sample=False, pad_token_id=0, eos_token_id=None)
    with_cache = model.generate(prompt, use_cache=True, **settings)
    without = model.generate(prompt, use_cache=False, **settings)
    assert with_cache.shape == (2, 17)
    assert torch.equal(with_cache, without)
    if not left_padding:  # and both equal greedy decoding by hand, one full forward per token
        tokens = prompt
        with torch.no_grad():
            for _ in range(12):
                next_token = model(input_ids=tokens, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
                tokens = torch.cat([tokens, next_token], dim=-1)
        assert torch.equal(tokens, with_cache)


def test_cached_step_logits_match_a_full_forward(saved):
    model, _, _, _ = saved
    x = token_batch(2, length=7, seed=6)
    with torch.no_grad():
        full = model(input_ids=x, use_cache=False).logits
        first = model(input_ids=x[:, :4], use_cache=True)
        step = model(input_ids=x[:, 4:], cache=first.cache, use_cache=True)
    assert torch.allclose(torch.cat([first.logits, step.logits], 1), full, atol=1e-5)
    # A cache that is given is used whatever use_cache says, as in transformers' Llama: a hand-written loop's last
    # step with use_cache=False, and a model left in training mode, dropped it (no past, positions from 0).
    with torch.no_grad():
        last = model(input_ids=x[:, 4:], past_key_values=model(input_ids=x[:, :4]).cache, use_cache=False)
        assert torch.allclose(last.logits, full[:, 4:], atol=1e-5)
        model.train()
        try:
            in_training = model(input_ids=x[:, 4:], past_key_values=model(input_ids=x[:, :4], use_cache=True).cache)
        finally:
            model.eval()
    assert torch.allclose(in_training.logits, full[:, 4:], atol=1e-5)
    with pytest.raises(ValueError, match="no KV cache"):
        model(input_ids=x[:, 4:], cache=first.cache, local=True)


def test_pipelines_on_saved_folders(saved):
    _, classifier, tokenizer, root = saved
    assert type(AutoTokenizer.from_pretrained(root / "lm")).__name__ == type(tokenizer).__name__
    generate = pipeline("text-generation", model=str(root / "lm"))
    assert type(generate.model) is SALTransformerForCausalLM
    text = generate("the cat", max_new_tokens=5, do_sample=False)[0]["generated_text"]
    assert text.startswith("the cat") and len(text) > len("the cat")
    classify = pipeline("text-classification", model=str(root / "classifier"))
    assert type(classify.model) is SALTransformerForSequenceClassification
    results = classify(["the cat sat", "a dog ate the bone"], top_k=None)
    assert [{r["label"] for r in result} for result in results] == [{"cats", "dogs", "other"}] * 2
    encoded = tokenizer(["the cat sat"], return_tensors="pt")
    with torch.no_grad():
        probs = classifier(**encoded).logits.softmax(-1)[0]
    best = max(results[0], key=lambda r: r["score"])
    assert best["label"] == classifier.config.id2label[int(probs.argmax())]
    assert abs(best["score"] - float(probs.max())) < 1e-5


REMOTE_SCRIPT = """
import importlib.abc, json, sys

class BlockSalHf(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "sal_hf" or name.startswith("sal_hf."):
            raise ImportError(f"sal_hf is blocked in this test (tried to import {name})")

sys.meta_path.insert(0, BlockSalHf())
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, pipeline

lm_dir, classifier_dir, inputs, outputs = sys.argv[1:5]
model = AutoModelForCausalLM.from_pretrained(lm_dir, trust_remote_code=True).eval()
classifier = AutoModelForSequenceClassification.from_pretrained(classifier_dir, trust_remote_code=True).eval()
x = torch.load(inputs)
with torch.no_grad():
    logits = model(input_ids=x).logits
    classes = classifier(input_ids=x).logits
generated = model.generate(x[:, :4], max_new_tokens=6, do_sample=False, pad_token_id=0, eos_token_id=None)
text = pipeline("text-generation", model=lm_dir, trust_remote_code=True)("the cat", max_new_tokens=3, do_sample=False)
torch.save({"logits": logits, "classes": classes, "generated": generated}, outputs)
print(json.dumps({
    "model": type(model).__module__, "classifier": type(classifier).__module__, "text": text[0]["generated_text"],
    "sal_hf_loaded": any(m.startswith("sal_hf") for m in sys.modules),
}))
"""


def test_remote_code_loads_and_predicts_identically_without_sal_hf(saved, tmp_path):
    model, classifier, _, root = saved
    x = token_batch(2, seed=9)
    torch.save(x, tmp_path / "inputs.pt")
    script = tmp_path / "remote.py"
    script.write_text(REMOTE_SCRIPT)
    work = tmp_path / "elsewhere"  # neither the repository nor its parent on sys.path
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"), OMP_NUM_THREADS="1")
    arguments = [str(root / "lm"), str(root / "classifier"), str(tmp_path / "inputs.pt"), str(tmp_path / "out.pt")]
    result = subprocess.run(
        [sys.executable, str(script), *arguments], cwd=work, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert not report["sal_hf_loaded"]
    assert report["model"].startswith("transformers_modules.") and report["classifier"].startswith(
        "transformers_modules."
    )
    assert report["text"].startswith("the cat")
    out = torch.load(tmp_path / "out.pt")
    with torch.no_grad():
        assert torch.equal(out["logits"], model(input_ids=x).logits)
        assert torch.equal(out["classes"], classifier(input_ids=x).logits)
        expected = model.generate(x[:, :4], max_new_tokens=6, do_sample=False, pad_token_id=0, eos_token_id=None)
    assert torch.equal(out["generated"], expected)


def test_a_classifier_starts_from_a_saved_language_model(saved):
    """Fine-tuning's usual start: the LM checkpoint's body (and feedback, routers) load into the classifier, the
    new `score` head is initialised; `from_config` builds either head from a config."""
    model, _, _, root = saved
    classifier = AutoModelForSequenceClassification.from_pretrained(root / "lm", num_labels=3)
    assert type(classifier) is SALTransformerForSequenceClassification and classifier.config.num_labels == 3
    body, loaded = model.model.state_dict(), classifier.model.state_dict()
    assert all(torch.equal(body[k], loaded[k]) for k in body)
    assert all(torch.equal(a, b) for a, b in zip(model.feedback_matrices(), classifier.feedback_matrices()))
    assert type(AutoModelForCausalLM.from_config(tiny())) is SALTransformerForCausalLM
