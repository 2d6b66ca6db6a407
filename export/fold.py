"""Batch-norm folding: the formulas as pure float64 tensor math, and a model walk that applies them.

An eval-mode BatchNorm is a per-feature affine map ``y = s * x + t`` with

    s = gamma / sqrt(running_var + eps)        t = beta - s * running_mean

(``affine=False`` means gamma = 1, beta = 0). Such a map folds into the layer before it
(``Linear -> BN``: scale the weight's output rows) or after it (``BN -> Linear``: scale the
weight's input columns), and so does the model's input standardization ``(x - mean) / std``,
which is the affine map ``s = 1/std, t = -mean/std``. A regressor's target de-standardization
``y = z * std + mean`` (TargetScale, after the last Linear) folds into that Linear the same way,
so the graph emits target units with no node of its own.

Every formula computes in float64 and casts back to the parameter dtype: a running variance of
1e-8 gives s ~ 1e4, and float32 products of such factors would lose digits the model needs.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import nn

from bnmodel.model import Standardize, TargetScale

__all__ = [
    "MAX_FOLDED_INPUT_SHIFT",
    "Center",
    "FoldError",
    "FoldReport",
    "FoldStep",
    "bn_affine",
    "fold_affine_linear",
    "fold_bn_linear",
    "fold_conv_bn",
    "fold_linear_bn",
    "fold_model",
    "fold_linear_target_scale",
    "fold_standardize_linear",
    "fuse_conv_bn",
    "fuse_linear_bn",
]

# Folding the input standardization (x - mean) / std into the next Linear computes W' x + b'
# with x ~ mean: when |mean| / std is large, the float32 Gemm loses about log10(|mean| / std)
# digits to cancellation that the unfolded x - mean avoids (nearby floats subtract exactly).
# Beyond this ratio the centering stays as one Sub (module Center) and only 1/std folds.
MAX_FOLDED_INPUT_SHIFT = 4.0
_BN = (nn.BatchNorm1d, nn.BatchNorm2d)
_CONV = (nn.Conv1d, nn.Conv2d)
# Identity in eval mode: dropped from the folded model.
_IDENTITY = (nn.Dropout, nn.Identity)
Affine = tuple[torch.Tensor, torch.Tensor]  # (scale, shift), each float64 (features,)


class FoldError(ValueError):
    """A model or layer cannot be folded (training mode, no running statistics, shape mismatch)."""


# --- pure tensor math ----------------------------------------------------------------------------


def bn_affine(
    running_mean: torch.Tensor,
    running_var: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float,
) -> Affine:
    """Eval-mode BN as ``y = s * x + t`` per feature, in float64; weight/bias None mean 1 and 0."""
    mean, var = running_mean.double(), running_var.double()
    gamma = torch.ones_like(mean) if weight is None else weight.double()
    beta = torch.zeros_like(mean) if bias is None else bias.double()
    scale = gamma / torch.sqrt(var + eps)
    return scale, beta - scale * mean


def _fold_affine_after(
    weight: torch.Tensor, bias: torch.Tensor | None, scale: torch.Tensor, shift: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``s * (W x + b) + t``: W' = s[:, None, ...] * W, b' = s * b + t (W is (out, ...))."""
    s = scale.reshape(-1, *([1] * (weight.dim() - 1)))
    b = torch.zeros_like(scale) if bias is None else bias.double()
    return (s * weight.double()).to(weight.dtype), (scale * b + shift).to(weight.dtype)


