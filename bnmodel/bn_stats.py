"""Recompute batch-norm population statistics after training (Ioffe & Szegedy 2015, Algorithm 2).

During training the running mean/var are an exponential average over batches seen with weights
that kept changing; Algorithm 2 instead averages the batch statistics of the *final* network over
the training set. Same procedure as ``torch.optim.swa_utils.update_bn``, with equal-size batches
(Algorithm 2's unbiased variance of the batch statistics assumes them) and dropout kept in eval
mode so the statistics see the activations inference will see.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["recompute_bn_stats"]

_BN = (nn.BatchNorm1d, nn.SyncBatchNorm)


@torch.no_grad()
def recompute_bn_stats(
    model: nn.Module, features: torch.Tensor, batch_size: int, *, seed: int = 0
) -> int:
    """Reset every BN layer's running stats and re-estimate them with momentum=None (cumulative
    average) over shuffled equal-size batches of ``features`` (N, F). No parameter changes.

    Returns the number of batches used (0 when the model has no BN layer). The model's training
    flags and BN momenta are restored afterwards.
    """
    bns = [m for m in model.modules() if isinstance(m, _BN)]
    if not bns:
        return 0
    n = features.shape[0]
    if n < 2:
        raise ValueError(f"recomputing BN statistics needs at least 2 rows, got {n}")
    size = min(batch_size, n)
    was_training = {m: m.training for m in model.modules()}
    momenta = {bn: bn.momentum for bn in bns}
    model.eval()
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
        bn.train()
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=generator).to(features.device)
    batches = n // size  # drop the tail: every batch has the same size
    for i in range(batches):
        model(features[order[i * size : (i + 1) * size]])
    for module, flag in was_training.items():
        module.train(flag)
    for bn, momentum in momenta.items():
        bn.momentum = momentum
    return batches
