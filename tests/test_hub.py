"""Hub-ready checkpoints: remote code, the image processor, the image-classification pipeline."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import as_dataset, tiny_config, training_args
from PIL import Image
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForImageClassification,
    dynamic_module_utils,
    pipeline,
)

from sal_hf import SALConfig, SALForImageClassification, SALImageProcessor, SALModel, SALTrainer


IMAGE = {"input_size": 16, "image_size": [4, 4]}
CODE_FILES = {"configuration_sal.py", "modeling_sal.py", "routing.py", "feedback.py", "image_processing_sal.py"}


def image_model(**overrides) -> SALForImageClassification:
    torch.manual_seed(0)
    names = ["zero", "one", "two", "three", "four"]
    config = tiny_config(**IMAGE, id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)})
    return SALForImageClassification(config).eval()


@pytest.fixture
def saved(tmp_path):
    """A SAL classifier and its processor, saved the way Trainer.save_model saves them."""
    model = image_model()
    directory = tmp_path / "model"
    model.save_pretrained(directory)
    SALImageProcessor.from_sal_config(model.config).save_pretrained(directory)
    return model, directory


def test_save_writes_self_contained_code_and_auto_map(saved):
    _, directory = saved
    assert CODE_FILES <= set(os.listdir(directory))
    auto_map = json.loads((directory / "config.json").read_text())["auto_map"]
    assert auto_map == {
        "AutoConfig": "configuration_sal.SALConfig",
        "AutoModel": "modeling_sal.SALModel",
        "AutoModelForImageClassification": "modeling_sal.SALForImageClassification",
    }
    processor = json.loads((directory / "preprocessor_config.json").read_text())
    assert processor["auto_map"] == {"AutoImageProcessor": "image_processing_sal.SALImageProcessor"}
    assert processor["size"] == {"height": 4, "width": 4}
    # The copied files import nothing from sal_hf, only each other (relative) and public libraries.
    for name in CODE_FILES:
        assert not re.search(r"^\s*(from|import)\s+sal_hf", (directory / name).read_text(), re.MULTILINE), name


def test_installed_classes_load_without_trust_remote_code(saved):
    model, directory = saved
    assert type(AutoConfig.from_pretrained(directory)) is SALConfig
    again = AutoModelForImageClassification.from_pretrained(directory)
    assert type(again) is SALForImageClassification
    assert type(AutoModel.from_pretrained(directory)) is SALModel
    assert type(AutoImageProcessor.from_pretrained(directory)) is SALImageProcessor
    x = torch.rand(6, 4, 4)
    with torch.no_grad():
        assert torch.equal(again.eval()(pixel_values=x).logits, model(pixel_values=x).logits)


REMOTE_SCRIPT = """
import importlib.abc, json, sys

