"""Local predict of a raw-row model (3 categorical + 6 numeric columns, blanks) against
all-numeric models, side by side in one run (the goal: >= 0.8x).

    python benchmarks/raw_predict_bench.py [--rows 200000] [--repeats 5] [--formats csv parquet]
        [--models DIR]   # reuse DIR/{raw,numeric-9,numeric-D}.onnx (no torch), else write them

Models, each a 256-256 MLP trained one epoch on 4000 rows of its own table and exported folded:
- raw: 6 numeric columns (two with ~10% blank cells: two indicators) and 3 string columns of
  10 values each (one-hot: 3 x 11 slots), folded into a Gemm over 8 inputs plus 3 Gathers;
- numeric-9: 9 numeric columns (the same number of file columns as raw);
- numeric-D: as many numeric columns as raw's first Linear has inputs (6 + 2 + 33 = 41).
Each model predicts its own file of ``--rows`` rows with ``bnmodel.predict.predict_file``
(parse, run, write CSV), alternating models, ``--repeats`` times; printed are median rows/s and
raw/numeric ratios, and the same for bare ``session.run`` on in-memory inputs (graph cost only).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pandas as pd

from bnmodel.predict import iter_chunks, load_model, predict_file

VALUES = np.array([f"v{i}" for i in range(10)], dtype=object)


def make_table(rows: int, kind: str, width: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    if kind == "raw":
        frame = pd.DataFrame({f"x{i}": rng.normal(size=rows) for i in range(6)})
        for column in ("x0", "x1"):
            frame.loc[rng.random(rows) < 0.1, column] = np.nan
        for i in range(3):
            frame[f"c{i}"] = VALUES[rng.integers(0, len(VALUES), rows)]
        signal = frame["x2"] + (frame["c0"] == "v3") - (frame["c1"] == "v7")
    else:
        frame = pd.DataFrame({f"x{i}": rng.normal(size=rows) for i in range(width)})
        signal = frame["x0"] + frame["x1"]
    frame["target"] = (signal > signal.median()).astype(int)
    return frame


def make_model(workdir: Path, name: str, kind: str, width: int, models: Path | None) -> Path:
    if models is not None and (models / f"{name}.onnx").is_file():
        return models / f"{name}.onnx"
    from bnmodel.export.api import export_checkpoint

    from bnmodel.config import ModelConfig
    from bnmodel.train import TrainConfig, train

    make_table(4000, kind, width, 0).to_csv(workdir / f"{name}-train.csv", index=False)
    config = TrainConfig(
        data=str(workdir / f"{name}-train.csv"),
        model=ModelConfig(hidden_sizes=(256, 256)),
        epochs=1,
        device="cpu",
        out_dir=workdir / f"run-{name}",
    )
    result = train(config, progress=False)
    onnx_path = (models or workdir) / f"{name}.onnx"
    export_checkpoint(result.best_checkpoint, output=onnx_path, verify=False)
    return onnx_path


def write_rows(workdir: Path, name: str, frame: pd.DataFrame, fmt: str) -> Path:
    path = workdir / f"{name}-rows.{fmt}"
    rows = frame.drop(columns="target")
    if fmt == "csv":
        rows.to_csv(path, index=False)
    else:
        rows.to_parquet(path)
    return path


class SessionRun:
    """Bare session.run over a file's rows already in memory (read once), chunk by chunk."""

    def __init__(self, onnx_path: Path, rows_path: Path, chunk_rows: int) -> None:
        model = load_model(onnx_path)
        chunks = iter_chunks(
            rows_path,
            model.feature_names,
            chunk_rows,
            categorical=model.categorical_columns,
            allow_missing=model.imputes,
        )
        self.feeds = [x if isinstance(x, dict) else {"features": x} for x, _ in chunks]
        self.rows = sum(len(feed["features"]) for feed in self.feeds)
        options = ort.SessionOptions()
        options.log_severity_level = 3
        self.session = ort.InferenceSession(
            str(onnx_path), options, providers=["CPUExecutionProvider"]
        )

    def rate(self) -> float:
        start = time.perf_counter()
        for feed in self.feeds:
            self.session.run(["probabilities"], feed)
        return self.rows / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--chunk-rows", type=int, default=65536)
    parser.add_argument("--formats", nargs="+", default=["csv", "parquet"])
    parser.add_argument("--models", type=Path, help="folder of the three models (reused)")
    args = parser.parse_args()
    models = {"raw": ("raw", 0), "numeric-9": ("numeric", 9), "numeric-D": ("numeric", 41)}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        if args.models is not None:
            args.models.mkdir(parents=True, exist_ok=True)
        onnx = {
            name: make_model(workdir, name, kind, w, args.models)
            for name, (kind, w) in models.items()
        }
        results: dict[tuple[str, str], dict[str, list[float]]] = {}
        for fmt in args.formats:
            files = {
                name: write_rows(workdir, name, make_table(args.rows, kind, w, 1), fmt)
                for name, (kind, w) in models.items()
            }
            runs = {name: SessionRun(onnx[name], files[name], args.chunk_rows) for name in models}
            for _ in range(args.repeats):  # alternate, so drift hits every model alike
                for name in models:
                    out = workdir / f"{name}-out.csv"
                    summary = predict_file(onnx[name], files[name], out, chunk_rows=args.chunk_rows)
                    rates = results.setdefault((fmt, name), {"predict": [], "session": []})
                    rates["predict"].append(summary.rows_per_second)
                for name in models:
                    results[(fmt, name)]["session"].append(runs[name].rate())
        _print(results, args)


def _print(results: dict[tuple[str, str], dict[str, list[float]]], args: argparse.Namespace):
    print(
        f"\nlocal predict, {args.rows} rows, chunk {args.chunk_rows}, median of {args.repeats}"
        " (rows/s; ratio = raw / that model)"
    )
    header = f"{'format':<8}{'model':<11}{'predict':>12}{'raw/this':>10}{'session.run':>14}"
    print(header + f"{'raw/this':>10}\n" + "-" * (len(header) + 10))
    for (fmt, name), rates in results.items():
        raw = results[(fmt, "raw")]
        medians = {k: statistics.median(v) for k, v in rates.items()}
        raw_medians = {k: statistics.median(v) for k, v in raw.items()}
        print(
            f"{fmt:<8}{name:<11}{medians['predict']:>12,.0f}"
            f"{raw_medians['predict'] / medians['predict']:>10.2f}"
            f"{medians['session']:>14,.0f}{raw_medians['session'] / medians['session']:>10.2f}"
        )


if __name__ == "__main__":
    main()
