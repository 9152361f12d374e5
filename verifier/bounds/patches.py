"""Coefficients that touch only a spatial window of a feature map ("patches").

When a backward sweep starts at one neuron of a convolutional feature map, its coefficients on
earlier maps are nonzero only inside that neuron's receptive field. Storing just that window
(C x P x P per row instead of C x H x W) makes the sweeps that refine intermediate bounds of
convolutional networks several times cheaper. A rule that cannot work on windows gets dense
coefficients instead (`to_dense`), so patches are an optimisation, never a requirement.

Geometry: row r covers, in the map these coefficients belong to, the rows
`h_r * S - pad .. h_r * S - pad + P - 1` (and likewise for columns), where (h_r, w_r) is the
row's position on the grid where the sweep started. Positions outside the map hold coefficients
of padding zeros and never contribute.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass
class Patches:
    """Rows of coefficients on a map of per-sample shape (1, C, H, W) (or (C, H, W)).

    `padding` is never negative: sweeps start with none and convolutions only add their own.
    """

    values: Tensor                 # [B, m, C, Ph, Pw]
    stride: tuple[int, int]
    padding: tuple[int, int]
    position: Tensor               # [m, 2] long: (h, w) of each row on the starting grid
    shape: tuple[int, ...]         # per-sample shape of the map

    def __post_init__(self) -> None:
        if min(self.padding) < 0:
            raise ValueError(f"window padding {self.padding} is negative")

    @property
    def size(self) -> tuple[int, int]:
        return tuple(self.values.shape[-2:])

    @property
    def rows(self) -> int:
        return self.values.shape[1]

    def with_values(self, values: Tensor, **changes) -> Patches:
        return replace(self, values=values, **changes)

    def scaled(self, factor: float) -> Patches:
        return self.with_values(self.values * factor)

    def windows(self, *tensors: Tensor) -> Tensor | list[Tensor]:
        """The window of every row in per-position maps [B or 1, *shape] -> [B?, m, C, Ph, Pw] each
        (several maps share one unfold)."""
        channels, height, width = self.shape[-3:]
        batch = max(t.shape[0] for t in tensors)
        maps = torch.cat([t.reshape(t.shape[0], channels, height, width).expand(batch, -1, -1, -1)
                          for t in tensors], dim=1)
        (ph, pw), (sh, sw), (dh, dw) = self.size, self.stride, self.padding
        last_h, last_w = int(self.position[:, 0].max()), int(self.position[:, 1].max())
        extra_h = max(0, last_h * sh - dh + ph - height)
        extra_w = max(0, last_w * sw - dw + pw - width)
        padded = F.pad(maps, (dw, extra_w, dh, extra_h))
        unfolded = F.unfold(padded, (ph, pw), stride=(sh, sw))  # [B, C*Ph*Pw, Lh*Lw]
        grid_w = (padded.shape[-1] - pw) // sw + 1
        columns = self.position[:, 0] * grid_w + self.position[:, 1]
        picked = unfolded[:, :, columns]  # [B, k*C*Ph*Pw, m]
        picked = picked.transpose(1, 2).reshape(batch, self.rows, len(tensors), channels, ph, pw)
        return picked[:, :, 0] if len(tensors) == 1 else list(picked.unbind(2))

    def inner(self, tensor: Tensor) -> Tensor:
        """<row, map> for every row: [B, m] (map [B or 1, *shape])."""
        return (self.values * self.windows(tensor)).sum(dim=(2, 3, 4))

    def inside(self) -> Tensor:
        """[1, m, 1, Ph, Pw]: 1 on window cells inside the map, 0 on padding."""
        channels, height, width = self.shape[-3:]
        ones = torch.ones(1, *self.shape[:-3], 1, height, width, dtype=self.values.dtype, device=self.values.device)
        mask_patches = replace(self, shape=(*self.shape[:-3], 1, height, width))
        return mask_patches.windows(ones)

    @property
    def worth_keeping(self) -> bool:
        """Windows pay off while they cover well under the whole map (gathering them costs)."""
        return self.size[0] * self.size[1] <= 0.4 * self.shape[-2] * self.shape[-1]

    def to_dense(self) -> Tensor:
        """The same coefficients as a dense tensor [B, m, *shape]."""
        channels, height, width = self.shape[-3:]
        (ph, pw), (sh, sw), (dh, dw) = self.size, self.stride, self.padding
        batch = self.values.shape[0]
        canvas_h = max(height + dh, int(self.position[:, 0].max()) * sh + ph)
        canvas_w = max(width + dw, int(self.position[:, 1].max()) * sw + pw)
        top = self.position[:, 0] * sh  # canvas coordinates = map coordinates + padding
        left = self.position[:, 1] * sw
        offsets = torch.arange(ph, device=top.device).view(1, ph, 1) * canvas_w + \
            torch.arange(pw, device=top.device).view(1, 1, pw)
        index = (top * canvas_w + left).view(-1, 1, 1) + offsets  # [m, Ph, Pw]
        index = index.reshape(1, self.rows, 1, ph * pw).expand(batch, -1, channels, -1)
        canvas = self.values.new_zeros(batch, self.rows, channels, canvas_h * canvas_w)
        canvas.scatter_(3, index, self.values.reshape(batch, self.rows, channels, ph * pw))
        canvas = canvas.view(batch, self.rows, channels, canvas_h, canvas_w)[..., dh:dh + height, dw:dw + width]
        return canvas.reshape(batch, self.rows, *self.shape)


def identity_patches(positions: Tensor, signs: Tensor, batch: int, shape: tuple[int, ...],
                     dtype: torch.dtype) -> Patches:
    """Rows `signs[r] * e_{positions[r]}` on a map of per-sample `shape`, as 1x1 windows."""
    channels, height, width = shape[-3:]
    channel = positions // (height * width)
    spot = positions % (height * width)
    values = torch.zeros(batch, positions.numel(), channels, 1, 1, dtype=dtype, device=positions.device)
    values[:, torch.arange(positions.numel(), device=positions.device), channel, 0, 0] = signs.to(dtype)
    position = torch.stack([spot // width, spot % width], dim=1)
    return Patches(values, (1, 1), (0, 0), position, tuple(shape))


def combine(first: Tensor | Patches, second: Tensor | Patches) -> Tensor | Patches:
    """The sum of two coefficient sets of one node (windows aligned, or dense when they differ)."""
    if isinstance(first, Patches) and isinstance(second, Patches) and first.stride == second.stride \
            and first.shape == second.shape and first.rows == second.rows \
            and torch.equal(first.position, second.position):
        top = max(first.padding[0], second.padding[0])
        left = max(first.padding[1], second.padding[1])
        bottom = max(first.size[0] - first.padding[0], second.size[0] - second.padding[0])
        right = max(first.size[1] - first.padding[1], second.size[1] - second.padding[1])

        def aligned(p: Patches) -> Tensor:
            pad_top, pad_left = top - p.padding[0], left - p.padding[1]
            pad_bottom = bottom - (p.size[0] - p.padding[0])
            pad_right = right - (p.size[1] - p.padding[1])
            return F.pad(p.values, (pad_left, pad_right, pad_top, pad_bottom))

        return first.with_values(aligned(first) + aligned(second), padding=(top, left))
    dense = [c.to_dense() if isinstance(c, Patches) else c for c in (first, second)]
    return dense[0] + dense[1]


def densify(coeffs: Tensor | Patches) -> Tensor:
    return coeffs.to_dense() if isinstance(coeffs, Patches) else coeffs
