"""Metrics through `evaluate`, from metric modules that sal-hf ships (`sal_hf/metrics/<name>/<name>.py`).

The Hub's metric scripts are unreachable offline, so the modules are loaded by path. `evaluate` is imported
only when a metric is loaded: `import sal_hf` does not import it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np


if TYPE_CHECKING:
    import evaluate
    from transformers import EvalPrediction


METRICS_DIR = Path(__file__).parent
METRICS = tuple(sorted(path.name for path in METRICS_DIR.iterdir() if (path / f"{path.name}.py").is_file()))


def load_metric(name: str = "accuracy", **kwargs: Any) -> evaluate.EvaluationModule:
    """`evaluate.load` of one of the shipped metric modules (see `METRICS`), by path."""
    if name not in METRICS:
        raise ValueError(f"Unknown metric {name!r}; sal-hf ships {METRICS}. Other metrics: evaluate.load(path).")
    import evaluate

    return evaluate.load(str(METRICS_DIR / name), **kwargs)


def classification_metrics(num_labels: int | None = None) -> Callable[[EvalPrediction], dict[str, float]]:
    """A `compute_metrics` for `Trainer`: accuracy (and balanced accuracy with `num_labels`) of the argmax of
    the logits, through the shipped `accuracy` module."""
    metric = load_metric("accuracy")

    def compute_metrics(prediction: EvalPrediction) -> dict[str, float]:
        logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
        return metric.compute(
            predictions=np.argmax(logits, axis=-1), references=prediction.label_ids, num_labels=num_labels
        )

    return compute_metrics


__all__ = ["METRICS", "classification_metrics", "load_metric"]
