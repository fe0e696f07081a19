"""What a user gets from `pip install sal-hf`: `import sal_hf` works without extras and stays light (the trainer
loads on first use); the built wheel trains the README quickstart from outside the repository."""

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parent.parent

LAZY_TRAINER_PROBE = """
import json, sys
import sal_hf
before = "transformers.trainer" in sys.modules
from sal_hf import SALTrainer
from transformers import Trainer
print(json.dumps({
    "trainer_before": before,
    "trainer_after": "transformers.trainer" in sys.modules,
    "module": SALTrainer.__module__,
    "is_trainer": issubclass(SALTrainer, Trainer),
    "same": sal_hf.SALTrainer is SALTrainer,
    "callback": sal_hf.SALDiagnosticsCallback.__name__,
}))
"""


def test_import_does_not_load_the_trainer_until_it_is_used():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", LAZY_TRAINER_PROBE], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {
        "trainer_before": False,
        "trainer_after": True,
        "module": "sal_hf.trainer",
        "is_trainer": True,
        "same": True,
        "callback": "SALDiagnosticsCallback",
    }


# Runs in the clean virtualenv, from a folder outside the repository, with only the wheel's base dependencies.
BASE_INSTALL_SCRIPT = """
import json, sys
import torch
import sal_hf
from PIL import Image
from transformers import AutoModelForImageClassification, TrainingArguments, pipeline

missing = []
for extra in ("datasets", "sklearn", "evaluate"):
    try:
        __import__(extra)
    except ImportError:
        missing.append(extra)
config = sal_hf.SALConfig(input_size=16, image_size=[4, 4], hidden_sizes=[8], num_labels=2, num_areas=2,
                          id2label={0: "dark", 1: "light"}, label2id={"dark": 0, "light": 1})
model = AutoModelForImageClassification.from_config(config)
rows = [{"pixel_values": torch.full((4, 4), float(i % 2)), "labels": i % 2} for i in range(16)]
trainer = sal_hf.SALTrainer(model=model, args=TrainingArguments("run", max_steps=2, report_to="none"),
                            train_dataset=rows, processing_class=sal_hf.SALImageProcessor.from_sal_config(config))
trainer.train()
trainer.save_model("model")
classify = pipeline("image-classification", model="model")
labels = {entry["label"] for entry in classify(Image.new("RGB", (8, 8), (255, 255, 255)))}
print(json.dumps({"file": sal_hf.__file__, "missing": missing, "labels": sorted(labels)}))
"""


def run(command: list, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True, **kwargs)
    assert result.returncode == 0, f"{command}:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    return result


@pytest.mark.slow  # builds the wheel and a virtualenv, installs torch and the dependencies: 3-5 minutes
def test_the_wheel_installs_without_extras_and_trains_the_readme_quickstart(tmp_path):
    # Build from a copy, so that setuptools' build/ and egg-info never land in the checkout.
    source = tmp_path / "source"
    shutil.copytree(ROOT / "sal_hf", source / "sal_hf", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "dist"), str(source)])
    (wheel,) = (tmp_path / "dist").glob("sal_hf-*.whl")

    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", str(venv)])
    python = str(venv / "bin" / "python")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    pip = [python, "-m", "pip", "install", "-q", "--retries", "10", "--timeout", "60"]
    run([*pip, "torch==2.13.0"], env=env, timeout=1200)  # the CPU wheel, before pip can pick a CUDA build
    run([*pip, str(wheel)], env=env, timeout=1200)  # no extras: what `pip install sal-hf` gives

    work = tmp_path / "elsewhere"  # not the repository: the installed package must be what runs
    work.mkdir()
    result = run([python, "-c", BASE_INSTALL_SCRIPT], cwd=work, env=env, timeout=900)
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["file"].startswith(str(venv)), report
    assert report["missing"] == ["datasets", "sklearn", "evaluate"]  # the extras really are absent
    assert report["labels"] == ["dark", "light"]

    # The quickstart loads its data with sal_hf.data, which the `data` extra brings.
    run([*pip, f"{wheel}[data]"], env=env, timeout=1200)
    code = re.search(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S).group(1)
    code = code.replace("num_train_epochs=10", "num_train_epochs=1")  # the flow, not the accuracy
    check = textwrap.dedent("""
        import sal_hf, torch
        assert sal_hf.__file__.startswith(sys.argv[1]), sal_hf.__file__
        images = data["test"][:16]["pixel_values"]
        # Bit-identity of save -> load is tests/test_readme.py's; here, that the installed package round-trips.
        torch.testing.assert_close(
            again.eval()(pixel_values=images).logits, model.eval()(pixel_values=images).logits, rtol=0, atol=1e-5
        )
        print("QUICKSTART OK")
    """)
    (work / "quickstart.py").write_text("import sys\n" + code + check)
    result = run([python, "quickstart.py", str(venv)], cwd=work, env=env, timeout=900)
    assert "QUICKSTART OK" in result.stdout
    assert (work / "out" / "model.safetensors").is_file()
