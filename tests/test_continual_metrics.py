"""scripts/continual.py's metrics: forgetting, task-masked accuracy and the task/area mutual information."""

import math
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


def test_task_oracle_routes_every_layer_by_task_and_misroutes_the_asked_share():
    from sal_hf import SALConfig, SALForImageClassification

    config = SALConfig(input_size=12, hidden_sizes=[8, 8], num_labels=10, num_areas=16, output_areas=True)
    model = SALForImageClassification(config)
    oracle = continual.install_task_oracle(model, misroute=0.0, seed=0)
    assert not model.routers  # every AreaRouter replaced, so routing statistics and losses have nothing to do
    labels = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, 8, 9])
    oracle.route(continual.TASK_OF_LABEL[labels])
    areas = model(pixel_values=torch.randn(10, 12)).areas
    assert len(areas) == 3  # two hidden layers and the per-area output layer
    for area in areas:
        assert area.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    with pytest.raises(RuntimeError, match="route"):
        model(pixel_values=torch.randn(4, 12))

    noisy = continual.TaskOracleRouter(misroute=0.3, seed=0)
    task = torch.full((20_000,), 2)
    noisy.route(task)
    wrong = noisy.area != task
    assert abs(float(wrong.float().mean()) - 0.3) < 0.02
    assert set(noisy.area[wrong].tolist()) == {0, 1, 3, 4}  # another task's area, never an unused one


def test_paired_differences_and_claim_routing_shares_by_hand():
    """The report's paired table (method minus reference, per seed both ran) and a claim row's routing line."""

    def record(seed, final, forgetting, areas=None):  # a 5-task matrix with the given final mean and forgetting
        rows = [[final] * 5 for _ in range(5)]
        for j in range(4):  # each of the first four tasks was best right after its own training
            rows[j][j] = final + forgetting
        shares = areas or [[0.0] * 16 for _ in range(5)]
        return {"seed": seed, "task_incremental": rows, "area_share_final": shares}

    claims = [[1 / 3 if 3 * j <= k < 3 * j + 3 else 0.0 for k in range(16)] for j in range(5)]
    claims[1] = [0.5 if k in (3, 0) else 0.0 for k in range(16)]  # task 2: half its images reach task 1's claim
    method = [record(s, 90.0 + s, 2.0, claims) for s in (0, 1, 2)]
    for r in method:
        r.update(claims_at_batch=[0, 6, 12, 18, 24], train_per_task=[65] * 5, epochs_per_task=2, batch_size=32)
    by_method = {"shift-nodual-out-p8": method, "bp": [record(s, 88.0, 2.0 + 4 * s) for s in (1, 2, 3)]}
    (row,) = [line for line in continual.paired_lines(by_method) if line.startswith("| SAL-16")]
    # seeds 1, 2: forgetting 2 - 6 = -4 and 2 - 10 = -8 (mean -6, s.e. 2); accuracy 91 - 88, 92 - 88 (+3.5, 0.5)
    assert "| BP | 2 | -6.00 (2.00) | 2 of 2 | +3.50 (0.50) | 2 of 2 |" in row
    (line,) = [line for line in continual.claim_lines(by_method) if line]
    assert "in 3 of 3 runs" in line and "1.00 / 0.50 / 1.00 / 1.00 / 1.00 (10.0% misrouted" in line
    method[0]["claims_at_batch"][4] = 25  # a late claim: that run's claims are no longer the tasks'
    (line,) = [line for line in continual.claim_lines(by_method) if line]
    assert "in 2 of 3 runs" in line


def test_the_ceilings_ppca_likelihood_is_the_gaussian_with_its_low_rank_covariance():
    """`ppca_log_likelihood` against torch's MultivariateNormal with covariance U diag(v) U^T + s (I - U U^T), where
    U, v are the top directions and variances of the rows and s the mean variance of the rest."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(200, 6, generator=gen, dtype=torch.float64) @ torch.randn(6, 6, generator=gen, dtype=torch.float64)
    model = continual.ppca(x, 2)
    mean, directions, variances, rest = model
    covariance = directions @ torch.diag(variances) @ directions.T + rest * (torch.eye(6) - directions @ directions.T)
    points = torch.randn(5, 6, generator=gen, dtype=torch.float64)
    expected = torch.distributions.MultivariateNormal(mean, covariance).log_prob(points) + 3 * math.log(2 * math.pi)
    assert torch.allclose(continual.ppca_log_likelihood(points, model), expected, atol=1e-9)
    full = torch.distributions.MultivariateNormal(mean, torch.cov(x.T, correction=0)).log_prob(points)
    assert not torch.allclose(expected - 3 * math.log(2 * math.pi), full, atol=1e-3)  # rank 2 of 6: an approximation
