"""3D ViT image encoder of SAM-Med3D, state-dict compatible with the official ``ImageEncoderViT3D``.

The encoder turns a (B, 1, S, S, S) volume into a (B, out_chans, S/p, S/p, S/p) embedding.
It reproduces two behaviours of the official code that the released weights were trained with:

* **Padded windows.** A windowed block whose window (14 for ``vit_b_ori``) is larger than the
  token grid (8³) zero-pads the *normalised* tokens into one 14³ window and attends over all
  2744 positions with no mask. Padded tokens therefore act as keys with ``k = k_bias`` and
  ``v = v_bias``.
* **The decomposed relative-position term** as the official broadcasting computes it: the bias
  added to the logit of query (qd, qh, qw) and key (kd, kh, kw) is::

      q(qd,qh,qw)·Rd[qd,kw] + q(qd,qh,kd)·Rh[qh,kw] + q(qd,qh,kh)·Rw[kh,kw]

  with ``R[i, j] = table[i - j + S - 1]`` (S = attention grid side) and q the unscaled query
  (``q_bias`` at padded positions). This is not the textbook term; the weights expect it.

Two attention paths compute the same numbers:

* ``reference``: the plain algorithm (pad, partition, full attention with the bias above). It
  costs 368.6 GFLOP for ``vit_b_ori`` (8.2 s on 2 CPU threads) and exists for tests.
* ``fast`` (default): the 2232 padded keys of a single padded window are folded *exactly* into
  one extra key per query. They share k and v, and their bias factorises per ``kw`` into sums
  over ``kd`` and ``kh``, so the extra key's logit is ``scale·q·k_bias + log Σ_pad exp(bias)``.
  Attention then runs over 8³ + 1 keys in one fused ``scaled_dot_product_attention`` call with
  the bias as a float mask. ``vit_b_ori``: 95 GFLOP (``FlopCounterMode``), 1.35 s on one CPU
  thread, within 4e-6 of the official code's embedding (max abs, embedding max ≈ 5); timings in
  ``benchmarks/README.md``. Grids split into several windows (window smaller than the grid) use
  the reference path.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .common import LayerNorm3d, MLPBlock


def relative_position_matrix(table: torch.Tensor, n_query: int, side: int) -> torch.Tensor:
    """Expand a relative-position table into ``R[i, j] = table[i - j + side - 1]``.

    Args:
        table: (2·side − 1, head_dim) learned table.
        n_query: number of query positions i (i in [0, n_query)); keys j run over [0, side).
        side: side of the attention grid the table was built for.

    Returns:
        (n_query, side, head_dim) tensor.
    """
    if table.shape[0] != 2 * side - 1:
        raise ValueError(
            f"relative-position table has {table.shape[0]} rows but an attention grid of side "
            f"{side} needs {2 * side - 1}; the input size does not match the model's img_size"
        )
    i = torch.arange(n_query, device=table.device)[:, None]
    j = torch.arange(side, device=table.device)[None, :]
    return table[i - j + side - 1]


class Attention3D(nn.Module):
    """Multi-head self-attention over a cubic token grid with the official relative-position term.

    Args:
        dim: token width.
        num_heads: number of heads (must divide ``dim``).
        qkv_bias: learn a bias for q, k and v.
        use_rel_pos: add the decomposed relative-position term.
        rel_pos_side: side S of the attention grid (window size, or token-grid side for
            global blocks); tables have 2S − 1 rows.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool, use_rel_pos: bool, rel_pos_side: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.use_rel_pos = use_rel_pos
        self.rel_pos_side = rel_pos_side
        if use_rel_pos:
            rows = 2 * rel_pos_side - 1
            self.rel_pos_d = nn.Parameter(torch.zeros(rows, self.head_dim))
            self.rel_pos_h = nn.Parameter(torch.zeros(rows, self.head_dim))
            self.rel_pos_w = nn.Parameter(torch.zeros(rows, self.head_dim))

    # -- shared pieces -------------------------------------------------------------------------

    def _qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, D, H, W, C) → q, k, v each (B, heads, D·H·W, head_dim); q is unscaled."""
        b, d, h, w, _ = x.shape
        qkv = self.qkv(x).reshape(b, d * h * w, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        return qkv[0], qkv[1], qkv[2]

    def _merge_heads(self, out: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        """(B, heads, N, head_dim) → projected (B, D, H, W, C)."""
        b = out.shape[0]
        out = out.transpose(1, 2).reshape(b, *grid, self.num_heads * self.head_dim)
        return self.proj(out)

    # -- reference path ------------------------------------------------------------------------

    def forward_reference(self, x: torch.Tensor) -> torch.Tensor:
        """Plain attention over every token of ``x`` (B, S, S, S, C), as the official code does."""
        b, d, h, w, _ = x.shape
        q, k, v = self._qkv(x)
        attn = (q * self.scale) @ k.transpose(-2, -1)  # (B, heads, N, N)
        if self.use_rel_pos:
            side = self.rel_pos_side
            if not d == h == w == side:
                raise ValueError(f"attention grid {(d, h, w)} does not match the relative-position side {side}")
            rd = relative_position_matrix(self.rel_pos_d, side, side)
            rh = relative_position_matrix(self.rel_pos_h, side, side)
            rw = relative_position_matrix(self.rel_pos_w, side, side)
            q5 = q.reshape(b, self.num_heads, d, h, w, self.head_dim)
            # rel_x[..., i, j, l, m] = q(i, j, l) · R_x[axis index, m]
            rel_d = torch.einsum("bndhwc,dmc->bndhwm", q5, rd)
            rel_h = torch.einsum("bndhwc,hmc->bndhwm", q5, rh)
            rel_w = torch.einsum("bndhwc,wmc->bndhwm", q5, rw)
            # Broadcast exactly as the official code: the last (m) axis always lands on kw, the
            # query's w index lands on kd (rel_h) or kh (rel_w).
            attn = attn.view(b, self.num_heads, d, h, w, d, h, w)
            attn = (
                attn
                + rel_d[:, :, :, :, :, None, None, :]
                + rel_h[:, :, :, :, None, :, None, :]
                + rel_w[:, :, :, :, None, None, :, :]
            ).view(b, self.num_heads, d * h * w, d * h * w)
        attn = attn.softmax(dim=-1)
        return self._merge_heads(attn @ v, (d, h, w))

    # -- fast exact path -----------------------------------------------------------------------

    def forward_folded(self, x: torch.Tensor, side: int) -> torch.Tensor:
        """Attention of ``x`` (B, G, G, G, C) as if zero-padded to one window of ``side`` ≥ G.

        Gives the same result as padding the normalised tokens to ``side``³, running
        :meth:`forward_reference` and cropping back, with the ``side³ − G³`` padded keys (2232 for
        8 → 14) folded into one extra key. ``side == G`` is plain global attention.

        The extra key is the projection of one appended zero token (so k = k_bias, v = v_bias,
        and its q is q_bias, the query of every padded position), and its bias column is the
        log of the padded keys' summed exp(bias). The relative-position terms are computed for
        the G real positions only; at padded positions q is q_bias, so their terms there are
        q_bias's (a (qh, kw) and a (kh, kw) table) and no padded copy of q is made. The bias is
        written in one broadcast pass into a (B, heads, G³, G³ + 1) buffer: for ``vit_b_ori`` on
        one CPU thread, three passes plus concatenating the mask, k and v took 0.15 s of the
        encoder's 1.45 s; this takes 0.07 s.
        """
        b, g = x.shape[0], x.shape[1]
        heads, hd = self.num_heads, self.head_dim
        n = g**3
        pad = side - g
        tokens = x.reshape(b, n, x.shape[-1])
        if pad:
            tokens = torch.cat([tokens, tokens.new_zeros(b, 1, tokens.shape[-1])], dim=1)
        qkv = self.qkv(tokens).reshape(b, tokens.shape[1], 3, heads, hd).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0][:, :, :n], qkv[1], qkv[2]

        mask = None
        if self.use_rel_pos:
            if self.rel_pos_side != side:
                raise ValueError(f"attention side {side} does not match the relative-position side {self.rel_pos_side}")
            rd = relative_position_matrix(self.rel_pos_d, g, side)  # (G, side, hd): qd, kw
            rh = relative_position_matrix(self.rel_pos_h, g, side)  # (G, side, hd): qh, kw
            rw = relative_position_matrix(self.rel_pos_w, side, side)  # (side, side, hd): kh, kw
            q5 = q.reshape(b, heads, g, g, g, hd)
            a = torch.einsum("bndhwc,dmc->bndhwm", q5, rd)  # (B,n,qd,qh,qw,kw)
            bh = torch.einsum("bndhjc,hmc->bndhjm", q5, rh)  # (B,n,qd,qh,kd,kw), kd < G
            cw = torch.einsum("bndhjc,jmc->bndhjm", q5, rw[:g])  # (B,n,qd,qh,kh,kw), kh < G
            mask = torch.empty(b, heads, n, n + (1 if pad else 0), dtype=q.dtype, device=q.device)
            # The kd/kh/kw part does not depend on qw: sum it at (B,n,qd,qh,kd,kh,kw) size first,
            # then write the full bias in one broadcast pass (3× less traffic than three passes).
            key_part = bh[:, :, :, :, :g, None, :g] + cw[:, :, :, :, None, :g, :g]
            body = mask[..., :n].view(b, heads, g, g, g, g, g, g)  # (qd,qh,qw,kd,kh,kw)
            query_part, key_part = a[:, :, :, :, :, None, None, :g], key_part[:, :, :, :, None]
            if torch.is_grad_enabled() and (query_part.requires_grad or key_part.requires_grad):
                body.copy_(query_part + key_part)  # out= does not support autograd
            else:
                torch.add(query_part, key_part, out=body)
            if pad:
                # rel_h / rel_w read q at the key's d / h index: q_bias (the query of the appended
                # zero token) at padded positions, so their terms there depend on (qh, kw) and (kh, kw) only.
                q_bias = qkv[0][:, :, n]  # (B, n, hd)
                bh_pad = torch.einsum("bnc,hmc->bnhm", q_bias, rh)  # (B,n,qh,kw): every kd >= G
                cw_pad = torch.einsum("bnc,jmc->bnjm", q_bias, rw[g:])  # (B,n,kh - G,kw)
                mask[..., n] = _log_padded_mass(a, bh, cw, bh_pad, cw_pad, pad).reshape(b, heads, n)
        elif pad:
            # Without relative positions every padded key has bias 0: the sum is their count.
            mask = q.new_zeros(b, heads, n, n + 1)
            mask[..., n] = math.log(side**3 - n)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale)
        return self._merge_heads(out, (g, g, g))


def _log_padded_mass(a: torch.Tensor, bh: torch.Tensor, cw: torch.Tensor, bh_pad: torch.Tensor, cw_pad: torch.Tensor, pad: int) -> torch.Tensor:
    """log Σ over padded keys of exp(bias), per query: (B, heads, G, G, G).

    Args:
        a: (B, heads, qd, qh, qw, kw) term q·Rd, kw over the whole window side S = G + pad.
        bh: (B, heads, qd, qh, kd, kw) term q(qd,qh,kd)·Rh[qh,kw] for kd < G, kw over S.
        cw: (B, heads, qd, qh, kh, kw) term q(qd,qh,kh)·Rw[kh,kw] for kh < G, kw over S.
        bh_pad: (B, heads, qh, kw) the ``bh`` term of every padded kd (q is q_bias there).
        cw_pad: (B, heads, kh - G, kw) the ``cw`` term of each padded kh.
        pad: S − G.

    The padded keys are {kw ≥ G} ∪ {kw < G, kd ≥ G} ∪ {kw < G, kd < G, kh ≥ G}: disjoint sets on
    which the sum factorises per kw into sums over kd and over kh. Each factor is shifted by its
    maximum before exp, and all terms are positive (no cancellation).
    """
    g = bh.shape[4]
    bh_pad = bh_pad[:, :, None]  # (B,n,1,qh,kw), broadcast over qd
    mb = torch.maximum(bh.amax(dim=4), bh_pad)  # (B,n,qd,qh,kw)
    mc = torch.maximum(cw.amax(dim=4), cw_pad.amax(dim=2)[:, :, None, None])
    b_lo = torch.exp(bh - mb.unsqueeze(4)).sum(4)  # (B,n,qd,qh,kw)
    b_hi = pad * torch.exp(bh_pad - mb)
    c_lo = torch.exp(cw - mc.unsqueeze(4)).sum(4)
    c_hi = torch.exp(cw_pad[:, :, None, None] - mc.unsqueeze(4)).sum(4)
    c_all = c_lo + c_hi
    per_kw = (b_lo + b_hi) * c_all
    per_kw[..., :g] = (b_hi * c_all + b_lo * c_hi)[..., :g]
    # A factor underflows only when its terms are < e^-87 of the largest; keep log finite there.
    log_kw = torch.log(per_kw.clamp_min(torch.finfo(per_kw.dtype).tiny)) + mb + mc
    return torch.logsumexp(a + log_kw.unsqueeze(4), dim=-1)


def window_partition(x: torch.Tensor, window: int) -> tuple[torch.Tensor, int]:
    """Zero-pad (B, G, G, G, C) to a multiple of ``window`` and split into windows.

    Returns:
        (B·n³, window, window, window, C) windows and the padded side.
    """
    b, g, _, _, c = x.shape
    pad = (window - g % window) % window
    if pad:
        x = F.pad(x, (0, 0, 0, pad, 0, pad, 0, pad))
    gp = g + pad
    n = gp // window
    x = x.view(b, n, window, n, window, n, window, c).permute(0, 1, 3, 5, 2, 4, 6, 7)
    return x.reshape(-1, window, window, window, c), gp


def window_unpartition(windows: torch.Tensor, window: int, padded_side: int, side: int) -> torch.Tensor:
    """Inverse of :func:`window_partition`: reassemble windows and crop the padding."""
    n = padded_side // window
    c = windows.shape[-1]
    b = windows.shape[0] // n**3
    x = windows.view(b, n, n, n, window, window, window, c).permute(0, 1, 4, 2, 5, 3, 6, 7)
    x = x.reshape(b, padded_side, padded_side, padded_side, c)
    return x[:, :side, :side, :side, :].contiguous()


class Block3D(nn.Module):
    """Pre-norm transformer block with windowed or global attention."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float,
        qkv_bias: bool,
        use_rel_pos: bool,
        window_size: int,
        grid_side: int,
        norm_eps: float = 1e-6,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.window_size = window_size
        self.grid_side = grid_side
        self.attn = Attention3D(dim, num_heads, qkv_bias, use_rel_pos, window_size if window_size > 0 else grid_side)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = MLPBlock(dim, int(dim * mlp_ratio), nn.GELU)
        self.use_reference = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.norm1(x)
        g, w = x.shape[1], self.window_size
        if w == 0:
            x = self.attn.forward_reference(x) if self.use_reference else self.attn.forward_folded(x, g)
        elif w >= g and not self.use_reference:
            x = self.attn.forward_folded(x, w)
        else:
            windows, padded_side = window_partition(x, w)
            x = window_unpartition(self.attn.forward_reference(windows), w, padded_side, g)
        # In place on the fresh attention / MLP outputs (no new tensor; their backward does not
        # need them), unless autocast made them narrower than the residual stream it keeps.
        x = x.add_(shortcut) if x.dtype == shortcut.dtype else shortcut + x
        h = self.mlp(self.norm2(x))
        return h.add_(x) if h.dtype == x.dtype else x + h


