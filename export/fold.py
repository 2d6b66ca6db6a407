"""Batch-norm folding: the formulas as pure float64 tensor math, and a model walk that applies them.

Every per-feature affine map is held as ``y = scale * (x - center) + offset``:

    BN (eval mode)          center = running_mean   scale = gamma / sqrt(running_var + eps)
                            offset = beta           (affine=False: gamma = 1, beta = 0)
    input standardization   center = mean           scale = 1 / std          offset = 0
    target scale            center = 0              scale = std              offset = mean

Such a map folds into the layer before it (``Linear/Conv -> BN``, the output rows scale):

    W' = scale[:, None] * W        b' = scale * (b - center) + offset

or into the Linear after it (``BN -> Linear``, ``Standardize -> Linear``, the input columns):

    W' = W * scale[None, :]        b' = b + W @ (offset - scale * center)

The second form has a float32 trap: with x ~ center, W' x is about W (scale * center), and
b' cancels it. When |scale * center| dwarfs what the map outputs (a saturated tanh unit: mean
~1, var ~0, scale ~1/sqrt(eps) ~ 316), the Gemm keeps the large terms and loses the small
ones: measured 4.8e-5 relative error against unfolded float32's 2.1e-7. There the centering
stays as one Sub node (module Center: nearby floats subtract exactly) and only the scale folds:
``W' = W * scale``, ``b' = b + W @ offset``. See ``Affine.shift_cancels`` for the decision.

A regressor's target de-standardization ``y = z * std + mean`` (TargetScale, after the last
Linear) folds into that Linear by the first form, so the graph emits target units with no node
of its own.

Every formula computes in float64 and casts back to the parameter dtype: a running variance of
1e-8 gives scale ~ 1e4, and float32 products of such factors would lose digits the model needs.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import nn

from bnmodel.model import Standardize, TargetScale

__all__ = [
    "MAX_FOLDED_SHIFT",
    "Affine",
    "Center",
    "FoldError",
    "FoldReport",
    "FoldStep",
    "bn_affine",
    "fold_into_next",
    "fold_into_previous",
    "fold_model",
    "fuse_conv_bn",
    "fuse_linear_bn",
    "layer_labels",
    "standardize_affine",
    "target_scale_affine",
]

# Folding the shift into the next Linear costs about log10(ratio) float32 digits, ratio being
# |scale * center| against what the map outputs (|scale| * spread + |offset|). Beyond this
# ratio, on any feature, the centering stays as a Sub. Measured with tests/export/
# fold_precision_survey.py (folded error within 2x of unfolded float32's): thresholds 1 and 4
# both miss on 1 model of 500, never centering on 63 of 1000; 4 keeps the fewest Subs.
MAX_FOLDED_SHIFT = 4.0
_BN = (nn.BatchNorm1d, nn.BatchNorm2d)
_CONV = (nn.Conv1d, nn.Conv2d)
# Identity in eval mode: dropped from the folded model.
_IDENTITY = (nn.Dropout, nn.Identity)
# Why INT8 keeps it: 1/std folded into the first Linear's input columns spreads them over
# orders of magnitude (near-constant pixels), and per-channel quantization has one scale per
# output row: the small columns would round away (digits: -1.4 accuracy points, vs -0.0 kept).
_KEPT_STANDARDIZE = "kept for INT8: folded 1/std would spread the weight columns apart"


class FoldError(ValueError):
    """A model or layer cannot be folded (training mode, broken statistics, shape mismatch)."""


# --- pure tensor math ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Affine:
    """``y = scale * (x - center) + offset`` per feature, each float64 (features,).

    ``spread`` is the standard deviation of x the statistics record (sqrt(running_var), or
    the standardization's std): what decides whether folding the shift would cancel.
    """

    center: torch.Tensor
    scale: torch.Tensor
    offset: torch.Tensor
    spread: torch.Tensor

    @property
    def shift(self) -> torch.Tensor:
        """t in ``y = scale * x + t``."""
        return self.offset - self.scale * self.center

    def then(self, second: Affine) -> Affine:
        """``second(self(x))``, still centered at self.center (x's statistics)."""
        return Affine(
            self.center,
            second.scale * self.scale,
            second.scale * (self.offset - second.center) + second.offset,
            self.spread,
        )

    def shift_ratio(self) -> float:
        """max over features of |scale * center| / (|scale| * spread + |offset|); 0 if no shift."""
        big = (self.scale * self.center).abs()
        small = self.scale.abs() * self.spread + self.offset.abs()
        ratio = torch.where(big > 0, big / small, torch.zeros_like(big))  # x/0 -> inf
        return float(ratio.max()) if ratio.numel() else 0.0

    def shift_cancels(self) -> bool:
        return self.shift_ratio() > MAX_FOLDED_SHIFT


def bn_affine(
    running_mean: torch.Tensor,
    running_var: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float,
) -> Affine:
    """Eval-mode BN in float64; weight/bias None mean gamma = 1 and beta = 0."""
    mean, var = running_mean.detach().double(), running_var.detach().double()
    gamma = torch.ones_like(mean) if weight is None else weight.detach().double()
    beta = torch.zeros_like(mean) if bias is None else bias.detach().double()
    return Affine(mean, gamma / torch.sqrt(var + eps), beta, torch.sqrt(var.clamp(min=0)))


def standardize_affine(mean: torch.Tensor, std: torch.Tensor) -> Affine:
    """``(x - mean) / std`` in float64."""
    mean, std = mean.detach().double(), std.detach().double()
    return Affine(mean, 1.0 / std, torch.zeros_like(mean), std)


def target_scale_affine(mean: torch.Tensor, std: torch.Tensor) -> Affine:
    """``z * std + mean`` in float64 (z is the standardized target: spread 1)."""
    mean, std = mean.detach().double(), std.detach().double()
    return Affine(torch.zeros_like(mean), std, mean, torch.ones_like(mean))


def fold_into_previous(
    weight: torch.Tensor, bias: torch.Tensor | None, affine: Affine
) -> tuple[torch.Tensor, torch.Tensor]:
    """``affine(W x + b)``, W (out, ...) Linear or Conv: W' = scale[:, None, ...] * W,
    b' = scale * (b - center) + offset."""
    s = affine.scale.reshape(-1, *([1] * (weight.dim() - 1)))
    b = torch.zeros_like(affine.scale) if bias is None else bias.double()
    new_bias = affine.scale * (b - affine.center) + affine.offset
    return (s * weight.double()).to(weight.dtype), new_bias.to(weight.dtype)


def fold_into_next(
    affine: Affine, weight: torch.Tensor, bias: torch.Tensor | None, centered: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """``W affine(x) + b``, W (out, in): W' = W * scale[None, :], b' = b + W @ shift.

    ``centered``: x - center is computed before this Linear (a Center), so the shift is offset.
    """
    w = weight.double()
    b = torch.zeros(w.shape[0], dtype=torch.float64) if bias is None else bias.double()
    shift = affine.offset if centered else affine.shift
    return (w * affine.scale[None, :]).to(weight.dtype), (b + w @ shift).to(weight.dtype)


# --- module level: preconditions, never mutating the input ---------------------------------------


class Center(nn.Module):
    """``x - center`` (B, F) -> (B, F): the centering kept where folding it would cost digits."""

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
    labels: tuple[str, ...] = ()  # the sources as a user knows them: "hidden layer 2 BN"
    target_label: str = ""  # "Linear 3"
    centered: bool = False  # x - center kept as a Sub before the target
    shift_ratio: float = 0.0  # Affine.shift_ratio of what folded into a next Linear

    def describe(self) -> str:
        line = f"{' + '.join(self.labels)} folded into {self.target_label}"
        if self.centered:
            line += (
                f", centering kept as a Sub (folding its shift would cancel in float32: "
                f"|scale * mean| up to {self.shift_ratio:.3g}x its output)"
            )
        return line


@dataclass
class FoldReport:
    steps: list[FoldStep] = field(default_factory=list)
    # (module name, why it stayed): a BN with no Linear beside it cannot be folded.
    left_in_place: list[tuple[str, str]] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)  # eval-mode identities (Dropout)
    labels: dict[str, str] = field(default_factory=dict)  # module name -> user's name

    def summary(self) -> list[str]:
        lines = [s.describe() for s in self.steps]
        lines += [f"{self.labels.get(n, n)} left in place: {why}" for n, why in self.left_in_place]
        return lines

    def to_dict(self) -> dict[str, object]:
        return {
            "folded": [
                {
                    "kind": s.kind,
                    "sources": list(s.sources),
                    "target": s.target,
                    "description": s.describe(),
                    "centered": s.centered,
                    "shift_ratio": s.shift_ratio,
                }
                for s in self.steps
            ],
            "left_in_place": [
                {"module": n, "layer": self.labels.get(n, n), "reason": r}
                for n, r in self.left_in_place
            ],
            "dropped": list(self.dropped),
        }


def layer_labels(layers: list[tuple[str, nn.Module]]) -> dict[str, str]:
    """Module name -> the name a user knows: "Linear 3", "hidden layer 2 BN", "input ..."."""
    labels, weighted = {}, 0
    for name, module in layers:
        kind = type(module).__name__
        if isinstance(module, (nn.Linear, *_CONV)):
            weighted += 1
            labels[name] = f"{'Linear' if isinstance(module, nn.Linear) else 'Conv'} {weighted}"
        elif isinstance(module, Standardize):
            labels[name] = "input standardization"
        elif isinstance(module, TargetScale):
            labels[name] = "target de-standardization"
        else:
            where = f"hidden layer {weighted}" if weighted else "input"
            labels[name] = f"{where} {'BN' if isinstance(module, _BN) else kind}"
    return labels


def _first_bad(tensor: torch.Tensor, bad: torch.Tensor) -> str:
    """ "channel 7" (or "channel 7, input 3" for a weight) of the first True in ``bad``."""
    index = [int(i) for i in bad.nonzero()[0]]
    where = f"channel {index[0]}" + "".join(f", input {i}" for i in index[1:2])
    return f"{where}: {tensor[tuple(index)].item():.6g}"


def _check_values(label: str, module: nn.Module) -> None:
    """Refuse non-finite parameters/buffers, BN var + eps <= 0 and std <= 0, naming the channel."""
    tensors = [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]
    for what, tensor in tensors:
        if tensor is None or not tensor.is_floating_point():
            continue
        bad = ~torch.isfinite(tensor.detach())
        if bad.any():
            raise FoldError(
                f"{label}: {what} is not finite at {_first_bad(tensor, bad)} "
                f"({int(bad.sum())} of {tensor.numel()} values); the checkpoint is broken"
            )
    if isinstance(module, _BN):
        denominator = module.running_var.detach().double() + module.eps
        bad = denominator <= 0
        if bad.any():
            raise FoldError(
                f"{label}: running_var + eps <= 0 at {_first_bad(module.running_var, bad)} "
                f"(eps {module.eps:g}); a variance cannot be negative: the statistics are broken"
            )
    if isinstance(module, (Standardize, TargetScale)) and (bad := module.std <= 0).any():
        raise FoldError(f"{label}: std <= 0 at {_first_bad(module.std, bad)}")


def _check_bn(label: str, bn: nn.Module) -> None:
    if bn.training:
        raise FoldError(
            f"{label} ({type(bn).__name__}) is in training mode; call model.eval() first: "
            "folding uses the running statistics, training mode uses each batch's own"
        )
    if not bn.track_running_stats or bn.running_mean is None or bn.running_var is None:
        raise FoldError(
            f"{label} ({type(bn).__name__}) has track_running_stats=False: it has no "
            "population statistics to fold, it normalizes by each batch's own"
        )
    _check_values(label, bn)


def _affine_of(label: str, module: nn.Module) -> Affine | None:
    """The float64 Affine of a per-feature affine module, None for anything else."""
    if isinstance(module, _BN):
        _check_bn(label, module)
        return bn_affine(
            module.running_mean, module.running_var, module.weight, module.bias, module.eps
        )
    if isinstance(module, Standardize):
        _check_values(label, module)
        return standardize_affine(module.mean, module.std)
    if isinstance(module, TargetScale):
        _check_values(label, module)
        return target_scale_affine(module.mean, module.std)
    return None


def _with_params(
    module: nn.Module, weight: torch.Tensor, bias: torch.Tensor, what: str
) -> nn.Module:
    """A copy of a Linear/Conv holding new weight and bias (adds a bias if it had none)."""
    for tensor_name, tensor in (("weight", weight), ("bias", bias)):
        bad = ~torch.isfinite(tensor)
        if bad.any():
            raise FoldError(
                f"{what} overflows {tensor.dtype} in the folded {tensor_name} at "
                f"{_first_bad(tensor, bad)}: a running_var near -eps gives a huge scale"
            )
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
    return _fuse_previous(linear, bn, name, "the preceding Linear")


def fuse_conv_bn(conv: nn.Conv1d | nn.Conv2d, bn: nn.Module, name: str = "bn") -> nn.Module:
    """A new Conv1d/Conv2d equal to ``bn(conv(x))`` in eval mode, folded per output channel."""
    return _fuse_previous(conv, bn, name, "the preceding convolution")


def _fuse_previous(layer: nn.Module, bn: nn.Module, name: str, target: str) -> nn.Module:
    affine = _affine_of(name, bn)
    _check_values(target, layer)
    _check_features(name, layer.weight.shape[0], target, bn.num_features)
    folded = fold_into_previous(layer.weight, layer.bias, affine)
    return _with_params(layer, *folded, f"folding {name} into {target}")


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


@dataclass
class _Walk:
    """The model walk's state: folded layers so far, and affine maps waiting for a Linear."""

    labels: dict[str, str]
    report: FoldReport
    out: list[tuple[str, nn.Module]] = field(default_factory=list)
    pending: Affine | None = None
    pending_names: list[str] = field(default_factory=list)

    def into_previous(self, name: str, module: nn.Module, affine: Affine) -> None:
        """The Linear/Conv just emitted, followed by the affine ``module``: one new layer."""
        target, layer = self.out[-1]
        _check_features(name, layer.weight.shape[0], target, affine.scale.numel())
        kind = "linear" if isinstance(layer, nn.Linear) else "conv"
        labels = (self.labels[name], self.labels[target])
        self.report.steps.append(
            FoldStep(f"{kind}<-{_kind(module)}", (name,), target, labels[:1], labels[1])
        )
        folded = fold_into_previous(layer.weight, layer.bias, affine)
        self.out[-1] = (
            target,
            _with_params(layer, *folded, f"folding {labels[0]} into {labels[1]}"),
        )

    def into_next(self, name: str, linear: nn.Linear, modules: dict[str, nn.Module]) -> nn.Module:
        """The pending affine maps, then ``linear``: an optional Center and one new Linear."""
        sources, pending = tuple(self.pending_names), self.pending
        joined = "+".join(sources)
        _check_features(joined, linear.in_features, name, pending.scale.numel())
        centered = pending.shift_cancels()
        if centered:
            self.out.append(
                (f"{sources[0]}.center", Center(pending.center.to(linear.weight.dtype)))
            )
        labels = tuple(self.labels[s] for s in sources)
        kinds = "+".join(dict.fromkeys(_kind(modules[s]) for s in sources))
        self.report.steps.append(
            FoldStep(
                f"{kinds}->linear",
                sources,
                name,
                labels,
                self.labels[name],
                centered,
                pending.shift_ratio(),
            )
        )
        self.pending, self.pending_names = None, []
        folded = fold_into_next(pending, linear.weight, linear.bias, centered)
        return _with_params(
            linear, *folded, f"folding {' + '.join(labels)} into {self.labels[name]}"
        )


def _fold_sequence(
    layers: list[tuple[str, nn.Module]], report: FoldReport, keep_standardize: bool
) -> list[nn.Module]:
    """Fold each affine map into an adjacent Linear/Conv, preferring the one before it."""
    walk = _Walk(report.labels, report)
    modules = dict(layers)
    for index, (name, module) in enumerate(layers):
        label = walk.labels[name]
        if isinstance(module, _IDENTITY):
            report.dropped.append(name)
            continue
        if keep_standardize and isinstance(module, Standardize):
            _check_values(f"{label} ({name})", module)
            walk.out.append((name, copy.deepcopy(module)))
            report.left_in_place.append((name, _KEPT_STANDARDIZE))
            continue
        affine = _affine_of(f"{label} ({name})", module)
        if affine is not None:
            if walk.pending is None and walk.out and _absorbs_after(walk.out[-1][1], module):
                walk.into_previous(name, module, affine)
            elif _next_is_linear(layers, index):
                walk.pending = affine if walk.pending is None else walk.pending.then(affine)
                walk.pending_names.append(name)
            else:
                walk.out.append((name, copy.deepcopy(module)))
                report.left_in_place.append(
                    (name, "no Linear or convolution directly before it and no Linear after it")
                )
            continue
        _check_values(f"{label} ({name})", module)
        if walk.pending is not None:  # module is the Linear that _next_is_linear found
            module = walk.into_next(name, module, modules)
        else:
            module = copy.deepcopy(module)
        walk.out.append((name, module))
    return [module for _, module in walk.out]


def fold_model(model: nn.Module, *, keep_standardize: bool = False) -> tuple[nn.Module, FoldReport]:
    """A folded copy of a BNMLP (its flat ``net``) or an ``nn.Sequential``; ``model`` is untouched.

    BN directly after a Linear/Conv folds into it; BN after an activation, and the input
    standardization, fold into the next Linear (activations there are (batch, features)),
    keeping a centering Sub where folding the shift would cancel (``Affine.shift_cancels``).
    A BN with neither is kept and listed in ``FoldReport.left_in_place``. Dropout is dropped.
    Non-finite weights or statistics, or a variance + eps <= 0, raise FoldError naming the
    layer and channel. ``keep_standardize`` leaves the input standardization in place (INT8).
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
    layers = [(prefix + name, module) for name, module in sequence.named_children()]
    report = FoldReport(labels=layer_labels(layers))
    folded_net = nn.Sequential(*_fold_sequence(layers, report, keep_standardize))
    if sequence is model:
        return folded_net.eval(), report
    folded = copy.deepcopy(model)
    folded.net = folded_net
    return folded.eval(), report
