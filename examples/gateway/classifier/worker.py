"""The sidecar handler: ``classify({"text": str})`` -> ``{"label", "score"}``.

Serve it with ``python -m sark_native.sidecar classifier.worker:PromptClassifier --socket PATH``
(``examples/gateway`` on PYTHONPATH), or under ``sark_native.Sidecar``. The model file is
``$SARK_CLASSIFIER_MODEL`` or ``model.joblib`` next to this file; when it is missing, or was
saved by another scikit-learn version, the worker trains it first (about a second) and saves it,
so later starts (restarts included) only load it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from .train import DATA_PATH, MODEL_PATH, train_and_save

logger = logging.getLogger("classifier")

#: Longest text classified (characters): a request cannot pin a worker on a huge input.
MAX_TEXT = 20_000


def model_path() -> Path:
    return Path(os.environ.get("SARK_CLASSIFIER_MODEL") or MODEL_PATH)


def load_bundle(path: Path) -> dict[str, Any]:
    """The saved bundle, trained and saved first when missing or stale."""
    import sklearn

    if path.exists():
        import joblib

        bundle: dict[str, Any] = joblib.load(path)  # a file this deployment wrote (trusted)
        if bundle.get("sklearn") == sklearn.__version__:
            return bundle
        logger.warning(
            "%s was saved by scikit-learn %s (this is %s): retraining",
            path,
            bundle.get("sklearn"),
            sklearn.__version__,
        )
    else:
        logger.info("no model at %s: training it from %s", path, DATA_PATH)
    return train_and_save(DATA_PATH, path)


class PromptClassifier:
    """Scores how likely a prompt is an injection attempt."""

    def __init__(self, threshold: float = 0.5) -> None:
        self._path = model_path()
        self._bundle = load_bundle(self._path)
        self._model = self._bundle["model"]
        self._injection = list(self._model.classes_).index("injection")
        self._threshold = threshold
        logger.info("prompt classifier loaded from %s", self._path)

    def classify(self, params: Any) -> dict[str, Any]:
        """``{"text": str}`` -> ``{"label": "injection" | "benign", "score": float}``, where
        ``score`` is the probability of injection (0..1) and the label is injection from
        ``threshold`` (0.5) up."""
        text = params.get("text") if isinstance(params, dict) else None
        if not isinstance(text, str):
            raise ValueError('classify takes {"text": str}')
        if len(text) > MAX_TEXT:
            raise ValueError(f"text is longer than {MAX_TEXT} characters")
        score = float(self._model.predict_proba([text])[0][self._injection])
        label = "injection" if score >= self._threshold else "benign"
        return {"label": label, "score": round(score, 4)}

    def info(self, params: Any) -> dict[str, Any]:
        """Where the model came from."""
        return {
            "model": str(self._path),
            "examples": self._bundle["examples"],
            "sklearn": self._bundle["sklearn"],
            "threshold": self._threshold,
        }