class PatchEmbed3D(nn.Module):
    """Non-overlapping 3D patches → tokens, channels last: (B, C_in, S, S, S) → (B, G, G, G, E)."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu" and _cpu_autocast_enabled():
            # oneDNN's bf16 Conv3d for one input channel and a 16³ kernel is ~14× slower than fp32
            # on CPU (vit_b_ori: 0.52 s vs 0.037 s on one thread), so keep this layer in fp32.
            with torch.autocast("cpu", enabled=False):
                return self.proj(x.float()).permute(0, 2, 3, 4, 1)
        return self.proj(x).permute(0, 2, 3, 4, 1)


def _cpu_autocast_enabled() -> bool:
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # torch < 2.4 has no device argument
        return torch.is_autocast_cpu_enabled()


class ImageEncoderViT3D(nn.Module):
    """ViT image encoder (ViTDet-style) for cubic volumes.

    Args:
        img_size: side of the cubic input (128 for the released checkpoints).
        patch_size: side of a patch; the token grid has side ``img_size // patch_size``.
        in_chans: input channels (1).
        embed_dim, depth, num_heads, mlp_ratio, qkv_bias: transformer sizes.
        out_chans: channels of the output embedding (the prompt dimension).
        use_abs_pos: learn an absolute position embedding (1, G, G, G, embed_dim).
        use_rel_pos: add the decomposed relative-position term.
        rel_pos_zero_init: accepted for compatibility with the official signature (tables
            always start at zero).
        window_size: window side of non-global blocks (0: all blocks global).
        global_attn_indexes: indexes of blocks that use global attention.

    Input: (B, in_chans, img_size, img_size, img_size) float. Output: (B, out_chans, G, G, G).
    """

    def __init__(
        self,
        img_size: int = 256,
        patch_size: int = 16,
        in_chans: int = 1,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        out_chans: int = 256,
        qkv_bias: bool = True,
        use_abs_pos: bool = True,
        use_rel_pos: bool = False,
        rel_pos_zero_init: bool = True,
        window_size: int = 0,
        global_attn_indexes: tuple[int, ...] | list[int] = (),
    ) -> None:
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f"img_size {img_size} must be a multiple of patch_size {patch_size}")
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} must be divisible by num_heads {num_heads}")
        self.img_size = img_size
        self.in_chans = in_chans
        self.grid_side = img_size // patch_size
        self.patch_embed = PatchEmbed3D(patch_size, in_chans, embed_dim)
        self.pos_embed: nn.Parameter | None = None
        if use_abs_pos:
            g = self.grid_side
            self.pos_embed = nn.Parameter(torch.zeros(1, g, g, g, embed_dim))
        global_set = set(int(i) for i in global_attn_indexes)
        self.blocks = nn.ModuleList(
            Block3D(
                embed_dim,
                num_heads,
                mlp_ratio,
                qkv_bias,
                use_rel_pos,
                0 if i in global_set else window_size,
                self.grid_side,
            )
            for i in range(depth)
        )
        self.neck = nn.Sequential(
            nn.Conv3d(embed_dim, out_chans, kernel_size=1, bias=False),
            LayerNorm3d(out_chans),
            nn.Conv3d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm3d(out_chans),
        )

    def use_reference_attention(self, enabled: bool = True) -> None:
        """Switch every block to the plain (slow) attention path, for tests and debugging."""
        for block in self.blocks:
            block.use_reference = enabled

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        expected = (self.in_chans, self.img_size, self.img_size, self.img_size)
        if x.dim() != 5 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"image encoder expects input of shape (B, {', '.join(map(str, expected))}), got {tuple(x.shape)}")
        x = self.patch_embed(x)  # channels-last view of the convolution's output
        # Tokens contiguous from here on (the sum takes pos_embed's layout): every layer norm of a
        # view would copy it, and every residual sum would keep the view's layout.
        x = self.pos_embed + x if self.pos_embed is not None else x.contiguous()
        for block in self.blocks:
            x = block(x)
        return self.neck(x.permute(0, 4, 1, 2, 3))
