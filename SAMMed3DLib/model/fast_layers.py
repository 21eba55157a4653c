"""Drop-in 3D layers that run the fine head's CPU inference on oneDNN in channels-last layout.

PyTorch picks a CPU convolution backend with a size rule written for 2D images: with batch 1
and ``C·D·H < 20480`` it runs its own direct ("slow") kernel instead of oneDNN. For 3D feature
maps the rule misfires badly: a 16-channel 3×3×3 convolution on 32³ (the fine head's middle
level) took 31 ms on 2 threads through the direct kernel and 1.9 ms through oneDNN. oneDNN is
faster again on channels-last input (an 8-channel 3×3×3 convolution on 64³: 9 ms instead of
14 ms; a 1×1×1 one: 0.7 ms instead of 4.9 ms), and a network then has to *stay* channels-last
(converting an 8-channel 64³ map between layouts cost 6 ms). The activations keep a
channels-last input channels-last by themselves; PyTorch's instance norm does not (it returned a
contiguous map, which the next convolution converted back) and took 6–13 ms on an 8-channel 64³
map on one thread.

So each layer here keeps its ``nn`` parent's parameters and state-dict keys and, at inference
on the CPU in float32 (no gradient needed), takes a fast path that returns channels-last:

* :class:`Conv3d`: oneDNN directly, whatever the size.
* :class:`ConvTranspose3d` (kernel = stride, no padding): one matrix product per voxel, laid out
  so the result is already channels-last.
* :class:`InstanceNorm3d` (affine, no running statistics): the per-channel mean and variance as
  matrix products over blocks of voxels, added up in float64, then a multiply-add in place;
  channels-last in and out (an 8-channel 64³ map: 2.9 ms instead of 4.8 ms on one thread, and
  no conversion after it).

The fast paths compute the same functions up to float32 summation order (about 1e-6 on the
fine head's logits). Anything else (training, GPU, bf16 autocast, other options) goes through
the parent's ``forward`` unchanged.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["Conv3d", "ConvTranspose3d", "InstanceNorm3d", "fast_path_usable"]

_CL = torch.channels_last_3d


def fast_path_usable(x: torch.Tensor, weight: torch.Tensor | None) -> bool:
    """Whether a float32 CPU inference layer on ``x`` (B, C, D, H, W) can take the fast path."""
    if x.device.type != "cpu" or x.dtype != torch.float32 or x.dim() != 5:
        return False
    if weight is not None and weight.dtype != torch.float32:
        return False
    if torch.is_grad_enabled() and (x.requires_grad or (weight is not None and weight.requires_grad)):
        return False
    backend = torch.backends.mkldnn
    return bool(backend.is_available() and backend.enabled)


class Conv3d(nn.Conv3d):
    """``nn.Conv3d`` whose CPU inference always runs on oneDNN, channels-last."""

    def _onednn(self, x: torch.Tensor) -> bool:
        return self.padding_mode == "zeros" and not isinstance(self.padding, str) and self.groups == 1 and fast_path_usable(x, self.weight)

    def _conv(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return torch.ops.aten.mkldnn_convolution(
            x.contiguous(memory_format=_CL), weight.contiguous(memory_format=_CL), bias,
            list(self.padding), list(self.stride), list(self.dilation), self.groups,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._onednn(x):
            return super().forward(x)
        return self._conv(x, self.weight, self.bias)

    def forward_channels(self, x: torch.Tensor, first: int, with_bias: bool) -> torch.Tensor:
        """The share of input channels ``first:first + C`` (C = ``x``'s channels) in ``forward``.

        A convolution is linear in its input channels, so ``forward(cat([a, b]))`` equals
        ``forward_channels(a, 0, True) + forward_channels(b, len(a), False)`` (up to float32
        summation order): a network can keep the share of inputs that do not change. Fast path
        only (CPU inference, see :func:`fast_path_usable`); raises otherwise.
        """
        if not self._onednn(x):
            raise ValueError("forward_channels is for CPU float32 inference (fast_path_usable)")
        weight = self.weight[:, first : first + x.shape[1]]
        return self._conv(x, weight, self.bias if with_bias else None)


class ConvTranspose3d(nn.ConvTranspose3d):
    """``nn.ConvTranspose3d``; with kernel = stride and no padding, CPU inference is one matmul.

    Each input voxel then produces its own ``k³`` output block: ``(voxels, C_in) @ (C_in, k³·C_out)``,
    rearranged into a channels-last output (blocks of C_out contiguous floats move together).
    """

    def _is_block_upsampling(self) -> bool:
        return (
            self.kernel_size == self.stride
            and all(p == 0 for p in self.padding)
            and all(p == 0 for p in self.output_padding)
            and all(d == 1 for d in self.dilation)
            and self.groups == 1
        )

    def forward(self, x: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        if output_size is not None or not self._is_block_upsampling() or not fast_path_usable(x, self.weight):
            return super().forward(x, output_size)
        b, cin, d, h, w = x.shape
        kd, kh, kw = self.kernel_size
        cout = self.out_channels
        rows = x.permute(0, 2, 3, 4, 1).reshape(b * d * h * w, cin)  # free for a channels-last input
        weight = self.weight.permute(0, 2, 3, 4, 1).reshape(cin, kd * kh * kw * cout)  # (C_in, kd, kh, kw, C_out)
        out = rows @ weight
        if self.bias is not None:
            out = out.view(-1, kd * kh * kw, cout).add_(self.bias)
        out = out.view(b, d, h, w, kd, kh, kw, cout).permute(0, 1, 4, 2, 5, 3, 6, 7).reshape(b, d * kd, h * kh, w * kw, cout)
        return out.permute(0, 4, 1, 2, 3)  # (B, C_out, D', H', W') view, channels-last in memory


#: Voxels per block of the instance norm's sums (each block in float32, the blocks in float64).
NORM_BLOCK = 512


class InstanceNorm3d(nn.InstanceNorm3d):
    """``nn.InstanceNorm3d``; with affine parameters and no running statistics, CPU inference
    returns channels-last (see the module docstring)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.affine or self.track_running_stats or not fast_path_usable(x, self.weight):
            return super().forward(x)
        b, c = x.shape[:2]
        n = x.shape[2] * x.shape[3] * x.shape[4]
        x = x.contiguous(memory_format=_CL)  # free for the head's maps
        rows = x.permute(0, 2, 3, 4, 1).reshape(b, n, c)  # a view: (voxels, channels) per item
        block = NORM_BLOCK if n % NORM_BLOCK == 0 else n
        ones = torch.ones(1, block, dtype=x.dtype)

        def channel_sums(values: torch.Tensor) -> torch.Tensor:  # (B, C) in float64
            return (ones @ values.reshape(b, n // block, block, c)).double().sum(dim=(1, 2))

        # Two passes (the mean, then the spread around it): a convolution's output sits far from
        # zero on some channels, where the mean of squares minus the squared mean loses digits.
        mean = channel_sums(rows) / n
        centred = rows - mean.float()[:, None, :]
        var = channel_sums(centred * centred) / n
        scale = (self.weight.double() * torch.rsqrt(var + self.eps)).float()
        out = centred.mul_(scale[:, None, :]).add_(self.bias.float())
        return out.view(b, *x.shape[2:], c).permute(0, 4, 1, 2, 3)
