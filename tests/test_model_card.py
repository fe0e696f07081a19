"""The model card SALTrainer writes, and the folder push_to_hub would upload (the Hub itself is not called)."""

import fnmatch
import os

import pytest
import torch
import transformers.trainer
from conftest import as_dataset, tiny_batch, training_args

from sal_hf import SALConfig, SALDiagnosticsCallback, SALForImageClassification, SALImageProcessor, SALTrainer
from sal_hf.metrics import classification_metrics


class RecordingApi:
    """Stands in for the Hub client: records what `upload_folder` would send."""

    def __init__(self):
        self.uploads = []

    def upload_folder(self, folder_path, ignore_patterns=(), **kwargs):
        files = sorted(
            os.path.relpath(os.path.join(root, name), folder_path)
            for root, _, names in os.walk(folder_path)
            for name in names
        )
        kept = [
            f
            for f in files
            if not any(fnmatch.fnmatch(f, p) or fnmatch.fnmatch(f.split(os.sep)[0], p) for p in ignore_patterns)
        ]
        self.uploads.append({"files": kept, "readme": open(os.path.join(folder_path, "README.md")).read(), **kwargs})


@pytest.fixture
def trainer(tmp_path):
    torch.manual_seed(0)
    names = [f"class_{i}" for i in range(5)]
    config = SALConfig(
        input_size=16, image_size=[4, 4], hidden_sizes=[32, 32], num_labels=5, num_areas=4, routing_seed=7,
        feedback_seed=11, id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)},
    )  # fmt: skip
    model = SALForImageClassification(config)
    x, y = tiny_batch(64)
    data = as_dataset(x.view(-1, 4, 4), y)
    args = training_args(tmp_path, max_steps=4, logging_steps=2, eval_strategy="steps", eval_steps=4, seed=5)
    trainer = SALTrainer(
        model=model,
        args=args,
        train_dataset=data,
        eval_dataset=data[:32],
        processing_class=SALImageProcessor.from_sal_config(config),
        compute_metrics=classification_metrics(5),
        callbacks=[SALDiagnosticsCallback(x[:16], y[:16])],
    )
    trainer.train()
    return trainer


def test_card_records_how_the_model_was_trained(trainer):
    trainer.create_model_card(dataset="tiny-random", command="sal-hf train --dataset tiny-random")
    card = open(os.path.join(trainer.args.output_dir, "README.md")).read()
    final = [entry for entry in trainer.state.log_history if "eval_accuracy" in entry][-1]
    expected = [
        "pipeline_tag: image-classification",
        "- tiny-random",
        "| learning_rule | `sal` |",
        "| feedback | `direct` |",
        "| feedback_alignment | `kolen_pollack` |",  # unset: the derived default, as trained
        "| num_areas (K) | `4` |",
        "| routing_scope | `layer` |",
        "| routing_dim | `32` |",
        "| training seed (`TrainingArguments.seed`) | `5` |",
        "| routing_seed | `7` |",
        "| feedback_seed | `11` |",
        f"| Accuracy | `{final['eval_accuracy']:.4f}`"
        if final["eval_accuracy"] != round(final["eval_accuracy"], 4)
        else f"| Accuracy | `{final['eval_accuracy']}`",
        f"value: {final['eval_accuracy']}",
        "## Area utilisation",
        "| 0 | 4 |",
        "| 1 | 4 |",
        "## Alignment with backpropagation",
        f"| transformers | `{transformers.__version__}` |",
        f"| torch | `{torch.__version__}` |",
        "sal-hf train --dataset tiny-random",
        'pipeline("image-classification"',
        "trust_remote_code=True",
    ]
    missing = [line for line in expected if line not in card]
    assert not missing, f"{missing}\n\n{card}"
    assert "| num_channels | `1` |" in card and "None" not in card.split("## Area utilisation")[1].split("##")[0]


