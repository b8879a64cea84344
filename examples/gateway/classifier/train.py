"""Trains the prompt-injection classifier from the labelled prompts and saves it with joblib.

    python examples/gateway/classifier/train.py [--data prompts.jsonl] [--out model.joblib]
                                                [--evaluate]

The model is a scikit-learn pipeline: TF-IDF over word 1-2-grams and character 3-5-grams (so
misspellings like "ign0re the ab0ve" still match), then a class-balanced logistic regression.
The saved bundle records the scikit-learn version; the worker retrains when it differs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
#: The labelled prompts: one JSON object per line, {"text": str, "label": "injection"|"benign"}.
DATA_PATH = HERE / "prompts.jsonl"
#: Where the trained model goes by default (not committed: ``make`` or the worker creates it).
MODEL_PATH = HERE / "model.joblib"
LABELS = ("benign", "injection")


def load_examples(path: Path = DATA_PATH) -> tuple[list[str], list[str]]:
    texts: list[str] = []
    labels: list[str] = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            row = json.loads(line)
            if row.get("label") not in LABELS or not isinstance(row.get("text"), str):
                raise ValueError(f"{path}:{number}: expected {{'text': str, 'label': {LABELS}}}")
            texts.append(row["text"])
            labels.append(row["label"])
    return texts, labels


def build_pipeline() -> Any:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import FeatureUnion, Pipeline

    features = FeatureUnion(
        [
            ("words", TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)),
            ("chars", TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 5), sublinear_tf=True)),
        ]
    )
    classifier = LogisticRegression(C=10.0, class_weight="balanced", max_iter=2000)
    return Pipeline([("features", features), ("classifier", classifier)])


def train(data: Path = DATA_PATH) -> dict[str, Any]:
    """A bundle: the fitted pipeline and what it was trained with."""
    import sklearn

    texts, labels = load_examples(data)
    model = build_pipeline().fit(texts, labels)
    return {
        "model": model,
        "sklearn": sklearn.__version__,
        "examples": len(texts),
        "data": str(data),
    }


def save(bundle: dict[str, Any], out: Path) -> None:
    """Writes atomically: workers starting together never read half a file."""
    import joblib

    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=out.name, suffix=".tmp")
    os.close(fd)
    try:
        joblib.dump(bundle, tmp)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def train_and_save(data: Path = DATA_PATH, out: Path = MODEL_PATH) -> dict[str, Any]:
    bundle = train(data)
    save(bundle, out)
    return bundle


def evaluate(data: Path = DATA_PATH) -> float:
    """Mean accuracy of 5-fold cross-validation (stratified)."""
    from sklearn.model_selection import cross_val_score

    texts, labels = load_examples(data)
    return float(cross_val_score(build_pipeline(), texts, labels, cv=5).mean())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--data", type=Path, default=DATA_PATH)
    parser.add_argument("--out", type=Path, default=MODEL_PATH)
    parser.add_argument(
        "--evaluate", action="store_true", help="also print 5-fold cross-validated accuracy"
    )
    args = parser.parse_args(argv)
    bundle = train_and_save(args.data, args.out)
    print(f"trained on {bundle['examples']} prompts; saved to {args.out}")
    if args.evaluate:
        print(f"5-fold cross-validated accuracy: {evaluate(args.data):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
