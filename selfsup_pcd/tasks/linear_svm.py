"""Linear-SVM evaluation of a frozen backbone, with full labels and with k labelled shapes per class.

Protocols:
- ``standard`` (default): features standardised, ``LinearSVC`` with C chosen by stratified k-fold
  cross-validation on the train split only (the test split never influences C).
- ``strl``: exactly STRL's ``evaluate_*.py``: ``SVC(kernel="linear", C=1)``, no scaling, no search.
Label-scarce (``shots``): for each k, ``draws`` random support sets of k train shapes per class; the
classifier (fixed C, scaler fitted on all train features, which uses no labels) is scored on the whole
test split; mean-class accuracy is reported as mean and std over the draws.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.base import ClassifierMixin, clone
from sklearn.metrics import confusion_matrix
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC, LinearSVC
from torch import nn
from tqdm import tqdm

from selfsup_pcd.metrics import accuracy_from_confusion
from selfsup_pcd.tasks.features import extract_features, pick_device

log = logging.getLogger(__name__)

PROTOCOLS = ("standard", "strl")


def scores(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[float, float]:
    """(overall accuracy, mean-class accuracy over the classes present in ``y_true``)."""
    labels = np.union1d(y_true, y_pred)
    return accuracy_from_confusion(confusion_matrix(y_true, y_pred, labels=labels))


def draw_support(labels: np.ndarray, shots: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of ``shots`` distinct examples of every class in ``labels``."""
    picked = []
    for cls in np.unique(labels):
        pool = np.flatnonzero(labels == cls)
        if len(pool) < shots:
            raise ValueError(f"class {cls} has {len(pool)} training examples, fewer than shots={shots}")
        picked.append(rng.choice(pool, size=shots, replace=False))
    return np.concatenate(picked)


class LinearSVMEvaluation:
    """Fits linear SVMs on frozen features of a datamodule's train split and scores its test split."""

    def __init__(
        self,
        protocol: str = "standard",
        c_grid: Sequence[float] = (1e-3, 1e-2, 1e-1, 1.0, 10.0),
        cv_folds: int = 5,
        shots: Sequence[int] | None = None,
        draws: int = 100,
        few_shot_c: float = 1.0,
        full_labels: bool = True,
        seed: int = 0,
        max_iter: int = 20000,
        n_jobs: int = 1,
        device: str = "auto",
    ) -> None:
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
        self.protocol = protocol
        self.c_grid = list(c_grid)
        self.cv_folds = cv_folds
        self.shots = list(shots or [])
        self.draws = draws
        self.few_shot_c = few_shot_c
        self.full_labels = full_labels
        self.seed = seed
        self.max_iter = max_iter
        self.n_jobs = n_jobs
        self.device = device

    def _svm(self, c: float) -> ClassifierMixin:
        if self.protocol == "strl":
            return SVC(kernel="linear", C=c)
        return LinearSVC(C=c, max_iter=self.max_iter, random_state=self.seed)

    def fit_full(self, x_train: np.ndarray, y_train: np.ndarray) -> tuple[ClassifierMixin, dict[str, float]]:
        """The full-label classifier and what was chosen for it."""
        if self.protocol == "strl":
            return self._svm(1.0).fit(x_train, y_train), {"svm/C": 1.0}
        counts = np.bincount(y_train)
        folds = min(self.cv_folds, int(counts[counts > 0].min()))
        if folds < 2:
            raise ValueError("cross-validation needs at least 2 training examples of every class")
        if folds < self.cv_folds:
            log.warning("only %d-fold cross-validation possible (smallest class)", folds)
        search = GridSearchCV(
            make_pipeline(StandardScaler(), self._svm(1.0)),
            {"linearsvc__C": self.c_grid},
            cv=StratifiedKFold(folds, shuffle=True, random_state=self.seed),
            n_jobs=self.n_jobs,
        )
        search.fit(x_train, y_train)
        return search.best_estimator_, {"svm/C": float(search.best_params_["linearsvc__C"]),
                                        "svm/cv_oa": float(search.best_score_)}

    def few_shot(
        self, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray, shots: int
    ) -> dict[str, float]:
        """Mean and std over ``draws`` support sets of the test mean-class accuracy (and OA)."""
        rng = np.random.default_rng(self.seed)
        if self.protocol == "standard":
            scaler = StandardScaler().fit(x_train)
            x_train, x_test = scaler.transform(x_train), scaler.transform(x_test)
        c = 1.0 if self.protocol == "strl" else self.few_shot_c
        oas, maccs = [], []
        for _ in tqdm(range(self.draws), desc=f"{shots}-shot draws", leave=False):
            support = draw_support(y_train, shots, rng)
            model = clone(self._svm(c)).fit(x_train[support], y_train[support])
            oa, macc = scores(y_test, model.predict(x_test))
            oas.append(oa)
            maccs.append(macc)
        prefix = f"test/{shots}shot"
        return {f"{prefix}_macc_mean": float(np.mean(maccs)), f"{prefix}_macc_std": float(np.std(maccs)),
                f"{prefix}_oa_mean": float(np.mean(oas)), f"{prefix}_oa_std": float(np.std(oas)),
                f"{prefix}_draws": float(self.draws)}

    def evaluate_features(
        self, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray
    ) -> dict[str, float]:
        metrics: dict[str, float] = {}
        if self.full_labels:
            model, chosen = self.fit_full(x_train, y_train)
            oa, macc = scores(y_test, model.predict(x_test))
            metrics.update({"test/oa": oa, "test/macc": macc, **chosen})
        for shots in self.shots:
            metrics.update(self.few_shot(x_train, y_train, x_test, y_test, shots))
        return metrics

    def run(self, backbone: nn.Module, datamodule: Any) -> dict[str, float]:
        """Extracts train and test features with ``backbone`` (eval mode) and evaluates them."""
        device = pick_device(self.device)
        x_train, y_train = extract_features(backbone, datamodule.eval_dataloader("train"), device, "train features")
        x_test, y_test = extract_features(backbone, datamodule.eval_dataloader("test"), device, "test features")
        log.info("features: train %s, test %s", x_train.shape, x_test.shape)
        return self.evaluate_features(x_train, y_train, x_test, y_test)
