"""Supermask layers: frozen random weights regenerated from the seed, a learned score per free weight.

The effective weight is `weight * mask`, where the mask is 1 on locked positions, 0 on pruned ones, and on
free positions the edge-popup top-k of |score| (Ramanujan et al. 2020), made differentiable with a
straight-through estimator: the forward uses the hard 0/1 mask, the backward passes the gradient of the
mask to |score|. Only the scores (and a trained bias) are parameters; weights and codes are buffers
that never reach an optimizer.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers.pytorch_utils import Conv1D

from ..errors import ConfigError, InputError
from . import generator
from .config import FrozenSLTConfig

KAIMING_GAIN = math.sqrt(2.0)


def regenerate_weight(config: FrozenSLTConfig, name: str, numel: int, fan_in: int) -> np.ndarray:
    """The layer's random float32 weights, flat, from the portable generator."""
    fan = fan_in * (1.0 - config.sparsity) if config.scale_fan else fan_in
    if config.weight_init == "signed_kaiming_constant":
        values = generator.signs(config.seed, name, generator.WEIGHT_STREAM, numel) * (
            KAIMING_GAIN / math.sqrt(fan)
        )
    else:
        bound = KAIMING_GAIN * math.sqrt(3.0 / fan)
        values = (2.0 * generator.uniform(config.seed, name, generator.WEIGHT_STREAM, numel) - 1.0) * bound
    return values.astype(np.float32)


def initial_scores(config: FrozenSLTConfig, name: str, numel: int, fan_in: int) -> np.ndarray:
    """Initial scores of all positions (the layer keeps the free ones)."""
    u = generator.uniform(config.seed, name, generator.SCORE_STREAM, numel)
    if config.score_init == "uniform":
        return u.astype(np.float32)
    return ((2.0 * u - 1.0) / math.sqrt(fan_in)).astype(np.float32)


def weight_checksum(weight: torch.Tensor) -> str:
    """sha256 of the float32 little-endian bytes of a weight tensor."""
    array = weight.detach().to("cpu", torch.float32).contiguous().numpy().astype("<f4", copy=False)
    return hashlib.sha256(array.tobytes()).hexdigest()


