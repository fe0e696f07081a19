"""The shipped `evaluate` metric module, and that `import sal_hf` stays light."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from transformers import EvalPrediction

from sal_hf.metrics import METRICS, classification_metrics, load_metric


ROOT = Path(__file__).resolve().parent.parent


def test_accuracy_module_loads_by_path_and_computes():
    metric = load_metric("accuracy")
    result = metric.compute(predictions=[0, 1, 1, 2, 2], references=[0, 1, 0, 2, 1], num_labels=3)
    assert result["accuracy"] == pytest.approx(3 / 5)
    assert result["balanced_accuracy"] == pytest.approx((1 / 2 + 1 / 2 + 1) / 3)
    assert metric.compute(predictions=[1, 1], references=[1, 0], normalize=False) == {"accuracy": 1}
    assert "accuracy" in METRICS


@pytest.mark.parametrize(
    "inputs, says",
    [
        (
            dict(predictions=[0, 1], references=[0, 5], num_labels=3),
            r"references hold the class id 5, outside \[0, 3\)",
        ),
        (dict(predictions=[0, 1], references=[0, -100]), r"references hold the class id -100.*drop ignored rows"),
        (dict(predictions=[0, 7], references=[0, 1], num_labels=3), "predictions hold the class id 7"),
        (dict(predictions=[], references=[]), "No predictions to score"),
    ],
)
def test_accuracy_refuses_ids_outside_the_classes_and_empty_input(inputs, says):
    """An out-of-range reference counted in accuracy and not in balanced accuracy (0.5 and 1.0), -100 counted as a
    wrong answer, and empty input gave nan with a RuntimeWarning."""
    with pytest.raises(ValueError, match=says):
        load_metric("accuracy").compute(**inputs)


def test_classification_metrics_take_the_argmax_of_the_logits():
    logits = np.array([[0.1, 2.0], [3.0, -1.0], [0.0, 0.5], [1.0, 0.0]])
    compute = classification_metrics(num_labels=2)
    result = compute(EvalPrediction(predictions=logits, label_ids=np.array([1, 0, 0, 0])))
    assert result["accuracy"] == pytest.approx(0.75) and result["balanced_accuracy"] == pytest.approx(5 / 6)


def test_unknown_metric_is_rejected():
    with pytest.raises(ValueError, match="Unknown metric 'f1'"):
        load_metric("f1")


IMPORT_PROBE = """
import json, sys, time
start = time.perf_counter()
import torch
from transformers import PreTrainedModel, Trainer
dependencies = time.perf_counter() - start
before = set(sys.modules)
start = time.perf_counter()
import sal_hf
own = time.perf_counter() - start
added = {name.split(".")[0] for name in set(sys.modules) - before}
heavy = sorted(added & {"evaluate", "datasets", "sklearn", "matplotlib", "tensorboard", "PIL"})
print(json.dumps({"dependencies": dependencies, "own": own, "heavy": heavy, "evaluate": "evaluate" in sys.modules}))
"""


def test_import_is_fast_and_does_not_import_evaluate():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", IMPORT_PROBE], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    timing = json.loads(result.stdout.strip().splitlines()[-1])
    print(
        f"import torch + transformers (PreTrainedModel, Trainer): {timing['dependencies']:.2f} s; sal_hf on top: {timing['own']:.2f} s"
    )
    assert timing["heavy"] == [] and not timing["evaluate"]
    # What sal_hf adds to its unavoidable dependencies. (The whole import, torch and transformers included, is
    # ~4-12 s wall on this shared 2-core machine depending on load; the README records it.)
    assert timing["own"] < 3.0
