"""The benchmark scripts run (tiny sizes, CPU): the GPU check's CPU-safe path is not dead code."""

import os
import subprocess
import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_runs_bench_and_scale_on_cpu_and_writes_markdown(tmp_path):
    out = tmp_path / "check.md"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "scripts/gpu_check.py", "--device", "cpu", "--tiny", "--out", str(out)]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    text = out.read_text()
    assert "FAILED" not in text
    for expected in ("| mlp 784-64-64-10 | sgd | bp |", "| mlp 784-64-64-10 | sgd | sal-16 |", "bp-dense"):
        assert expected in text
    assert "| mlp 784-64-64-10 | sgd | sal-16-masked |" in text  # both area implementations are timed
    assert "| mlp 784-64-64-10 | sgd | sal-16-in-place |" in text
    assert "| mlp 784-64-64-10 | sgd | sal-16-defaults |" in text  # today's SALConfig() is timed too
    assert "Kernel floor of the 16-area model's SGD step" in text and "- mlp: forward " in text
    compiled = text.split("## The same step, compiled")[1].split("## 1e9")[0]
    assert "compute_loss compiled (`torch.compile`, backend `eager`)" in compiled
    assert "| mlp 784-64-64-10 | sgd | sal-16-masked |" in compiled
    assert "| area_implementation | split |" in text
    assert "| reload_identical_logits | True |" in text
    assert "| parameters | 245386 |" in text


def test_feedback_drift_records_each_epoch_and_reports_them(tmp_path):
    """scripts/feedback_drift.py (docs/FEEDBACK.md's drift table) runs and its report reads what it recorded."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    script, results, page = "scripts/feedback_drift.py", str(tmp_path / "drift"), tmp_path / "page.md"
    for command in (
        ["run", "--dataset", "digits", "--epochs", "2", "--decays", "1e-3", "0", "--results", results],
        ["report", "--results", results, "--page", str(page)],
    ):
        done = subprocess.run([sys.executable, script, *command], cwd=ROOT, env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    records = sorted((tmp_path / "drift").glob("*.json"))
    assert [r.name for r in records] == [
        "dfa__digits__decay0.001__lr0.001__s0.json",
        "dfa__digits__decay0__lr0.001__s0.json",
    ]
    text = page.read_text()
    assert text.count("| DFA + Kolen-Pollack, digits, 0.001, 0 | 0.001 |") == 2  # epochs 1 and 2
    assert text.count("| DFA + Kolen-Pollack, digits, 0.001, 0 | 0 |") == 2