class SupermaskLayer(nn.Module):
    """Base of the supermask layers; subclasses set the weight layout and the dense operation.

    Args:
        name: the module's qualified name in the model (keys the generator).
        weight_like: the replaced layer's weight (its shape, layout, dtype and device are kept).
        fan_in: inputs per output unit.
        bias: the replaced layer's bias, or None.
        config: the SLT configuration.
        n_pruned, n_locked: exact frozen counts of this layer.
    """

    def __init__(
        self,
        name: str,
        weight_like: torch.Tensor,
        fan_in: int,
        bias: torch.Tensor | None,
        config: FrozenSLTConfig,
        n_pruned: int,
        n_locked: int,
    ) -> None:
        super().__init__()
        self.slt_name = name
        self.weight_shape = weight_like.shape
        numel = self.weight_shape.numel()
        device = weight_like.device
        codes = torch.from_numpy(generator.freeze_codes(config.seed, name, numel, n_pruned, n_locked))
        weight = torch.from_numpy(regenerate_weight(config, name, numel, fan_in)).view(self.weight_shape)
        self.register_buffer("weight", weight.to(device, weight_like.dtype), persistent=False)
        self.register_buffer("locked", (codes == generator.LOCKED).to(device), persistent=False)
        self.register_buffer("free", (codes == generator.FREE).to(device), persistent=False)
        scores = torch.from_numpy(initial_scores(config, name, numel, fan_in))[codes == generator.FREE]
        self.scores = nn.Parameter(scores.to(device))
        self.n_pruned, self.n_locked = n_pruned, n_locked
        self.kept_free = int(self.scores.numel())
        if bias is None:
            self.bias = None
        elif config.bias == "train":
            self.bias = nn.Parameter(bias.detach().clone())
        else:
            self.register_buffer("bias", torch.zeros_like(bias, requires_grad=False), persistent=False)

    @property
    def n_free(self) -> int:
        return int(self.scores.numel())

    def set_kept_free(self, kept_free: int) -> None:
        """How many free weights the top-k keeps (the threshold, as a count)."""
        if not 0 <= kept_free <= self.n_free:
            raise InputError(f"{self.slt_name}: cannot keep {kept_free} of {self.n_free} free weights")
        self.kept_free = int(kept_free)

    def free_mask(self) -> torch.Tensor:
        """Boolean top-k mask over the free positions (no gradient)."""
        top = torch.zeros_like(self.scores, dtype=torch.bool)
        if self.kept_free:
            top[self.scores.detach().abs().topk(self.kept_free, sorted=False).indices] = True
        return top

    def mask(self) -> torch.Tensor:
        """The full mask in the weight's layout, straight-through to the scores."""
        magnitude = self.scores.abs()
        # hard + (m - m.detach()) is exactly the hard mask in the forward and passes d/d|score| backward.
        free_values = self.free_mask().to(magnitude.dtype) + (magnitude - magnitude.detach())
        full = self.locked.to(magnitude.dtype).masked_scatter(self.free.view(-1), free_values)
        return full.view(self.weight_shape)

    def effective_weight(self) -> torch.Tensor:
        return self.weight * self.mask().to(self.weight.dtype)

    def set_free_mask(self, bits: torch.Tensor) -> None:
        """Make the top-k reproduce a given free-position mask (used when loading a ticket)."""
        if bits.numel() != self.n_free:
            raise InputError(f"{self.slt_name}: mask has {bits.numel()} bits for {self.n_free} free weights")
        with torch.no_grad():
            self.scores.copy_(bits.to(self.scores))
        self.set_kept_free(int(bits.sum()))

    def density(self) -> float:
        return (self.n_locked + self.kept_free) / self.weight_shape.numel()

    def merge(self) -> nn.Module:
        """A plain dense layer computing the same function (for fast inference)."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        return (
            f"{self.slt_name!r}, shape={tuple(self.weight_shape)}, pruned={self.n_pruned}, "
            f"locked={self.n_locked}, free={self.n_free}, kept_free={self.kept_free}"
        )


class SupermaskLinear(SupermaskLayer):
    """Supermask over an `nn.Linear` (weight `(out, in)`)."""

    def __init__(
        self, layer: nn.Linear, name: str, config: FrozenSLTConfig, n_pruned: int, n_locked: int
    ) -> None:
        super().__init__(name, layer.weight, layer.in_features, layer.bias, config, n_pruned, n_locked)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.effective_weight(), self.bias)

    def merge(self) -> nn.Linear:
        out_features, in_features = self.weight_shape
        dense = nn.Linear(in_features, out_features, bias=self.bias is not None, device=self.weight.device)
        return _fill_dense(dense, self)


class SupermaskConv2d(SupermaskLayer):
    """Supermask over an `nn.Conv2d` (weight `(out, in/groups, kh, kw)`, zero padding only)."""

    def __init__(
        self, layer: nn.Conv2d, name: str, config: FrozenSLTConfig, n_pruned: int, n_locked: int
    ) -> None:
        if layer.padding_mode != "zeros":
            raise ConfigError(
                f"{name}: supermask Conv2d supports padding_mode='zeros', not {layer.padding_mode!r}"
            )
        fan_in = layer.weight[0].numel()
        super().__init__(name, layer.weight, fan_in, layer.bias, config, n_pruned, n_locked)
        self.conv_kwargs = dict(
            stride=layer.stride, padding=layer.padding, dilation=layer.dilation, groups=layer.groups
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.effective_weight(), self.bias, **self.conv_kwargs)

    def merge(self) -> nn.Conv2d:
        out_channels, in_per_group, kh, kw = self.weight_shape
        groups = self.conv_kwargs["groups"]
        dense = nn.Conv2d(
            in_per_group * groups,
            out_channels,
            (kh, kw),
            bias=self.bias is not None,
            device=self.weight.device,
            **self.conv_kwargs,
        )
        return _fill_dense(dense, self)


class SupermaskConv1D(SupermaskLayer):
    """Supermask over transformers' GPT-2 `Conv1D` (weight `(in, out)`: fan-in is the first dimension)."""

    def __init__(
        self, layer: Conv1D, name: str, config: FrozenSLTConfig, n_pruned: int, n_locked: int
    ) -> None:
        super().__init__(name, layer.weight, layer.weight.shape[0], layer.bias, config, n_pruned, n_locked)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x.reshape(-1, x.shape[-1]) @ self.effective_weight()
        if self.bias is not None:
            out = out + self.bias
        return out.view(*x.shape[:-1], self.weight_shape[1])

    def merge(self) -> Conv1D:
        in_features, out_features = self.weight_shape
        dense = Conv1D(out_features, in_features).to(self.weight.device)
        if self.bias is None:
            dense.bias = None
        return _fill_dense(dense, self)


def _fill_dense(dense: nn.Module, layer: SupermaskLayer) -> nn.Module:
    with torch.no_grad():
        dense.weight.copy_(layer.effective_weight())
        if layer.bias is not None:
            dense.bias.copy_(layer.bias)
    return dense.to(layer.weight.dtype)


SUPERMASK_CLASSES: dict[type[nn.Module], type[SupermaskLayer]] = {
    nn.Linear: SupermaskLinear,
    nn.Conv2d: SupermaskConv2d,
    Conv1D: SupermaskConv1D,
}
