"""Fine-tuning metrics and losses against hand-computed values, scikit-learn and scipy."""

from __future__ import annotations

import pytest
import torch
from scipy import stats
from sklearn import metrics as skm

from flava.tasks.metrics import TaskMetrics, VQAAccuracy
from flava.tasks.task_data import answer_vocabulary, normalize_answer, vqa_soft_scores
from flava.training.finetune_module import task_loss


def test_vqa_soft_accuracy_worked_example():
    vocab = {"2": 0, "3": 1, "4": 2, "5": 3, "yes": 4, "no": 5}
    # q1: six humans say 2 (one spelled "two"), three say 3 ("three" once), one says 4
    q1 = ["2", "2", "2", "2", "two", "3", "3", "three", "4", "2"]
    # q2: two say yes, eight say no;  q3: everyone says "a red one", not in the vocabulary
    q2 = ["yes", "Yes"] + ["no"] * 8
    q3 = ["a red one"] * 10
    s1, s2, s3 = (vqa_soft_scores(q, vocab) for q in (q1, q2, q3))
    assert s1 == {0: 1.0, 1: 1.0, 2: pytest.approx(1 / 3)}  # min(6/3, 1), min(3/3, 1), 1/3
    assert s2 == {4: pytest.approx(2 / 3), 5: 1.0}
    assert s3 == {}
    target = torch.zeros(3, len(vocab))
    for row, scores in enumerate((s1, s2, s3)):
        for index, score in scores.items():
            target[row, index] = score
    metric = VQAAccuracy()
    # predictions: "4" (1/3 credit), "yes" (2/3 credit), "5" (nobody said it: 0)
    metric.update(torch.tensor([2, 4]), target[:2])
    logits = torch.full((1, len(vocab)), -5.0)
    logits[0, 3] = 5.0
    metric.update(logits, target[2:])
    assert float(metric.compute()) == pytest.approx((1 / 3 + 2 / 3 + 0) / 3)


def test_answer_normalisation_and_vocabulary():
    assert normalize_answer("Two") == "2"
    assert normalize_answer("the dog.") == "dog"
    assert normalize_answer("1,000") == "1000"
    assert normalize_answer("3.5") == "3.5"
    assert normalize_answer(" Yes! ") == "yes"
    assert normalize_answer("don't know") == "dont know"
    vocab = answer_vocabulary([["yes", "yes", "no"], ["no", "two", "2", "2"], ["cat"]], 2)
    assert vocab == ["2", "no"]  # 2 x3, no x2 (ties by name), then cat / yes cut


def _random_binary(n: int = 57, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    targets = torch.randint(0, 2, (n,), generator=g)
    logits = torch.randn(n, 2, generator=g) + 0.8 * torch.nn.functional.one_hot(targets, 2)
    return logits, targets


def test_binary_metrics_match_sklearn():
    logits, targets = _random_binary()
    m = TaskMetrics(["accuracy", "f1", "mcc", "auroc"], "classification", 2)
    m.update(logits[:30], targets[:30])  # two batches accumulate
    m.update(logits[30:], targets[30:])
    got = m.compute()
    preds = logits.argmax(1).numpy()
    prob = logits.softmax(1)[:, 1].numpy()
    y = targets.numpy()
    assert got["accuracy"] == pytest.approx(skm.accuracy_score(y, preds), abs=1e-6)
    assert got["f1"] == pytest.approx(skm.f1_score(y, preds), abs=1e-6)
    assert got["mcc"] == pytest.approx(skm.matthews_corrcoef(y, preds), abs=1e-5)
    assert got["auroc"] == pytest.approx(skm.roc_auc_score(y, prob), abs=1e-6)
    m.reset()
    m.update(logits[:10], targets[:10])
    assert m.compute()["accuracy"] == pytest.approx(skm.accuracy_score(y[:10], preds[:10]))


def test_multiclass_metrics_match_sklearn():
    g = torch.Generator().manual_seed(1)
    targets = torch.randint(0, 3, (64,), generator=g)
    logits = torch.randn(64, 3, generator=g) + torch.nn.functional.one_hot(targets, 3)
    m = TaskMetrics(["accuracy", "f1", "mcc", "auroc"], "classification", 3)
    m.update(logits, targets)
    got = m.compute()
    preds, y = logits.argmax(1).numpy(), targets.numpy()
    probs = logits.softmax(1).numpy()
    assert got["accuracy"] == pytest.approx(skm.accuracy_score(y, preds), abs=1e-6)
    assert got["f1"] == pytest.approx(skm.f1_score(y, preds, average="macro"), abs=1e-6)
    assert got["mcc"] == pytest.approx(skm.matthews_corrcoef(y, preds), abs=1e-5)
    assert got["auroc"] == pytest.approx(
        skm.roc_auc_score(y, probs, multi_class="ovr", average="macro"), abs=1e-5
    )


def test_regression_metrics_match_scipy():
    g = torch.Generator().manual_seed(2)
    targets = torch.rand(40, generator=g) * 5
    preds = targets + torch.randn(40, generator=g)
    m = TaskMetrics(["pearson", "spearman"], "regression", 1)
    m.update(preds[:25, None], targets[:25])
    m.update(preds[25:, None], targets[25:])
    got = m.compute()
    assert got["pearson"] == pytest.approx(stats.pearsonr(preds, targets)[0], abs=1e-5)
    assert got["spearman"] == pytest.approx(stats.spearmanr(preds, targets)[0], abs=1e-5)


def test_losses():
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.0, 0.3, -0.2]])
    soft = torch.tensor([[1.0, 0.0, 1 / 3], [0.0, 2 / 3, 0.0]])
    manual = -(
        soft * torch.log(torch.sigmoid(logits)) + (1 - soft) * torch.log(torch.sigmoid(-logits))
    )
    assert task_loss(logits, soft, "vqa") == pytest.approx(float(manual.sum() / 2), rel=1e-6)
    reg = task_loss(torch.tensor([[1.0], [3.0]]), torch.tensor([2.0, 2.5]), "regression")
    assert reg == pytest.approx((1 + 0.25) / 2)
    ce = task_loss(logits, torch.tensor([0, 1]), "classification")
    assert ce == pytest.approx(
        float(torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1])))
    )
