"""``bnmodel predict`` throughput against bare in-process ONNX Runtime on the same rows.

    python benchmarks/predict_bench.py [--rows 500000] [--features 10] [--classes 3]
        [--chunk-rows 65536] [--repeats 3] [--formats csv parquet npy]

A small classifier (trained one epoch on synthetic rows, exported folded) predicts the same
rows two ways, alternating, ``--repeats`` times each:
- predict: ``bnmodel.predict.predict_file`` from a file to a CSV: parsing, running, writing;
- ORT: ``session.run`` on the rows already in memory as one float32 array, chunk by chunk,
  at the same chunk size (no parsing, no writing): the ceiling for the same model.
Printed: the median rows/s of each and predict/ORT (the goal: >= 0.5, i.e. within 2x).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
from bnmodel.export.api import export_checkpoint

from bnmodel.config import ModelConfig
from bnmodel.predict import load_model, predict_file
from bnmodel.train import TrainConfig, train


def make_model(workdir: Path, features: int, classes: int) -> Path:
    config = TrainConfig(
        data=f"synthetic:2000,{features},{classes}",
        model=ModelConfig(hidden_sizes=(256, 256)),
        epochs=1,
        device="cpu",
        out_dir=workdir / "run",
    )
    result = train(config, progress=False)
    onnx_path = workdir / "model.onnx"
    export_checkpoint(result.best_checkpoint, output=onnx_path, verify=False)
    return onnx_path


def write_rows(workdir: Path, x: np.ndarray, fmt: str) -> Path:
    names = [f"x{i}" for i in range(x.shape[1])]
    table = pa.Table.from_arrays([pa.array(x[:, i]) for i in range(x.shape[1])], names=names)
    path = workdir / f"rows.{fmt}"
    if fmt == "csv":
        pa_csv.write_csv(table, path)
    elif fmt == "parquet":
        pq.write_table(table, path)
    else:
        np.save(path, x)
    return path


def ort_rows_per_second(session: ort.InferenceSession, x: np.ndarray, chunk: int) -> float:
    name = session.get_inputs()[0].name
    start = time.perf_counter()
    for lo in range(0, len(x), chunk):
        session.run(["probabilities"], {name: x[lo : lo + chunk]})
    return len(x) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=500_000)
    parser.add_argument("--features", type=int, default=10)
    parser.add_argument("--classes", type=int, default=3)
    parser.add_argument("--chunk-rows", type=int, default=65536)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--formats", nargs="+", default=["csv", "parquet", "npy"])
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        onnx_path = make_model(workdir, args.features, args.classes)
        model = load_model(onnx_path)  # the same session serves both sides
        rng = np.random.default_rng(0)
        x = rng.standard_normal((args.rows, args.features), dtype=np.float32)
        print(
            f"{args.rows} rows x {args.features} features, MLP 256x256, {args.classes} classes, "
            f"chunk {args.chunk_rows} rows, median of {args.repeats}"
        )
        print(f"{'input':<10}{'predict rows/s':>16}{'ORT rows/s':>14}{'predict/ORT':>13}")
        for fmt in args.formats:
            path = write_rows(workdir, x, fmt)
            # ORT sees what predict parses: the file's values (CSV text rounds float32 exactly).
            ours, bare = [], []
            for _ in range(args.repeats):
                summary = predict_file(model, path, workdir / "out.csv", chunk_rows=args.chunk_rows)
                ours.append(summary.rows_per_second)
                bare.append(ort_rows_per_second(model.session, x, args.chunk_rows))
            a, b = statistics.median(ours), statistics.median(bare)
            print(f"{fmt:<10}{a:>16,.0f}{b:>14,.0f}{a / b:>13.2f}")


if __name__ == "__main__":
    main()
