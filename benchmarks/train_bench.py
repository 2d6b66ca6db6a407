"""Training throughput: ``bnmodel.train.train`` against a plain PyTorch loop with a DataLoader.

Run by hand; prints a table and JSON. Same model, synthetic data and batch size for both, measured
side by side in one run:

* bnmodel: the real trainer (``train()``) for 2 epochs of ``--steps`` steps; its samples/s is
  epoch 2's (epoch 1 is warmup: allocator, cuBLAS heuristics, torch.compile). The trainer measures
  its step loop only (evaluation and checkpoints excluded) and ends it with a host sync.
* plain: TensorDataset + DataLoader(shuffle=True) on the host, ``.to(device)`` per batch, AdamW
  with default settings, ``loss.item()`` every step: the loop most tutorials write. Same
  precision/autocast as the row; no torch.compile. ``--steps`` timed steps after 2 warmup steps.

TFLOP/s counts only the Linear layers' matmuls: 6 * (sum of in*out) FLOPs per sample (forward 2,
backward 4).

    python benchmarks/train_bench.py --device cpu --steps 5
    python benchmarks/train_bench.py --device cuda --steps 50 --json bench.json
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F

from bnmodel.config import ModelConfig
from bnmodel.model import BNMLP
from bnmodel.train import TrainConfig, train

VAL_FRACTION = 0.05  # small: evaluation is not measured, keep its cost low


@dataclass(frozen=True)
class Spec:
    name: str
    in_features: int
    hidden: tuple[int, ...]
    classes: int
    batch: int

    def flops_per_sample(self) -> int:
        widths = (self.in_features, *self.hidden, self.classes)
        return 6 * sum(a * b for a, b in zip(widths[:-1], widths[1:], strict=True))


MODELS = {
    "small": Spec("784-512x3-10", 784, (512, 512, 512), 10, 1024),
    "large": Spec("1024-4096x4-1000", 1024, (4096,) * 4, 1000, 8192),
    # Not a target shape: the default digits model's shape, where per-step overhead shows.
    "tiny": Spec("64-256x2-10", 64, (256, 256), 10, 64),
}
VARIANTS = {  # row name -> (TrainConfig.precision, compile)
    "fp32": ("fp32", False),
    "tf32": ("tf32", False),
    "bf16": ("bf16", False),
    "bf16+compile": ("bf16", True),
}


def trainer_config(
    spec: Spec, batch: int, steps: int, variant: str, device: str, out: Path
) -> TrainConfig:
    precision, compile_ = VARIANTS[variant]
    # Enough rows for `steps` full batches after the (stratified, rounded) validation split.
    rows = math.ceil((steps * batch + spec.classes) / (1 - VAL_FRACTION))
    return TrainConfig(
        data=f"synthetic:{rows},{spec.in_features},{spec.classes},0",
        model=ModelConfig(hidden_sizes=spec.hidden),
        val_fraction=VAL_FRACTION,
        epochs=2,
        batch_size=batch,
        drop_last=True,
        lr=1e-3,
        device=device,
        precision=precision,
        compile=compile_,
        out_dir=out,
        schedule="constant",
    )


def bench_trainer(config: TrainConfig) -> float:
    result = train(config, progress=False)
    return result.history[-1]["train_samples_per_second"]


def bench_plain(config: TrainConfig, steps: int, device: torch.device) -> float:
    """A hand-written loop over a DataLoader, as commonly written."""
    from torch.utils.data import DataLoader, TensorDataset

    from bnmodel.data import load_source

    ds = load_source(config.data)
    x, y = torch.from_numpy(ds.features), torch.from_numpy(ds.targets)
    loader = DataLoader(
        TensorDataset(x, y),
        batch_size=config.batch_size,
        shuffle=True,
        drop_last=True,
        pin_memory=device.type == "cuda",
    )
    torch.manual_seed(0)
    model = BNMLP(config.model_config(x.shape[1], ds.num_outputs)).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    autocast = config.precision == "bf16"
    torch.set_float32_matmul_precision("high" if config.precision == "tf32" else "highest")
    batches = _forever(loader)
    total, start = 0.0, 0.0
    for i in range(2 + steps):
        if i == 2:
            _sync(device)
            start = time.perf_counter()
        xb, yb = next(batches)
        xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            out = model(xb)
        loss = F.cross_entropy(out.float(), yb)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        total += loss.item()
    _sync(device)
    torch.set_float32_matmul_precision("highest")
    return steps * config.batch_size / (time.perf_counter() - start)


def _forever(loader: Any) -> Any:
    while True:  # a new shuffled pass whenever one runs out
        yield from loader


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def cache_synthetic_data() -> None:
    """Generate each synthetic dataset once per process, not once per measurement: the large
    model's rows take seconds to draw. The trainer resolves make_synthetic by module attribute."""
    import functools

    from bnmodel import data

    data.make_synthetic = functools.lru_cache(maxsize=1)(data.make_synthetic)


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    device = torch.device(args.device)
    cache_synthetic_data()
    results = []
    for key in args.models:
        spec = MODELS[key]
        batch = args.large_batch if key == "large" and args.large_batch else spec.batch
        for variant in args.variants:
            with tempfile.TemporaryDirectory() as tmp:
                config = trainer_config(spec, batch, args.steps, variant, args.device, Path(tmp))
                plain, ours = [], []
                for _ in range(args.repeats):  # interleaved, so load changes hit both alike
                    plain.append(bench_plain(config, args.steps, device))
                    ours.append(bench_trainer(config))
            ours_sps, plain_sps = statistics.median(ours), statistics.median(plain)
            results.append(
                {
                    "model": spec.name,
                    "batch": batch,
                    "variant": variant,
                    "device": args.device,
                    "steps": args.steps,
                    "bnmodel_samples_per_s": ours_sps,
                    "plain_samples_per_s": plain_sps,
                    "ratio": ours_sps / plain_sps,
                    "bnmodel_tflops": ours_sps * spec.flops_per_sample() / 1e12,
                    "plain_tflops": plain_sps * spec.flops_per_sample() / 1e12,
                }
            )
            print(_row(results[-1]), flush=True)
    return results


