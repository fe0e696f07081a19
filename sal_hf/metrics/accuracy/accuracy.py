"""Accuracy (and per-class recall) of a classifier, as an `evaluate` metric module that sal-hf ships.

Loaded by path, so nothing is fetched from the Hub:

    >>> from sal_hf.metrics import load_metric
    >>> load_metric("accuracy").compute(predictions=[0, 1, 1], references=[0, 1, 0])
    {'accuracy': 0.6666666666666666}
"""

import datasets
import evaluate
import numpy as np


_DESCRIPTION = """Share of predictions equal to the reference label. With `num_labels`, also the balanced accuracy
(mean per-class recall over the classes present in the references)."""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[int]`): predicted class ids.
    references (`list[int]`): true class ids.
    normalize (`bool`, defaults to `True`): return the share; `False` returns the count of correct predictions.
    num_labels (`int`, *optional*): also return `balanced_accuracy`.
Returns:
    `accuracy` (`float`, or `int` with `normalize=False`), and `balanced_accuracy` (`float`) with `num_labels`.
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Accuracy(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references, normalize: bool = True, num_labels: int | None = None) -> dict:
        predictions, references = np.asarray(predictions), np.asarray(references)
        if predictions.shape != references.shape:
            raise ValueError(f"predictions and references differ in shape: {predictions.shape} vs {references.shape}.")
        if predictions.size == 0:
            raise ValueError("No predictions to score: predictions and references are empty.")
        upper = num_labels if num_labels is not None else np.inf
        for name, ids in (("references", references), ("predictions", predictions)):
            bad = ids[(ids < 0) | (ids >= upper)]
            if bad.size:
                raise ValueError(
                    f"{name} hold the class id {bad[0]}, outside [0, {upper}) (num_labels={num_labels}): class ids "
                    "count from 0; drop ignored rows (e.g. label -100) before scoring, or pass the right num_labels."
                )
        correct = predictions == references
        result = {"accuracy": float(correct.mean()) if normalize else int(correct.sum())}
        if num_labels is not None:
            recalls = [
                correct[references == label].mean() for label in range(num_labels) if (references == label).any()
            ]
            result["balanced_accuracy"] = float(np.mean(recalls))
        return result
