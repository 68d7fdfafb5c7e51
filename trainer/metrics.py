"""Classification metrics, as plain dicts: one module used by both classification adapters (each
evaluation's `metrics/NNNNNN.json`) and by `automl-images evaluate`.

    multiclass(targets, probabilities, labels)   targets: class indices; probabilities: (n, k) rows
    multilabel(targets, probabilities, labels)   targets: (n, k) 0/1; probabilities: (n, k) sigmoids

Counting metrics (accuracy, precision, recall, F1, IoU, the confusion matrix) are computed here from
the counts, with scikit-learn's semantics (`zero_division=0`); ranking metrics (ROC AUC, average
precision) call scikit-learn one class at a time, so that a class absent from the sample is skipped
(its value is None) instead of failing the whole evaluation. Every value is JSON-ready: Python
floats and ints, lists, None where a figure is undefined.

Bounded at any number of classes (one metrics file is written per evaluation): `per_class` lists
every class up to MAX_PER_CLASS classes, and beyond that the MAX_PER_CLASS of lowest F1 (the ones to
look at), with `per_class_omitted` counting the others; the confusion matrix, k x k numbers, is
kept up to MAX_CONFUSION_CLASSES classes and never built beyond.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from sklearn import metrics as skm

TOP_K = 5                   # accuracy_top5, reported when there are more than TOP_K classes
MULTILABEL_THRESHOLD = 0.5  # a label is predicted when its probability is at least this
MAX_PER_CLASS = 100         # classes listed in per_class: 10,000 classes would add ~2 MB to every epoch's file
MAX_CONFUSION_CLASSES = 100  # a larger confusion matrix is unreadable, and k x k grows fast (10,000: 800 MB)


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, 0 where the denominator is 0 (scikit-learn's zero_division=0)."""
    numerator = np.asarray(numerator, dtype=np.float64)
    denominator = np.asarray(denominator, dtype=np.float64)
    out = np.zeros_like(numerator)
    np.divide(numerator, denominator, out=out, where=denominator > 0)
    return out