def test_card_names_a_local_folder_by_its_name_and_bp_without_feedback(trainer, tmp_path):
    """A local dataset folder went into the YAML `datasets:` as this machine's absolute path; a `bp` model's card
    gave it a feedback alignment."""
    folder = tmp_path / "my_images"
    folder.mkdir()
    trainer.create_model_card(dataset=str(folder))
    card = open(os.path.join(trainer.args.output_dir, "README.md")).read()
    assert "- my_images" in card and str(tmp_path) not in card
    model = SALForImageClassification(SALConfig(input_size=16, hidden_sizes=[8], num_labels=5, learning_rule="bp"))
    bp = SALTrainer(model=model, args=training_args(tmp_path / "bp", max_steps=1))
    bp.create_model_card()
    card = open(os.path.join(bp.args.output_dir, "README.md")).read()
    assert "| feedback_alignment | `- (backpropagation)` |" in card


def test_push_to_hub_uploads_model_code_processor_and_card(trainer, monkeypatch):
    api = RecordingApi()
    monkeypatch.setattr(transformers.trainer, "hf_api", lambda: api)
    trainer.hub_model_id = "someone/sal-tiny"  # skips creating the repository
    trainer.create_model_card(dataset="tiny-random")
    os.remove(os.path.join(trainer.args.output_dir, "README.md"))
    trainer.push_to_hub()  # writes the card again, keeping the dataset given before
    (upload,) = api.uploads
    assert upload["repo_id"] == "someone/sal-tiny"
    required = {"README.md", "config.json", "model.safetensors", "preprocessor_config.json", "configuration_sal.py",
                "modeling_sal.py", "routing.py", "feedback.py", "image_processing_sal.py"}  # fmt: skip
    assert required <= set(upload["files"]), upload["files"]
    assert "| num_areas (K) | `4` |" in upload["readme"] and "- tiny-random" in upload["readme"]


@pytest.mark.parametrize("head", ["causal_lm", "classification"])
def test_card_of_a_sal_transformer(head, tmp_path):
    from sal_hf import SALTransformerConfig, SALTransformerForCausalLM, SALTransformerForSequenceClassification

    torch.manual_seed(0)
    config = SALTransformerConfig(
        vocab_size=32,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=8,
        num_areas=4,
        num_labels=3,
        pad_token_id=0,
    )
    ids = torch.randint(1, 32, (8, 8))
    if head == "causal_lm":
        model, data = SALTransformerForCausalLM(config), [{"input_ids": row, "labels": row} for row in ids]
    else:
        model = SALTransformerForSequenceClassification(config)
        data = [{"input_ids": row, "labels": int(row[0]) % 3} for row in ids]
    trainer = SALTrainer(
        model=model, args=training_args(tmp_path, max_steps=2, per_device_train_batch_size=4), train_dataset=data
    )
    trainer.train()
    trainer.create_model_card(dataset="fortunes")
    card = (tmp_path / "out" / "README.md").read_text()
    task = "text-generation" if head == "causal_lm" else "text-classification"
    assert f"pipeline_tag: {task}" in card and f'pipeline("{task}"' in card
    assert "| num_areas (K) | `4` |" in card and "| error_source | `hidden` |" in card
    assert "| feedback_alignment | `identity` |" in card  # unset: the derived default, as trained
    assert "without backpropagation" in card


def test_card_prints_small_rates_a_file_dataset_and_an_evaluation_only_run(trainer, tmp_path):
    """Rates under 1e-3 printed as `0.0001` (5e-5) or `0.0000` (2e-5); a dataset file went into the YAML as its
    absolute path; a trainer that only evaluated had no metrics in the YAML, raw `eval_*` keys in its table, and a
    card saying it was trained."""
    model = SALForImageClassification(
        SALConfig(input_size=16, hidden_sizes=[8], num_labels=5, routing_balance_rate=2e-5)
    )
    x, y = tiny_batch(32)
    args = training_args(tmp_path / "eval", learning_rate=5e-5)
    only = SALTrainer(model=model, args=args, eval_dataset=as_dataset(x, y), compute_metrics=classification_metrics(5))
    accuracy = only.evaluate()["eval_accuracy"]
    data_file = tmp_path / "train.csv"
    data_file.write_text("x\n")
    only.create_model_card(dataset=str(data_file))
    card = open(os.path.join(args.output_dir, "README.md")).read()
    assert "| routing_balance_rate | `2e-05` |" in card and "| learning_rate | `5e-05` |" in card
    assert "- train.csv" in card and str(tmp_path) not in card
    assert "metrics:\n- accuracy" in card and f"value: {accuracy}" in card.replace("'", "")
    assert "| Accuracy |" in card and "eval_runtime" not in card and "not trained by this run" in card
