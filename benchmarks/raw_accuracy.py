"""Accuracy on raw held-out CSVs: bnmodel with default flags against scikit-learn pipelines.

    python benchmarks/raw_accuracy.py [--seeds 0 1 2]

For sklearn's wine and breast_cancer: two numeric columns binned into words (categorical), ~10%
blank cells in three numeric columns and one categorical, string labels; a stratified 75/25
split written as train.csv and heldout.csv. Then, per seed:
- bnmodel: ``bnmodel train --data train.csv`` (default flags), ``bnmodel export``, and
  ``bnmodel evaluate model.onnx --data heldout.csv`` (the raw held-out CSV, through ONNX);
- scikit-learn: the same preprocessing as a Pipeline (mean imputation with indicators and
  scaling; constant "" then one-hot with unknowns ignored) into LogisticRegression and into
  HistGradientBoostingClassifier, fitted on train.csv and scored on heldout.csv.
Printed: held-out accuracy per data set and model (mean over seeds, and each seed).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd


def raw_frame(name: str, seed: int) -> pd.DataFrame:
    from sklearn import datasets

    bunch = getattr(datasets, f"load_{name}")(as_frame=True)
    frame = bunch.frame.drop(columns="target")
    numeric = list(frame.columns)
    rng = np.random.default_rng(seed)
    for column, words in (
        (numeric[0], ["low", "mid", "high", "top"]),
        (numeric[-1], ["a", "b", "c"]),
    ):
        frame[column] = pd.cut(frame[column], len(words), labels=words).astype(object)
    for column in (numeric[1], numeric[3], numeric[5], numeric[-1]):
        frame.loc[rng.random(len(frame)) < 0.1, column] = None
    frame["target"] = np.asarray([str(n) for n in bunch.target_names])[bunch.target]
    return frame


def split(frame: pd.DataFrame, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    from sklearn.model_selection import train_test_split

    return train_test_split(frame, test_size=0.25, random_state=seed, stratify=frame["target"])


def bnmodel_accuracy(train_csv: Path, heldout_csv: Path, workdir: Path) -> float:
    run = [sys.executable, "-m", "bnmodel"]
    subprocess.run(
        [*run, "train", "--data", str(train_csv), "--out", str(workdir / "run"), "--quiet"],
        check=True,
        capture_output=True,
    )
    onnx = workdir / "model.onnx"
    subprocess.run(
        [*run, "export", str(workdir / "run" / "best.pt"), "-o", str(onnx)],
        check=True,
        capture_output=True,
    )
    out = subprocess.run(
        [*run, "evaluate", str(onnx), "--data", str(heldout_csv), "--json"]
        + ["--plot", str(workdir / "evaluation.png")],
        check=True,
        capture_output=True,
        text=True,
    )
    return float(json.loads(out.stdout)["metrics"]["accuracy"])


def sklearn_accuracies(train_csv: Path, heldout_csv: Path) -> dict[str, float]:
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    train = pd.read_csv(train_csv)
    heldout = pd.read_csv(heldout_csv)
    x, y = train.drop(columns="target"), train["target"]
    categorical = [c for c in x.columns if not pd.api.types.is_numeric_dtype(x[c])]
    numeric = [c for c in x.columns if c not in categorical]
    prep = ColumnTransformer(
        [
            (
                "num",
                make_pipeline(SimpleImputer(add_indicator=True), StandardScaler()),
                numeric,
            ),
            (
                "cat",
                make_pipeline(
                    SimpleImputer(strategy="constant", fill_value=""),
                    OneHotEncoder(handle_unknown="ignore"),
                ),
                categorical,
            ),
        ]
    )
    models = {
        "sklearn LogisticRegression": LogisticRegression(max_iter=2000),
        "sklearn HistGradientBoosting": HistGradientBoostingClassifier(random_state=0),
    }
    scores = {}
    for name, model in models.items():
        pipeline = make_pipeline(prep, model).fit(x, y)
        scores[name] = float(pipeline.score(heldout.drop(columns="target"), heldout["target"]))
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--datasets", nargs="+", default=["wine", "breast_cancer"])
    parser.add_argument(
        "--write", type=Path, help="only write DIR/NAME_train.csv and NAME_heldout.csv (seed 0)"
    )
    args = parser.parse_args()
    if args.write is not None:
        for name in args.datasets:
            train, heldout = split(raw_frame(name, 0), 0)
            train.to_csv(args.write / f"{name}_train.csv", index=False)
            heldout.to_csv(args.write / f"{name}_heldout.csv", index=False)
            print(f"wrote {args.write / f'{name}_train.csv'} and {name}_heldout.csv")
        return
    table: dict[tuple[str, str], list[float]] = {}
    for name in args.datasets:
        for seed in args.seeds:
            with tempfile.TemporaryDirectory() as tmp:
                workdir = Path(tmp)
                train, heldout = split(raw_frame(name, seed), seed)
                train.to_csv(workdir / "train.csv", index=False)
                heldout.to_csv(workdir / "heldout.csv", index=False)
                scores = {
                    "bnmodel (default flags)": bnmodel_accuracy(
                        workdir / "train.csv", workdir / "heldout.csv", workdir
                    )
                }
                scores.update(sklearn_accuracies(workdir / "train.csv", workdir / "heldout.csv"))
                for model, value in scores.items():
                    table.setdefault((name, model), []).append(value)
    print(f"\nheld-out accuracy on raw CSVs (seeds {args.seeds})")
    print(f"{'data':<15}{'model':<30}{'mean':>8}  per seed")
    for (name, model), values in table.items():
        seeds = " ".join(f"{v:.4f}" for v in values)
        print(f"{name:<15}{model:<30}{np.mean(values):>8.4f}  {seeds}")


if __name__ == "__main__":
    main()
