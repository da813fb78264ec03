"""Few-shot classification of frozen features: N-way K-shot episodes (the CrossPoint / Point-BERT protocol).

For each of ``folds`` episodes (all fixed by ``seed``, independent of the backbone): draw N classes, K support
shapes of each from the train split and ``queries`` query shapes of each from ``query_split`` (test by
default; with ``query_split=train`` the queries are drawn from the train shapes left after the support).
A linear classifier is fitted on the support features and scored on the queries; the figure is the query
accuracy's mean ± std over the folds. Features come from the frozen backbone in eval mode
(:func:`selfsup_pcd.tasks.features.extract_features`), one pass over each split for all settings and folds.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC
from torch import nn

from selfsup_pcd.tasks.features import extract_features, pick_device

log = logging.getLogger(__name__)

CLASSIFIERS = ("svm", "logistic")
QUERY_SPLITS = ("test", "train")


@dataclass(frozen=True)
class Episode:
    """One fold: its classes, and indices into the train split (support) and the query split (queries).

    Episode labels are the position of each shape's class in ``classes``.
    """

    classes: np.ndarray
    support: np.ndarray
    query: np.ndarray


def make_episodes(
    train_labels: np.ndarray,
    query_labels: np.ndarray | None,
    ways: int,
    shots: int,
    queries: int,
    folds: int,
    seed: int,
) -> list[Episode]:
    """``folds`` N-way K-shot episodes, deterministic under ``seed`` (and ``ways``, ``shots``).

    ``query_labels`` None draws the queries from the train split, disjoint from the support.
    Only classes with at least ``shots`` train shapes and ``queries`` query shapes can be drawn.
    """
    train_labels = np.asarray(train_labels)
    same_split = query_labels is None
    query_labels = train_labels if same_split else np.asarray(query_labels)
    need_train = shots + (queries if same_split else 0)
    eligible = [c for c in np.unique(train_labels)
                if (train_labels == c).sum() >= need_train and (same_split or (query_labels == c).sum() >= queries)]
    if len(eligible) < ways:
        raise ValueError(f"{ways}-way {shots}-shot with {queries} queries needs {ways} classes with enough shapes; "
                         f"only {len(eligible)} qualify ({eligible})")
    rng = np.random.default_rng([seed, ways, shots, queries])
    episodes = []
    for _ in range(folds):
        classes = np.sort(rng.choice(eligible, size=ways, replace=False))
        support, query = [], []
        for c in classes:
            pool = rng.permutation(np.flatnonzero(train_labels == c))
            support.append(pool[:shots])
            if same_split:
                query.append(pool[shots : shots + queries])
            else:
                query.append(rng.choice(np.flatnonzero(query_labels == c), size=queries, replace=False))
        episodes.append(Episode(classes, np.concatenate(support), np.concatenate(query)))
    return episodes


class FewShotEvaluation:
    """N-way K-shot accuracy of a frozen backbone, for every (way, shot) pair of ``ways`` × ``shots``.

    ``classifier``: ``svm`` (``SVC(kernel="linear", C)``, as CrossPoint) or ``logistic``
    (``LogisticRegression(C)``); ``standardize`` scales features with statistics of the support set only.
    Metrics: ``test/{N}way{K}shot_acc_mean`` / ``_std`` (in [0, 1]) and ``_folds``.
    """

    def __init__(
        self,
        ways: Sequence[int] = (5,),
        shots: Sequence[int] = (10,),
        queries: int = 20,
        folds: int = 10,
        seed: int = 0,
        classifier: str = "svm",
        C: float = 1.0,
        standardize: bool = True,
        query_split: str = "test",
        max_iter: int = 10000,
        device: str = "auto",
    ) -> None:
        if classifier not in CLASSIFIERS:
            raise ValueError(f"classifier must be one of {CLASSIFIERS}, got {classifier!r}")
        if query_split not in QUERY_SPLITS:
            raise ValueError(f"query_split must be one of {QUERY_SPLITS}, got {query_split!r}")
        self.ways = [int(w) for w in ([ways] if isinstance(ways, int) else ways)]
        self.shots = [int(k) for k in ([shots] if isinstance(shots, int) else shots)]
        self.queries, self.folds, self.seed = queries, folds, seed
        self.classifier, self.C, self.standardize = classifier, C, standardize
        self.query_split, self.max_iter, self.device = query_split, max_iter, device

    def _model(self) -> Any:
        clf = (SVC(kernel="linear", C=self.C) if self.classifier == "svm"
               else LogisticRegression(C=self.C, max_iter=self.max_iter))
        return make_pipeline(StandardScaler(), clf) if self.standardize else clf

    def episode_accuracy(self, episode: Episode, x_train: np.ndarray, y_train: np.ndarray, x_query: np.ndarray,
                         y_query: np.ndarray) -> float:
        """Query accuracy of a classifier fitted on the episode's support."""
        relabel = {int(c): i for i, c in enumerate(episode.classes)}
        ys = np.array([relabel[int(y)] for y in y_train[episode.support]])
        yq = np.array([relabel[int(y)] for y in y_query[episode.query]])
        model = self._model().fit(x_train[episode.support], ys)
        return float((model.predict(x_query[episode.query]) == yq).mean())

    def evaluate_features(self, x_train: np.ndarray, y_train: np.ndarray, x_query: np.ndarray | None = None,
                          y_query: np.ndarray | None = None) -> dict[str, float]:
        """Metrics of every (way, shot) setting; ``x_query`` None takes the queries from the train split."""
        same = x_query is None
        if same:
            x_query, y_query = x_train, y_train
        metrics: dict[str, float] = {}
        for ways in self.ways:
            for shots in self.shots:
                episodes = make_episodes(y_train, None if same else y_query, ways, shots, self.queries, self.folds,
                                         self.seed)
                accs = [self.episode_accuracy(e, x_train, y_train, x_query, y_query) for e in episodes]
                name = f"test/{ways}way{shots}shot_acc"
                metrics.update({f"{name}_mean": float(np.mean(accs)), f"{name}_std": float(np.std(accs)),
                                f"{name}_folds": float(len(accs))})
                log.info("%d-way %d-shot: %.4f +- %.4f over %d folds", ways, shots, np.mean(accs), np.std(accs),
                         len(accs))
        return metrics

    def run(self, backbone: nn.Module, datamodule: Any) -> dict[str, float]:
        """Extracts features of the train (and query) split with ``backbone`` (eval mode) and evaluates them."""
        device = pick_device(self.device)
        x_train, y_train = extract_features(backbone, datamodule.eval_dataloader("train"), device, "train features")
        if self.query_split == "train":
            return self.evaluate_features(x_train, y_train)
        x_test, y_test = extract_features(backbone, datamodule.eval_dataloader("test"), device, "test features")
        return self.evaluate_features(x_train, y_train, x_test, y_test)