def fold_linear_bn(
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    running_mean: torch.Tensor,
    running_var: torch.Tensor,
    bn_weight: torch.Tensor | None,
    bn_bias: torch.Tensor | None,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Linear (W (out, in), b (out,) or None) then BN over out.

    W' = s[:, None] * W,  b' = s * (b - mean) + beta.
    """
    scale, shift = bn_affine(running_mean, running_var, bn_weight, bn_bias, eps)
    return _fold_affine_after(weight, bias, scale, shift)


def fold_conv_bn(
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    running_mean: torch.Tensor,
    running_var: torch.Tensor,
    bn_weight: torch.Tensor | None,
    bn_bias: torch.Tensor | None,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Conv (W (out_ch, in_ch/groups, *kernel)) then BN per output channel, as for Linear."""
    scale, shift = bn_affine(running_mean, running_var, bn_weight, bn_bias, eps)
    return _fold_affine_after(weight, bias, scale, shift)


def fold_affine_linear(
    scale: torch.Tensor, shift: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``W (s * x + t) + b``: W' = W * s[None, :], b' = b + W @ t; W (out, in), s and t (in,)."""
    w = weight.double()
    b = torch.zeros(w.shape[0], dtype=torch.float64) if bias is None else bias.double()
    return (w * scale.double()[None, :]).to(weight.dtype), (b + w @ shift.double()).to(weight.dtype)


def fold_bn_linear(
    running_mean: torch.Tensor,
    running_var: torch.Tensor,
    bn_weight: torch.Tensor | None,
    bn_bias: torch.Tensor | None,
    eps: float,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BN over in-features then Linear: W' = W * s[None, :], b' = b + W @ (beta - s * mean)."""
    scale, shift = bn_affine(running_mean, running_var, bn_weight, bn_bias, eps)
    return fold_affine_linear(scale, shift, weight, bias)


def fold_standardize_linear(
    mean: torch.Tensor, std: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x - mean) / std`` then Linear: the affine map s = 1/std, t = -mean/std folded forward."""
    scale = 1.0 / std.double()
    return fold_affine_linear(scale, -mean.double() * scale, weight, bias)


def fold_linear_target_scale(
    weight: torch.Tensor, bias: torch.Tensor | None, mean: torch.Tensor, std: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Linear (W (T, in), b (T,)) then ``z * std + mean`` per target.

    W' = std[:, None] * W,  b' = std * b + mean.
    """
    return _fold_affine_after(weight, bias, std.double(), mean.double())


# --- module level: preconditions, never mutating the input ---------------------------------------


class Center(nn.Module):
    """``x - mean`` (B, F) -> (B, F): the input centering kept when folding it costs precision."""

    def __init__(self, mean: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", mean.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x - self.mean


@dataclass(frozen=True)
class FoldStep:
    # "linear<-bn", "conv<-bn", "bn->linear", "standardize->linear", "linear<-target_scale"
    kind: str
    sources: tuple[str, ...]  # folded-away module names, e.g. ("net.1",)
    target: str  # the Linear/Conv that absorbed them


@dataclass
class FoldReport:
    steps: list[FoldStep] = field(default_factory=list)
    # (module name, why it stayed): a BN with no Linear beside it cannot be folded.
    left_in_place: list[tuple[str, str]] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)  # eval-mode identities (Dropout)
    # Standardize layers whose centering stayed as x - mean (see MAX_FOLDED_INPUT_SHIFT).
    kept_centering: list[str] = field(default_factory=list)

    def summary(self) -> list[str]:
        lines = [f"{'+'.join(s.sources)} -> {s.target} ({s.kind})" for s in self.steps]
        lines += [f"{name} left in place: {why}" for name, why in self.left_in_place]
        lines += [
            f"{name}: centering kept as x - mean (|mean / std| > "
            f"{MAX_FOLDED_INPUT_SHIFT:g}: folding it would cost float32 digits)"
            for name in self.kept_centering
        ]
        return lines

    def to_dict(self) -> dict[str, object]:
        return {
            "folded": [
                {"kind": s.kind, "sources": list(s.sources), "target": s.target} for s in self.steps
            ],
            "left_in_place": [{"module": n, "reason": r} for n, r in self.left_in_place],
            "dropped": list(self.dropped),
            "kept_centering": list(self.kept_centering),
        }


def _check_bn(name: str, bn: nn.Module) -> None:
    if bn.training:
        raise FoldError(
            f"{name} ({type(bn).__name__}) is in training mode; call model.eval() first: "
            "folding uses the running statistics, training mode uses each batch's own"
        )
    if not bn.track_running_stats or bn.running_mean is None or bn.running_var is None:
        raise FoldError(
            f"{name} ({type(bn).__name__}) has track_running_stats=False: it has no "
            "population statistics to fold, it normalizes by each batch's own"
        )


def _affine_of(name: str, module: nn.Module) -> Affine | None:
    """(scale, shift) float64 of a per-feature affine module, None for anything else."""
    if isinstance(module, _BN):
        _check_bn(name, module)
        return bn_affine(
            module.running_mean, module.running_var, module.weight, module.bias, module.eps
        )
    if isinstance(module, Standardize):
        scale = 1.0 / module.std.double()
        return scale, -module.mean.double() * scale
    if isinstance(module, TargetScale):
        return module.std.double(), module.mean.double()
    return None


def _with_params(module: nn.Module, weight: torch.Tensor, bias: torch.Tensor) -> nn.Module:
    """A copy of a Linear/Conv holding new weight and bias (adds a bias if it had none)."""
    new = copy.deepcopy(module)
    new.weight = nn.Parameter(weight.detach().clone(), requires_grad=module.weight.requires_grad)
    new.bias = nn.Parameter(bias.detach().clone(), requires_grad=module.weight.requires_grad)
    return new


def _check_features(name: str, expected: int, target: str, received: int) -> None:
    if expected != received:
        raise FoldError(
            f"cannot fold {name} into {target}: {name} has {received} features, "
            f"{target} has {expected}"
        )


def fuse_linear_bn(linear: nn.Linear, bn: nn.BatchNorm1d, name: str = "bn") -> nn.Linear:
    """A new Linear equal to ``bn(linear(x))`` in eval mode; the inputs are not modified."""
    _check_bn(name, bn)
    _check_features(name, linear.out_features, "the preceding Linear", bn.num_features)
    scale, shift = bn_affine(bn.running_mean, bn.running_var, bn.weight, bn.bias, bn.eps)
    return _with_params(linear, *_fold_affine_after(linear.weight, linear.bias, scale, shift))


def fuse_conv_bn(conv: nn.Conv1d | nn.Conv2d, bn: nn.Module, name: str = "bn") -> nn.Module:
    """A new Conv1d/Conv2d equal to ``bn(conv(x))`` in eval mode, folded per output channel."""
    _check_bn(name, bn)
    _check_features(name, conv.out_channels, "the preceding convolution", bn.num_features)
    w, b = fold_conv_bn(
        conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.weight, bn.bias, bn.eps
    )
    return _with_params(conv, w, b)


def _kind(module: nn.Module) -> str:
    if isinstance(module, TargetScale):
        return "target_scale"
    return "standardize" if isinstance(module, Standardize) else "bn"


def _absorbs_after(previous: nn.Module, module: nn.Module) -> bool:
    """Can ``previous`` take ``module`` (an affine map right after it) into its weight?"""
    if isinstance(previous, nn.Linear):
        return isinstance(module, (nn.BatchNorm1d, Standardize, TargetScale))
    return isinstance(previous, _CONV) and isinstance(module, _BN)


def _next_is_linear(layers: list[tuple[str, nn.Module]], index: int) -> bool:
    """Is the next layer after ``index``, past identities and further affine maps, a Linear?"""
    for _, module in layers[index + 1 :]:
        if isinstance(module, nn.Linear):
            return True
        if not isinstance(module, (*_IDENTITY, *_BN, Standardize)):
            return False
    return False


def _needs_centering(module: nn.Module) -> bool:
    """A Standardize whose shift -mean/std is too large to fold without losing float32 digits."""
    if not isinstance(module, Standardize):
        return False
    ratio = (module.mean.double() / module.std.double()).abs()
    return bool(ratio.numel() and ratio.max() > MAX_FOLDED_INPUT_SHIFT)


def _compose(first: Affine | None, second: Affine) -> Affine:
    """second(first(x)) = s2 * (s1 x + t1) + t2."""
    if first is None:
        return second
    return second[0] * first[0], second[0] * first[1] + second[1]


def _fold_into_previous(
    previous: tuple[str, nn.Module],
    name: str,
    module: nn.Module,
    affine: Affine,
    report: FoldReport,
) -> nn.Module:
    """Linear/Conv ``previous`` followed by the affine ``module``: one new Linear/Conv."""
    target, layer = previous
    _check_features(name, layer.weight.shape[0], target, affine[0].numel())
    kind = "linear" if isinstance(layer, nn.Linear) else "conv"
    report.steps.append(FoldStep(f"{kind}<-{_kind(module)}", (name,), target))
    return _with_params(layer, *_fold_affine_after(layer.weight, layer.bias, *affine))


def _fold_sequence(layers: list[tuple[str, nn.Module]], report: FoldReport) -> list[nn.Module]:
    """Fold each affine map into an adjacent Linear/Conv, preferring the one before it."""
    out: list[tuple[str, nn.Module]] = []
    # Affine maps waiting for the next Linear (a BN after an activation, the standardization).
    pending: Affine | None = None
    pending_names: list[str] = []
    for index, (name, module) in enumerate(layers):
        if isinstance(module, _IDENTITY):
            report.dropped.append(name)
            continue
        affine = _affine_of(name, module)
        if affine is not None:
            if pending is None and out and _absorbs_after(out[-1][1], module):
                out[-1] = (out[-1][0], _fold_into_previous(out[-1], name, module, affine, report))
            elif _next_is_linear(layers, index):
                if pending is None and _needs_centering(module):
                    out.append((name, Center(module.mean)))
                    report.kept_centering.append(name)
                    affine = (affine[0], torch.zeros_like(affine[1]))  # what is left: 1 / std
                pending, pending_names = _compose(pending, affine), [*pending_names, name]
            else:
                out.append((name, copy.deepcopy(module)))
                report.left_in_place.append(
                    (name, "no Linear or convolution directly before it and no Linear after it")
                )
            continue
        if pending is not None:  # module is the Linear that _next_is_linear found
            _check_features("+".join(pending_names), module.in_features, name, pending[0].numel())
            module = _with_params(module, *fold_affine_linear(*pending, module.weight, module.bias))
            kinds = "+".join(dict.fromkeys(_kind(dict(layers)[n]) for n in pending_names))
            report.steps.append(FoldStep(f"{kinds}->linear", tuple(pending_names), name))
            pending, pending_names = None, []
        else:
            module = copy.deepcopy(module)
        out.append((name, module))
    return [module for _, module in out]


def fold_model(model: nn.Module) -> tuple[nn.Module, FoldReport]:
    """A folded copy of a BNMLP (its flat ``net``) or an ``nn.Sequential``; ``model`` is untouched.

    BN directly after a Linear/Conv folds into it; BN after an activation, and the input
    standardization, fold into the next Linear (activations there are (batch, features)).
    A BN with neither is kept and listed in ``FoldReport.left_in_place``. Dropout is dropped.
    """
    for name, module in model.named_modules():
        if module.training:
            raise FoldError(
                f"model is in training mode ({name or type(model).__name__} has "
                "training=True); call model.eval() before folding"
            )
    net = getattr(model, "net", None)
    if isinstance(net, nn.Sequential):
        sequence, prefix = net, "net."
    elif isinstance(model, nn.Sequential):
        sequence, prefix = model, ""
    else:
        raise FoldError(
            f"cannot fold a {type(model).__name__}: expected a BNMLP (with a flat "
            "`net` Sequential) or an nn.Sequential"
        )
    report = FoldReport()
    layers = [(prefix + name, module) for name, module in sequence.named_children()]
    folded_net = nn.Sequential(*_fold_sequence(layers, report))
    if sequence is model:
        return folded_net.eval(), report
    folded = copy.deepcopy(model)
    folded.net = folded_net
    return folded.eval(), report
