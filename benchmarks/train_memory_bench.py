"""Peak memory and time of `bnmodel train` on a generated table with large categoricals.

    python benchmarks/train_memory_bench.py [--rows 1000000] [--sizes 10 300 5000] [--epochs 1]
    python benchmarks/train_memory_bench.py --rows 150000 --sizes 4000   # the 1.5 GB check

Writes a Parquet table (4 numeric columns, one categorical column per --sizes value, a
regression target), then trains on it one-hot (--embedding-dim 0) and with --embedding-dim 8,
each in a fresh subprocess whose peak RSS is read from resource.getrusage(RUSAGE_CHILDREN).
Printed: the size of the loaded columns (the Arrow table in memory), the peak RSS of a process
that only imports torch and the readers (the floor of any run), then per run the peak RSS, its
ratio to that size, the same above the floor, and the wall time. Targets: peak under 2x the
columns; one-hot and embedding within 2x of each other. Set PYTHONPATH to measure another checkout.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np


def write_table(path: Path, rows: int, sizes: list[int], seed: int = 0) -> int:
    """The table as Parquet; returns the bytes of its columns once loaded (Arrow nbytes)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    columns = {f"x{i}": rng.standard_normal(rows).astype(np.float32) for i in range(4)}
    y = columns["x0"] - 0.5 * columns["x1"]
    for size in sizes:
        codes = np.minimum(rng.zipf(1.3, rows) - 1, size - 1)  # skewed, as real categories are
        effect = rng.standard_normal(size).astype(np.float32)
        y = y + effect[codes]
        vocab = np.asarray([f"v{size}_{i}" for i in range(size)], dtype=object)
        columns[f"c{size}"] = pa.DictionaryArray.from_arrays(codes.astype(np.int32), vocab)
    columns["y"] = (y + 0.1 * rng.standard_normal(rows)).astype(np.float32)
    table = pa.table(columns)
    pq.write_table(table, path)
    return int(pq.read_table(path).nbytes)


def run(
    data: Path, out: Path, embedding_dim: int, epochs: int, batch_size: int
) -> tuple[float, float]:
    """(peak RSS bytes, seconds) of one training run in a fresh subprocess."""
    command = [
        sys.executable, "-m", "bnmodel", "train", "--data", str(data), "--target", "y",
        "--out", str(out), "--overwrite", "--quiet", "--epochs", str(epochs),
        "--batch-size", str(batch_size), "--embedding-dim", str(embedding_dim),
        "--device", "cpu",
    ]  # fmt: skip
    probe = (
        "import resource, subprocess, sys, time; t = time.perf_counter(); "
        "subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL); "
        "print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    done = subprocess.run([sys.executable, "-c", probe, *command], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"training failed:\n{done.stderr[-2000:]}")
    seconds, kib = done.stdout.split()
    return float(kib) * 1024, float(seconds)


def baseline() -> float:
    """Peak RSS bytes of a process that only imports what training imports (Python, torch,
    pandas, pyarrow): the floor under every run, whatever the table."""
    probe = (
        "import resource, subprocess, sys; subprocess.run([sys.executable, '-c', "
        "'import torch, pandas, pyarrow.parquet, bnmodel.train'], check=True); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return float(done.stdout) * 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 300, 5000])
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "table.parquet"
        loaded = write_table(data, args.rows, args.sizes)
        print(f"{args.rows} rows, categoricals of {args.sizes} values; loaded columns "
              f"{loaded / 2**20:.1f} MiB")  # fmt: skip
        floor = baseline()
        print(f"imports alone (python, torch, pandas, pyarrow): {floor / 2**20:.0f} MiB peak")
        print(f"{'run':<16}{'peak RSS MiB':>14}{'x columns':>11}{'above imports':>15}"
              f"{'x columns':>11}{'seconds':>10}")  # fmt: skip
        peaks = {}
        for name, dim in (("one-hot", 0), ("embedding 8", 8)):
            peak, seconds = run(data, Path(tmp) / name, dim, args.epochs, args.batch_size)
            peaks[name] = peak
            above = peak - floor
            print(f"{name:<16}{peak / 2**20:>14.0f}{peak / loaded:>11.2f}{above / 2**20:>15.0f}"
                  f"{above / loaded:>11.2f}{seconds:>10.1f}")  # fmt: skip
        ratio = max(peaks.values()) / min(peaks.values())
        print(f"one-hot / embedding peak ratio: {peaks['one-hot'] / peaks['embedding 8']:.2f} "
              f"(target within 2x: {'yes' if ratio <= 2 else 'no'})")  # fmt: skip


if __name__ == "__main__":
    main()