HEADER = (
    f"{'model':<18} {'batch':>6} {'variant':<13} {'bnmodel samp/s':>15} "
    f"{'plain samp/s':>13} {'ratio':>6} {'bnmodel TFLOP/s':>16} {'plain TFLOP/s':>14}"
)


def _row(r: dict[str, Any]) -> str:
    return (
        f"{r['model']:<18} {r['batch']:>6} {r['variant']:<13} "
        f"{r['bnmodel_samples_per_s']:>15,.0f} {r['plain_samples_per_s']:>13,.0f} "
        f"{r['ratio']:>6.2f} {r['bnmodel_tflops']:>16.3f} {r['plain_tflops']:>14.3f}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per measurement")
    parser.add_argument("--repeats", type=int, default=1, help="measurements per row (median)")
    parser.add_argument("--models", nargs="+", choices=tuple(MODELS), default=["small", "large"])
    parser.add_argument(
        "--variants",
        nargs="+",
        choices=tuple(VARIANTS),
        default=None,
        help="default: fp32 on the CPU; all four on CUDA",
    )
    parser.add_argument(
        "--large-batch",
        type=int,
        default=None,
        help="override the large model's batch (8192 takes ~1 min/step on 2 CPU cores)",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write results here")
    args = parser.parse_args(argv)
    if args.variants is None:
        args.variants = list(VARIANTS) if args.device == "cuda" else ["fp32"]
    print(f"torch {torch.__version__}, device {args.device}, threads {torch.get_num_threads()}")
    print(HEADER + "\n" + "-" * len(HEADER), flush=True)
    results = run(args)
    text = json.dumps(results, indent=2)
    print(text)
    if args.json is not None:
        args.json.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
