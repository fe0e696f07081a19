"""The README's quickstart runs as written."""

import re
from pathlib import Path

import torch


README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_quickstart_runs(tmp_path, monkeypatch):
    code = re.search(r"```python\n(.*?)```", README.read_text(), re.S).group(1)
    code = code.replace("num_train_epochs=10", "num_train_epochs=1")  # the flow, not the accuracy
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    model, again, data = namespace["model"], namespace["again"], namespace["data"]
    images = data["test"][:16]["pixel_values"]
    model.eval()
    assert torch.equal(model(pixel_values=images).logits, again.eval()(pixel_values=images).logits)
    assert (tmp_path / "out" / "model.safetensors").exists()
