"""trainer/metrics.py against scikit-learn on the same predictions: every figure it reports."""
from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn import metrics as skm

from automl_images.trainer import metrics

LABELS7 = [f"c{i}" for i in range(7)]


def random_probabilities(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    logits = rng.normal(0, 2, (n, k))
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    return p / p.sum(axis=1, keepdims=True)


@pytest.fixture
def multiclass_case():
    """7 classes (so top-5 applies); class 6 never occurs in the targets, and the predictions are
    right about half the time."""
    rng = np.random.default_rng(0)
    n = 60
    y = rng.integers(0, 6, n)
    p = random_probabilities(rng, n, 7)
    p[np.arange(n)[: n // 2], y[: n // 2]] += 3.0   # make half of them confidently right
    p /= p.sum(axis=1, keepdims=True)
    return y, p


def test_multiclass_matches_sklearn(multiclass_case):
    y, p = multiclass_case
    m = metrics.multiclass(y, p, LABELS7)
    predicted = p.argmax(axis=1)
    assert m["samples"] == len(y)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, predicted))
    assert m["accuracy_top5"] == pytest.approx(skm.top_k_accuracy_score(y, p, k=5, labels=range(7)))
    assert m["log_loss"] == pytest.approx(skm.log_loss(y, p, labels=range(7)))
    for average in ("macro", "micro", "weighted"):
        precision, recall, f1, _ = skm.precision_recall_fscore_support(y, predicted, average=average,
                                                                        zero_division=0)
        assert m[f"precision_score_{average}"] == pytest.approx(precision), average
        assert m[f"recall_score_{average}"] == pytest.approx(recall), average
        assert m[f"f1_score_{average}"] == pytest.approx(f1), average
    # The names kept for the primary metrics.
    assert {"precision_score_weighted", "recall_score_weighted", "f1_score_weighted"} <= set(m)

    every = list(range(7))
    assert m["confusion_matrix"] == {"labels": LABELS7,
                                     "matrix": skm.confusion_matrix(y, predicted, labels=every).tolist()}
    precision, recall, f1, support = skm.precision_recall_fscore_support(y, predicted, labels=every,
                                                                         zero_division=0)
    for i, name in enumerate(LABELS7):
        row = m["per_class"][name]
        assert row["precision"] == pytest.approx(precision[i]) and row["recall"] == pytest.approx(recall[i])
        assert row["f1"] == pytest.approx(f1[i]) and row["support"] == support[i]


def test_multiclass_auc_skips_classes_absent_from_the_sample(multiclass_case):
    y, p = multiclass_case
    m = metrics.multiclass(y, p, LABELS7)
    # Class 6 has no positives: it has no AUC and is left out of both averages.
    assert m["per_class"]["c6"]["auc"] is None
    per_class = [skm.roc_auc_score(y == c, p[:, c]) for c in range(6)]
    support = np.bincount(y, minlength=6)
    for c in range(6):
        assert m["per_class"][f"c{c}"]["auc"] == pytest.approx(per_class[c])
    assert m["auc_macro"] == pytest.approx(np.mean(per_class))
    assert m["auc_weighted"] == pytest.approx(np.average(per_class, weights=support))


def test_multiclass_auc_with_every_class_present_is_sklearns_one_vs_rest():
    rng = np.random.default_rng(1)
    y = np.tile(np.arange(4), 10)
    p = random_probabilities(rng, len(y), 4)
    m = metrics.multiclass(y, p, ["a", "b", "c", "d"])
    assert m["auc_macro"] == pytest.approx(skm.roc_auc_score(y, p, multi_class="ovr", average="macro"))
    assert m["auc_weighted"] == pytest.approx(skm.roc_auc_score(y, p, multi_class="ovr", average="weighted"))
    assert "accuracy_top5" not in m  # 4 classes: top-5 would always be 1


def test_multiclass_with_a_single_class_in_the_sample_has_no_auc():
    y = np.zeros(4, dtype=int)
    p = np.array([[0.8, 0.1, 0.1], [0.5, 0.3, 0.2], [0.1, 0.8, 0.1], [0.4, 0.3, 0.3]])
    m = metrics.multiclass(y, p, ["a", "b", "c"])
    assert m["auc_macro"] is None and m["auc_weighted"] is None
    assert m["accuracy"] == 0.75
    # The macro average covers the classes that occur in the targets or the predictions: not c.
    assert m["precision_score_macro"] == pytest.approx((1.0 + 0.0) / 2)  # a: 3 of 3, b: 0 of 1
    precision, recall, f1, _ = skm.precision_recall_fscore_support(y, p.argmax(axis=1), average="macro",
                                                                    zero_division=0)
    assert (m["precision_score_macro"], m["recall_score_macro"], m["f1_score_macro"]) == \
        pytest.approx((precision, recall, f1))
    json.dumps(m)  # JSON-ready: None, not NaN


def test_multiclass_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="shape"):
        metrics.multiclass([0, 1], np.ones((2, 3)) / 3, ["a", "b"])
    with pytest.raises(ValueError, match="class indices"):
        metrics.multiclass([0, 5], np.ones((2, 2)) / 2, ["a", "b"])