def _counts_scores(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per-class precision, recall and F1 from true/false positive and false negative counts."""
    precision = _ratio(tp, tp + fp)
    recall = _ratio(tp, tp + fn)
    f1 = _ratio(2 * tp, 2 * tp + fp + fn)
    return precision, recall, f1


def _averages(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray, support: np.ndarray,
              present: np.ndarray) -> dict[str, float]:
    """precision/recall/f1 `_macro` (mean over the `present` classes), `_micro` (from the summed
    counts) and `_weighted` (mean weighted by support)."""
    precision, recall, f1 = _counts_scores(tp, fp, fn)
    micro = _counts_scores(tp.sum(keepdims=True), fp.sum(keepdims=True), fn.sum(keepdims=True))
    out: dict[str, float] = {}
    for name, per_class, micro_value in zip(("precision", "recall", "f1"), (precision, recall, f1), micro):
        out[f"{name}_score_macro"] = float(per_class[present].mean()) if present.any() else 0.0
        out[f"{name}_score_micro"] = float(micro_value[0])
        out[f"{name}_score_weighted"] = float((per_class * support).sum() / support.sum()) if support.sum() else 0.0
    return out


def _binary_or_none(metric, positives: np.ndarray, scores: np.ndarray) -> float | None:
    """A ranking metric of one class, or None when the sample lacks its positives (or, for AUC,
    its negatives): the figure is undefined there, and scikit-learn would fail or warn."""
    if metric is skm.roc_auc_score and positives.all():
        return None
    if not positives.any():
        return None
    return float(metric(positives, scores))


def _weighted_mean(values: Sequence[float | None], weights: np.ndarray) -> tuple[float | None, float | None]:
    """(mean, support-weighted mean) over the defined values; None when none is."""
    defined = [i for i, v in enumerate(values) if v is not None]
    if not defined:
        return None, None
    v = np.array([values[i] for i in defined], dtype=np.float64)
    w = weights[defined].astype(np.float64)
    return float(v.mean()), float((v * w).sum() / w.sum()) if w.sum() else None


def _per_class(labels: Sequence[str], f1: np.ndarray, row) -> dict[str, Any]:
    """`per_class` ({name: row(i)}) for at most MAX_PER_CLASS classes, those of lowest F1 when there
    are more (ties: label order), and how many were left out."""
    k = len(labels)
    if k <= MAX_PER_CLASS:
        return {"per_class": {name: row(i) for i, name in enumerate(labels)}}
    listed = sorted(np.argsort(f1, kind="stable")[:MAX_PER_CLASS].tolist())
    return {"per_class": {labels[i]: row(i) for i in listed}, "per_class_omitted": k - MAX_PER_CLASS}


def multiclass(targets: Sequence[int], probabilities: np.ndarray, labels: Sequence[str]) -> dict[str, Any]:
    """Metrics of a multi-class prediction: the predicted class is the most probable one.

    - accuracy; accuracy_top5 when there are more than 5 classes
    - precision_score_*, recall_score_*, f1_score_* for * in macro, micro, weighted. Macro averages
      the classes that occur in the targets or the predictions (scikit-learn without `labels=`);
      a class absent from both has no precision or recall to average.
    - log_loss: probabilities clipped to [eps, 1 - eps] as scikit-learn does
    - auc_macro, auc_weighted: one-vs-rest ROC AUC over the classes that have both positives and
      negatives in the sample (None when no class has)
    - confusion_matrix: {"labels": [...], "matrix": rows = true class, columns = predicted}
      (up to MAX_CONFUSION_CLASSES classes)
    - per_class: {name: {precision, recall, f1, support, auc}} (capped: see the module's docstring)
    """
    y = np.asarray(targets, dtype=np.int64)
    p = np.asarray(probabilities, dtype=np.float64)
    k = len(labels)
    if p.ndim != 2 or p.shape != (len(y), k):
        raise ValueError(f"probabilities must have shape ({len(y)}, {k}), got {p.shape}")
    if len(y) == 0:
        raise ValueError("no samples to evaluate")
    if y.min() < 0 or y.max() >= k:
        raise ValueError(f"targets must be class indices in [0, {k}), got {y.min()}..{y.max()}")
    predicted = p.argmax(axis=1)
    tp = np.bincount(y[y == predicted], minlength=k)
    support = np.bincount(y, minlength=k)
    predicted_count = np.bincount(predicted, minlength=k)
    fp, fn = predicted_count - tp, support - tp
    present = (support + predicted_count) > 0
    precision, recall, f1 = _counts_scores(tp, fp, fn)

    out: dict[str, Any] = {"accuracy": float(tp.sum() / len(y))}
    if k > TOP_K:
        # Ties broken as scikit-learn's top_k_accuracy_score breaks them (stable sort, reversed).
        top = np.argsort(p, axis=1, kind="mergesort")[:, ::-1][:, :TOP_K]
        out[f"accuracy_top{TOP_K}"] = float((top == y[:, None]).any(axis=1).mean())
    out.update(_averages(tp, fp, fn, support, present))
    eps = np.finfo(np.float64).eps
    out["log_loss"] = float(-np.log(np.clip(p[np.arange(len(y)), y], eps, 1 - eps)).mean())
    aucs = [_binary_or_none(skm.roc_auc_score, y == c, p[:, c]) for c in range(k)]
    out["auc_macro"], out["auc_weighted"] = _weighted_mean(aucs, support)
    if k <= MAX_CONFUSION_CLASSES:
        matrix = np.bincount(y * k + predicted, minlength=k * k).reshape(k, k)
        out["confusion_matrix"] = {"labels": list(labels), "matrix": matrix.tolist()}
    out.update(_per_class(labels, f1, lambda i: {"precision": float(precision[i]), "recall": float(recall[i]),
                                                 "f1": float(f1[i]), "support": int(support[i]), "auc": aucs[i]}))
    out["samples"] = int(len(y))
    return out


def jaccard_samples(targets: np.ndarray, predicted: np.ndarray) -> float:
    """Mean over samples of |true ∩ predicted| / |true ∪ predicted|; a sample with no true and no
    predicted label scores 1 (scikit-learn's jaccard_score(average="samples", zero_division=1))."""
    t, q = np.asarray(targets, dtype=bool), np.asarray(predicted, dtype=bool)
    intersection = (t & q).sum(axis=1)
    union = (t | q).sum(axis=1)
    per_sample = np.ones(len(t), dtype=np.float64)
    np.divide(intersection, union, out=per_sample, where=union > 0)
    return float(per_sample.mean())


def multilabel(targets: np.ndarray, probabilities: np.ndarray, labels: Sequence[str],
               threshold: float = MULTILABEL_THRESHOLD) -> dict[str, Any]:
    """Metrics of a multi-label prediction: label j is predicted when probability >= threshold.

    - iou: Jaccard index averaged over samples (the primary metric)
    - precision_score_*, recall_score_*, f1_score_* for * in macro, micro, weighted (macro over the
      labels that occur in the targets or the predictions)
    - average_precision_score_macro: the mean average precision (mAP) over the labels that have
      positives in the sample; average_precision_score_weighted weights it by support
    - per_class: {name: {precision, recall, f1, support, average_precision}}
    """
    t = np.asarray(targets).astype(bool)
    p = np.asarray(probabilities, dtype=np.float64)
    k = len(labels)
    if t.ndim != 2 or t.shape[1] != k or p.shape != t.shape:
        raise ValueError(f"targets and probabilities must both have shape (n, {k}), got {t.shape} and {p.shape}")
    if len(t) == 0:
        raise ValueError("no samples to evaluate")
    q = p >= threshold
    tp = (t & q).sum(axis=0)
    fp = (~t & q).sum(axis=0)
    fn = (t & ~q).sum(axis=0)
    support = t.sum(axis=0)
    present = (support + q.sum(axis=0)) > 0
    precision, recall, f1 = _counts_scores(tp, fp, fn)

    out: dict[str, Any] = {"iou": jaccard_samples(t, q), "threshold": float(threshold)}
    out.update(_averages(tp, fp, fn, support, present))
    aps = [_binary_or_none(skm.average_precision_score, t[:, j], p[:, j]) for j in range(k)]
    out["average_precision_score_macro"], out["average_precision_score_weighted"] = _weighted_mean(aps, support)
    out.update(_per_class(labels, f1, lambda j: {"precision": float(precision[j]), "recall": float(recall[j]),
                                                 "f1": float(f1[j]), "support": int(support[j]),
                                                 "average_precision": aps[j]}))
    out["samples"] = int(len(t))
    return out
