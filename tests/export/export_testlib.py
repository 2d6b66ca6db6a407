"""Builders for the export tests: BNMLPs with randomized BN statistics, checkpoint files.

A plain module (not conftest) with a name unique across tests/, so test files import it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from bnmodel.checkpoint import Checkpoint, save_checkpoint
from bnmodel.config import ModelConfig
from bnmodel.model import BNMLP


def randomize_statistics(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BN non-trivial running stats and affine params (a fresh BN is the identity)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm1d):
                n = module.num_features
                module.running_mean.copy_(torch.randn(n, generator=gen) * 2)
                module.running_var.copy_(torch.rand(n, generator=gen) * 3 + 0.05)
                if module.affine:
                    module.weight.copy_(torch.randn(n, generator=gen))
                    module.bias.copy_(torch.randn(n, generator=gen))
        standardize = getattr(model, "standardize", None)
        if standardize is not None:
            f = standardize.mean.numel()
            standardize.set_statistics(
                torch.randn(f, generator=gen) * 10, torch.rand(f, generator=gen) * 5 + 0.1
            )
    return model.eval()


def make_model(seed: int = 0, **overrides: object) -> BNMLP:
    config = {
        "in_features": 6,
        "hidden_sizes": (16, 8),
        "out_features": 3,
        "standardize_input": True,
        **overrides,
    }
    torch.manual_seed(seed)
    return randomize_statistics(BNMLP(ModelConfig(**config)), seed)


def make_checkpoint(
    path: Path, task: str = "classification", seed: int = 0, **overrides: object
) -> Path:
    model = make_model(seed, **overrides)
    config = model.config
    labels = [f"class{i}" for i in range(config.out_features)] if task == "classification" else None
    ckpt = Checkpoint(
        model_config=config,
        model_state=model.state_dict(),
        task=task,
        feature_names=[f"x{i}" for i in range(config.in_features)],
        target_name="y",
        class_labels=labels,
    )
    return save_checkpoint(ckpt, path)


# --- adversarial models: statistics that make float32 folding hard ---------------------------

# How each hidden unit is pushed: left alone, saturated (tanh/sigmoid pinned at their limits,
# ReLU always on), or dead (ReLU always 0, tanh/sigmoid pinned at the other limit).
UNIT_STATES = ("normal", "saturated", "dead")


def push_units(model: BNMLP, states: list[str]) -> None:
    """Make hidden unit i of every layer behave as ``states[i % len(states)]`` on any input.

    A pre-activation of +-40 (bias 40, weights shrunk 1e3x) pins tanh at exactly +-1.0 and
    sigmoid at 1.0 or ~4e-18 in float32, and ReLU on or dead (exactly 0): after the
    activation, those units' running_var ends up ~0. With pre placement the bias that sets
    the pre-activation is the BN's beta (its gamma shrunk instead).
    """
    layers = list(model.net)
    with torch.no_grad():
        for index, linear in enumerate(layers[:-1]):
            if not isinstance(linear, nn.Linear) or linear is layers[-1]:
                continue
            following = layers[index + 1]
            pre = isinstance(following, nn.BatchNorm1d)
            if pre and not following.affine:
                continue
            for unit in range(linear.out_features):
                state = states[unit % len(states)]
                if state == "normal":
                    continue
                sign = 1.0 if state == "saturated" else -1.0
                if pre:
                    following.weight[unit] *= 1e-3
                    following.bias[unit] = sign * 40.0
                else:
                    linear.weight[unit] *= 1e-3
                    linear.bias[unit] = sign * 40.0


def adversarial_model(
    *,
    in_features: int,
    hidden_sizes: tuple[int, ...],
    out_features: int,
    activation: str,
    bn_placement: str,
    standardize_input: bool,
    bn_eps: float,
    cumulative: bool,
    affine: bool,
    states: list[str],
    mean_scale: float,
    log10_min_var: float | None,
    seed: int,
) -> tuple[BNMLP, np.ndarray]:
    """A BNMLP in an adversarial state, and (256, in_features) rows it sees in that state.

    Statistics come from data (``log10_min_var`` None: train-mode passes over rows offset by
    ``mean_scale``, with momentum None when ``cumulative``), or are drawn: running_var
    log-uniform from 10**log10_min_var to 10, running_mean uniform in +-mean_scale. Either
    way gamma ~ N(0, 2) (about half negative) unless ``affine`` is False.
    """
    config = ModelConfig(
        in_features=in_features,
        hidden_sizes=hidden_sizes,
        out_features=out_features,
        activation=activation,
        bn_placement=bn_placement,
        standardize_input=standardize_input,
        bn_eps=bn_eps,
        bn_momentum=None if cumulative else 0.1,
    )
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = BNMLP(config)
    for i, module in enumerate(model.net):
        if isinstance(module, nn.BatchNorm1d):
            bn = nn.BatchNorm1d(module.num_features, bn_eps, config.bn_momentum, affine=affine)
            if affine:
                with torch.no_grad():
                    bn.weight.copy_(torch.randn(bn.num_features, generator=gen) * 2)
                    bn.bias.copy_(torch.randn(bn.num_features, generator=gen))
            model.net[i] = bn
    if model.standardize is not None:
        model.standardize.set_statistics(
            torch.randn(in_features, generator=gen) * mean_scale,
            torch.rand(in_features, generator=gen) * 10 + 0.01,
        )
    push_units(model, states)
    rows = _raw_rows(model, 64 * 4 + 256, mean_scale, seed)
    if log10_min_var is None:
        model.train()
        with torch.no_grad():
            for batch in torch.from_numpy(rows[:256]).split(64):
                model(batch)
    else:
        _draw_statistics(model, log10_min_var, mean_scale, gen)
    return model.eval(), rows[256:]


def _raw_rows(model: BNMLP, n: int, mean_scale: float, seed: int) -> np.ndarray:
    """Rows in raw units: standard normal in the standardized space, else offset by the scale."""
    z = np.random.default_rng(seed).standard_normal((n, model.config.in_features))
    if model.standardize is not None:
        z = model.standardize.mean.double().numpy() + model.standardize.std.double().numpy() * z
    elif mean_scale != 1.0:
        z = z + mean_scale
    return z.astype(np.float32)


def _draw_statistics(
    model: BNMLP, log10_min_var: float, mean_scale: float, gen: torch.Generator
) -> None:
    with torch.no_grad():
        for module in model.net:
            if isinstance(module, nn.BatchNorm1d):
                n = module.num_features
                exponent = torch.rand(n, generator=gen) * (1 - log10_min_var) + log10_min_var
                module.running_var.copy_(10**exponent)
                module.running_mean.copy_((torch.rand(n, generator=gen) * 2 - 1) * mean_scale)
