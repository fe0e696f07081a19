"""scripts/continual.py's metrics: forgetting, task-masked accuracy and the task/area mutual information."""

import sys
from pathlib import Path

import pytest
import torch


sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
continual = pytest.importorskip("continual")


def test_average_final_accuracy_and_forgetting_are_best_minus_final():
    # R[i][j]: task j after training task i; the last task cannot have been forgotten yet.
    matrix = [[90, 10, 10], [60, 80, 10], [70, 50, 95]]
    average, forgetting = continual.summary({"m": matrix}, "m")
    assert average == pytest.approx((70 + 50 + 95) / 3)
    assert forgetting == pytest.approx(((90 - 70) + (80 - 50)) / 2)  # best (not the previous) minus final


def test_task_incremental_accuracy_masks_the_other_classes():
    logits = torch.tensor([[5.0, 1.0, 2.0, 0.0], [5.0, 0.0, 1.0, 3.0]])  # class 0 wins unmasked
    labels = torch.tensor([2, 3])
    assert continual.task_accuracy(logits, labels, (2, 3), masked=False) == 0.0
    assert continual.task_accuracy(logits, labels, (2, 3), masked=True) == 100.0


def test_mutual_information_is_one_for_tasks_on_their_own_areas_and_zero_for_shared_ones():
    own = [[50, 0, 0, 0], [0, 50, 0, 0], [0, 0, 25, 25]]
    assert continual.normalised_mutual_information([[10, 10], [10, 10]]) == pytest.approx(0.0, abs=1e-12)
    assert 0.8 < continual.normalised_mutual_information(own) <= 1.0
    assert continual.normalised_mutual_information([[50, 0], [0, 50]]) == pytest.approx(1.0)