class BlockSalHf(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "sal_hf" or name.startswith("sal_hf."):
            raise ImportError(f"sal_hf is blocked in this test (tried to import {name})")

sys.meta_path.insert(0, BlockSalHf())
try:
    import sal_hf  # noqa: F401
    raise SystemExit("the blocker did not block sal_hf")
except ImportError:
    pass

import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModel, AutoModelForImageClassification, pipeline

directory, inputs, outputs = sys.argv[1:4]
model = AutoModelForImageClassification.from_pretrained(directory, trust_remote_code=True).eval()
body = AutoModel.from_pretrained(directory, trust_remote_code=True).eval()
processor = AutoImageProcessor.from_pretrained(directory, trust_remote_code=True)
x = torch.load(inputs)
with torch.no_grad():
    logits = model(pixel_values=x).logits
    hidden = body(pixel_values=x).last_hidden_state
image = Image.fromarray((torch.arange(48).reshape(4, 4, 3) * 5).to(torch.uint8).numpy())
classify = pipeline("image-classification", model=directory, trust_remote_code=True)
torch.save({"logits": logits, "hidden": hidden, "pipeline": classify(image, top_k=5)}, outputs)
model.save_pretrained(outputs + ".resaved")  # a model loaded as remote code saves Hub-ready too
print(json.dumps({
    "model": type(model).__module__, "body": type(body).__module__, "processor": type(processor).__module__,
    "pipeline_model": type(classify.model).__module__, "sal_hf_loaded": any(m.startswith("sal_hf") for m in sys.modules),
}))
"""


def test_remote_code_loads_and_predicts_identically_without_sal_hf(saved, tmp_path):
    model, directory = saved
    x = torch.rand(7, 4, 4, generator=torch.Generator().manual_seed(3))
    torch.save(x, tmp_path / "inputs.pt")
    script = tmp_path / "remote.py"
    script.write_text(REMOTE_SCRIPT)
    work = tmp_path / "elsewhere"  # neither the repository nor its parent on sys.path
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"))
    result = subprocess.run(
        [sys.executable, str(script), str(directory), str(tmp_path / "inputs.pt"), str(tmp_path / "out.pt")],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert not report.pop("sal_hf_loaded")
    assert all(module.startswith("transformers_modules.") for module in report.values()), report
    out = torch.load(tmp_path / "out.pt")
    with torch.no_grad():
        assert torch.equal(out["logits"], model(pixel_values=x).logits)
        assert torch.equal(out["hidden"], model.sal(pixel_values=x).last_hidden_state)
    assert {entry["label"] for entry in out["pipeline"]} == set(model.config.id2label.values())
    resaved = tmp_path / "out.pt.resaved"
    assert CODE_FILES - {"image_processing_sal.py"} <= set(os.listdir(resaved))
    assert json.loads((resaved / "config.json").read_text())["auto_map"]["AutoModelForImageClassification"] == (
        "modeling_sal.SALForImageClassification"
    )


def test_pipeline_classifies_a_pil_image_without_asking_to_run_remote_code(saved, monkeypatch):
    model, directory = saved
    # Every save writes auto_map; with sal_hf imported, no component of the pipeline (model, config, image
    # processor, the video-processor probe) may ask "Do you wish to run the custom code?". transformers catches
    # whatever `input` raises, so the prompts are recorded, not raised.
    prompts = []
    monkeypatch.setattr(dynamic_module_utils, "TIME_OUT_REMOTE_CODE", 15)
    monkeypatch.setattr("builtins.input", lambda message="": prompts.append(message) or "n")
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, size=(12, 10, 3), dtype=np.uint8))
    classify = pipeline("image-classification", model=str(directory))
    assert prompts == []
    assert type(classify.model) is SALForImageClassification
    assert type(classify.image_processor) is SALImageProcessor
    predictions = classify(image, top_k=5)

    pixel_values = SALImageProcessor.from_sal_config(model.config)(image, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        probs = model(pixel_values=pixel_values).logits.softmax(-1)[0]
    expected = sorted(((float(p), model.config.id2label[i]) for i, p in enumerate(probs)), reverse=True)
    assert [entry["label"] for entry in predictions] == [label for _, label in expected]
    np.testing.assert_allclose([entry["score"] for entry in predictions], [p for p, _ in expected], rtol=1e-5)


def test_processor_converts_to_grayscale_resizes_and_rescales():
    processor = SALImageProcessor(size={"height": 3, "width": 5})
    colour = (200, 100, 50)
    pixel_values = processor(
        [Image.new("RGB", (20, 10), colour), Image.new("RGBA", (7, 9), (*colour, 128))], return_tensors="pt"
    )["pixel_values"]
    assert pixel_values.shape == (2, 1, 3, 5) and pixel_values.dtype == torch.float32
    luma = (0.299 * 200 + 0.587 * 100 + 0.114 * 50) / 255
    torch.testing.assert_close(pixel_values, torch.full_like(pixel_values, luma), atol=1 / 255, rtol=0)
    # A 2-D array (one channel) passes through; the value is rescaled only.
    gray = processor(np.full((3, 5), 51, dtype=np.uint8), return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(gray, torch.full((1, 1, 3, 5), 0.2))


def test_processor_takes_a_stacked_batch_of_2d_images(caplog):
    """`sal_hf.data` batches are (N, H, W): N images, not one N-channel image (a batch of 4 became one image made of
    the first three, silently; 2, 5 or 8 raised that the channel axis could not be inferred). N = 3 or 4 stays
    ambiguous with a channels-first colour image and is read so, with a warning."""
    from sal_hf.data import load_image_dataset

    processor = SALImageProcessor.from_sal_config(SALConfig(input_size=64, num_labels=10))
    batch = load_image_dataset("digits")["test"][:8]["pixel_values"]  # (8, 8, 8), values in [0, 1]
    for n in (2, 5, 8):
        stacked = processor(batch[:n], return_tensors="pt", do_rescale=False)["pixel_values"]
        one_by_one = processor(list(batch[:n]), return_tensors="pt", do_rescale=False)["pixel_values"]
        assert stacked.shape == (n, 1, 8, 8) and torch.equal(stacked, one_by_one)
    with caplog.at_level("WARNING"):
        assert processor(batch[:3], return_tensors="pt", do_rescale=False)["pixel_values"].shape == (1, 1, 8, 8)
    assert "pass a list of 2-D arrays" in caplog.text


def test_processor_size_comes_from_the_config():
    assert SALImageProcessor.from_sal_config(SALConfig(input_size=64, num_labels=3)).size.height == 8
    processor = SALImageProcessor.from_sal_config(SALConfig(input_size=24, image_size=[4, 6], num_labels=3))
    assert (processor.size.height, processor.size.width) == (4, 6)
    with pytest.raises(ValueError, match="input_size=24"):
        SALImageProcessor.from_sal_config(SALConfig(input_size=24, num_labels=3))


@pytest.mark.parametrize("image_size, match", [([4, 5], "holds 20 values"), ([4, 0], "positive ints"), (7, "49")])
def test_config_rejects_image_size_inconsistent_with_input_size(image_size, match):
    with pytest.raises(ValueError, match=match):
        SALConfig(input_size=16, image_size=image_size, num_labels=3)


def test_trainer_saves_the_processor_with_the_model(tmp_path):
    model = image_model()
    x, y = torch.rand(16, 4, 4), torch.randint(0, 5, (16,))
    processor = SALImageProcessor.from_sal_config(model.config)
    trainer = SALTrainer(
        model=model,
        args=training_args(tmp_path, max_steps=1),
        train_dataset=as_dataset(x, y),
        processing_class=processor,
    )
    trainer.train()
    trainer.save_model()
    saved = set(os.listdir(tmp_path / "out"))
    assert {"config.json", "model.safetensors", "preprocessor_config.json"} | CODE_FILES <= saved