@pytest.fixture
def multilabel_case():
    rng = np.random.default_rng(2)
    n, k = 40, 5
    t = (rng.random((n, k)) < 0.35).astype(int)
    t[:, 4] = 0                      # a label with no positives in the sample
    t[0] = 0                         # a sample without labels ...
    p = np.clip(t * 0.45 + rng.random((n, k)) * 0.6, 0, 1)
    p[0] = 0.1                       # ... and without predictions: IoU 1
    return t, p


def test_multilabel_matches_sklearn(multilabel_case):
    t, p = multilabel_case
    labels = ["a", "b", "c", "d", "e"]
    m = metrics.multilabel(t, p, labels)
    q = (p >= 0.5).astype(int)
    assert m["samples"] == len(t) and m["threshold"] == 0.5
    assert m["iou"] == pytest.approx(skm.jaccard_score(t, q, average="samples", zero_division=1))
    # Averages over the labels that occur in the targets or the predictions.
    present = [j for j in range(5) if t[:, j].any() or q[:, j].any()]
    for average in ("macro", "micro", "weighted"):
        precision, recall, f1, _ = skm.precision_recall_fscore_support(
            t, q, average=average, labels=present, zero_division=0)
        assert m[f"precision_score_{average}"] == pytest.approx(precision), average
        assert m[f"recall_score_{average}"] == pytest.approx(recall), average
        assert m[f"f1_score_{average}"] == pytest.approx(f1), average
    precision, recall, f1, support = skm.precision_recall_fscore_support(t, q, average=None, zero_division=0)
    for j, name in enumerate(labels):
        row = m["per_class"][name]
        assert (row["precision"], row["recall"], row["f1"]) == pytest.approx((precision[j], recall[j], f1[j]))
        assert row["support"] == support[j]
    # Average precision: per label with positives, and their mean (mAP).
    with_positives = [j for j in range(5) if t[:, j].any()]
    assert m["per_class"]["e"]["average_precision"] is None
    for j in with_positives:
        assert m["per_class"][labels[j]]["average_precision"] == \
            pytest.approx(skm.average_precision_score(t[:, j], p[:, j]))
    assert m["average_precision_score_macro"] == pytest.approx(
        skm.average_precision_score(t[:, with_positives], p[:, with_positives], average="macro"))
    assert m["average_precision_score_weighted"] == pytest.approx(
        skm.average_precision_score(t[:, with_positives], p[:, with_positives], average="weighted"))


def test_iou_examples():
    targets = np.array([[1, 1, 0], [1, 0, 0], [0, 0, 0], [0, 0, 0]])
    predicted = np.array([[1, 0, 0], [1, 0, 0], [0, 0, 0], [0, 1, 0]])
    # 1/2, 1, empty-empty 1, 0/1
    assert metrics.jaccard_samples(targets, predicted) == pytest.approx((0.5 + 1 + 1 + 0) / 4)


def test_multilabel_threshold_is_inclusive_and_configurable():
    t = np.array([[1, 0], [0, 1]])
    p = np.array([[0.5, 0.2], [0.3, 0.7]])
    assert metrics.multilabel(t, p, ["a", "b"])["iou"] == 1.0
    assert metrics.multilabel(t, p, ["a", "b"], threshold=0.6)["iou"] == 0.5
