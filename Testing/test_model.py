"""SAM-Med3D network: state-dict layout, the official code's quirks, fast path, configs, golden outputs.

The released weights were trained with three behaviours of the official code that a textbook
re-implementation would "fix" (``../shared/spec/SAM_MED3D_FACTS.md`` §4, §6). Each has a test
that recomputes the expected numbers from the formula, written here independently of the model
code, and also checks that the textbook variant gives different numbers (so the test can fail):

1. windowed blocks zero-pad the 8³ token grid to one 14³ window and attend over all of it;
2. the decomposed relative-position term broadcasts as
   ``q(qd,qh,qw)·Rd[qd,kw] + q(qd,qh,kd)·Rh[qh,kw] + q(qd,qh,kh)·Rw[kh,kw]``;
3. the dense positional encoding swaps grid axes 0 and 1 relative to the point encoding.

``Testing/fixtures/model_official_golden.npz`` holds outputs of the official modules
(uni-medical/SAM-Med3D) for two reduced configurations whose weights :func:`seeded_weights`
draws from numpy's frozen ``RandomState`` stream; ``Testing/fixtures/make_model_golden.py``
regenerates it from an official checkout. Sizes are small so the file runs in seconds on 2
cores; the one check on the full ``vit_b_ori`` forward is marked slow.
"""

from __future__ import annotations

import copy
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from SAMMed3DLib.errors import ConfigError, PromptError
from SAMMed3DLib.model import VIT_B_ORI, build_sam3d, infer_config, normalize_config
from SAMMed3DLib.model.prompt_encoder import PromptEncoder3D

ROOT = Path(__file__).resolve().parents[1]
SPEC_TSV = ROOT.parent / "shared" / "spec" / "sam_med3d_state_dict.tsv"
GOLDEN = Path(__file__).resolve().parent / "fixtures" / "model_official_golden.npz"

# Figures of the official vit_b_ori (facts file §1); pinned here so the test runs without shared/.
VIT_B_ORI_PARAMS = {"image_encoder": 92_924_928, "prompt_encoder": 8_668, "mask_decoder": 7_575_636}
VIT_B_ORI_TOTAL = 100_509_232
VIT_B_ORI_ENTRIES = 324


def small_config(
    img: int,
    patch: int,
    window: int,
    *,
    embed_dim: int = 16,
    depth: int = 2,
    heads: int = 2,
    global_idx: tuple[int, ...] = (1,),
    prompt_dim: int = 48,
    use_rel_pos: bool = True,
    mask_in_chans: int = 8,
) -> dict[str, dict[str, Any]]:
    """A reduced configuration in the official constructor vocabulary."""
    grid = img // patch
    return {
        "image_encoder": {
            "img_size": img, "patch_size": patch, "embed_dim": embed_dim, "depth": depth, "num_heads": heads,
            "out_chans": prompt_dim, "use_rel_pos": use_rel_pos, "window_size": window,
            "global_attn_indexes": list(global_idx),
        },
        "prompt_encoder": {
            "embed_dim": prompt_dim, "image_embedding_size": [grid] * 3, "input_image_size": [img] * 3,
            "mask_in_chans": mask_in_chans,
        },
        "mask_decoder": {"transformer_dim": prompt_dim},
    }


def seeded_weights(model: nn.Module, seed: int) -> None:
    """Overwrite every state-dict entry with values from numpy's frozen ``RandomState`` stream.

    Works on any module with the official key layout (ours or the official classes), visiting keys
    in sorted order, so two such models get identical weights. Relative-position tables,
    ``pos_embed``, biases, norm affines and the Gaussian matrix are non-zero, so every quirk
    changes the outputs; linear/conv weights are uniform in ±1/sqrt(fan_in) (PyTorch's scale).
    """
    rs = np.random.RandomState(seed)
    state = model.state_dict()
    with torch.no_grad():
        for name in sorted(state):
            tensor = state[name]
            shape = tuple(tensor.shape)
            owner = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
            if name.endswith("positional_encoding_gaussian_matrix") or isinstance(owner, nn.Embedding):
                values = rs.standard_normal(shape)
            elif ".rel_pos_" in name:
                values = 0.3 * rs.standard_normal(shape)
            elif name.endswith("pos_embed"):
                values = 0.5 * rs.standard_normal(shape)
            elif name.endswith(".bias"):
                values = 0.2 * rs.standard_normal(shape)
            elif type(owner).__name__ in ("LayerNorm", "LayerNorm3d"):
                values = 1.0 + 0.2 * rs.standard_normal(shape)
            else:
                bound = 1.0 / math.sqrt(int(np.prod(shape[1:])))
                values = rs.uniform(-bound, bound, shape)
            tensor.copy_(torch.from_numpy(values.astype(np.float32)))


def seeded_model(config: dict[str, Any], seed: int = 0) -> nn.Module:
    model = build_sam3d(config)
    seeded_weights(model, seed)
    return model.eval()


# -- golden outputs of the official modules ------------------------------------------------------

#: Reduced configurations of the golden fixture: the vit_b_ori geometry in miniature (8³ grid
#: padded into one 14³ window, one global block) and a grid split into 2×2×2 windows of 4³.
GOLDEN_CONFIGS: dict[str, dict[str, Any]] = {
    "grid8_window14": small_config(64, 8, 14, embed_dim=48, heads=4),
    "grid8_window4": small_config(32, 4, 4, embed_dim=48, heads=4),
}
#: Prompt cases: (name, prompt batch, clicks, mask kind). "zero" is the official first click.
GOLDEN_PROMPTS = (
    ("one_click_zero_mask", 1, 1, "zero"),
    ("three_clicks_random_mask", 1, 3, "random"),
    ("two_clicks_no_mask", 1, 2, "none"),
    ("batch2_two_clicks_random_mask", 2, 2, "random"),
)
#: Sub-grid of the 4G³ logits stored in the fixture: stride 3 visits every position of the
#: stride-2 transposed convolutions' 2×2×2 kernels.
LOGIT_SAMPLE = (Ellipsis, slice(1, None, 3), slice(2, None, 3), slice(0, None, 3))


def golden_inputs(name: str) -> tuple[torch.Tensor, list[tuple[str, torch.Tensor, torch.Tensor, torch.Tensor | None]]]:
    """Image and prompt cases of one golden configuration, drawn from ``RandomState``.

    Returns:
        image (1, 1, S, S, S) float32, and per case (name, coords (B, N, 3) float32 voxel
        indices in tensor-axis order, labels (B, N) int64 1/0, mask logits (B, 1, 4G, 4G, 4G)
        float32 or None).
    """
    enc = GOLDEN_CONFIGS[name]["image_encoder"]
    size, low = enc["img_size"], 4 * enc["img_size"] // enc["patch_size"]
    rs = np.random.RandomState(1234)
    image = torch.from_numpy(rs.standard_normal((1, 1, size, size, size)).astype(np.float32))
    cases = []
    for case, batch, clicks, mask_kind in GOLDEN_PROMPTS:
        coords = torch.from_numpy(rs.randint(0, size, (batch, clicks, 3)).astype(np.float32))
        labels = torch.from_numpy(rs.randint(0, 2, (batch, clicks)).astype(np.int64))
        labels[:, 0] = 1
        if mask_kind == "zero":
            mask = torch.zeros(batch, 1, low, low, low)
        elif mask_kind == "random":
            mask = torch.from_numpy((2.0 * rs.standard_normal((batch, 1, low, low, low))).astype(np.float32))
        else:
            mask = None
        cases.append((case, coords, labels, mask))
    return image, cases


def _assert_golden(name: str, device: str) -> None:
    golden = np.load(GOLDEN)
    model = seeded_model(GOLDEN_CONFIGS[name]).to(device)
    with torch.inference_mode():
        image, cases = golden_inputs(name)
        embedding = model.image_encoder(image.to(device))
        np.testing.assert_allclose(embedding[:, :8].cpu().numpy(), golden[f"{name}/embedding_c0-7"], atol=1e-4, rtol=0)
        np.testing.assert_allclose(model.prompt_encoder.get_dense_pe()[:, :8].cpu().numpy(), golden[f"{name}/dense_pe_c0-7"], atol=1e-5, rtol=0)
        for case, coords, labels, mask in cases:
            logits, iou = model.predict_low_res(embedding, coords.to(device), labels.to(device), None if mask is None else mask.to(device))
            np.testing.assert_allclose(logits[LOGIT_SAMPLE].cpu().numpy(), golden[f"{name}/{case}/logits"], atol=1e-4, rtol=0, err_msg=case)
            np.testing.assert_allclose(iou.cpu().numpy(), golden[f"{name}/{case}/iou"], atol=1e-4, rtol=0, err_msg=case)


@pytest.mark.parametrize("name", sorted(GOLDEN_CONFIGS))
def test_outputs_match_official_golden(name: str) -> None:
    _assert_golden(name, "cpu")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", sorted(GOLDEN_CONFIGS))
def test_outputs_on_cuda_match_official_golden(name: str, monkeypatch) -> None:
    # fp32 as the golden outputs were computed: no TF32 in convolutions or matrix products
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    _assert_golden(name, "cuda")


# -- state-dict layout ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vit_b_ori_meta() -> nn.Module:
    """vit_b_ori on the meta device: every key and shape, no memory, no init cost."""
    with torch.device("meta"):
        return build_sam3d("vit_b_ori")


def _trainable(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def test_vit_b_ori_totals_are_the_official_ones(vit_b_ori_meta: nn.Module) -> None:
    counts = {name: _trainable(getattr(vit_b_ori_meta, name)) for name in VIT_B_ORI_PARAMS}
    assert counts == VIT_B_ORI_PARAMS
    assert _trainable(vit_b_ori_meta) == VIT_B_ORI_TOTAL
    state = vit_b_ori_meta.state_dict()
    assert len(state) == VIT_B_ORI_ENTRIES
    # The Gaussian matrix is drawn at random on construction: it must travel in the checkpoint.
    assert tuple(state["prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"].shape) == (3, 128)
    assert not any("pixel_mean" in k or "pixel_std" in k for k in state)


@pytest.fixture(scope="module")
def state_dict_spec() -> tuple[dict[str, int], dict[str, tuple[tuple[int, ...], str, str]]]:
    """The official state-dict listing (header counts, key → (shape, dtype, kind)); skips if absent."""
    if not SPEC_TSV.is_file():
        pytest.skip(f"state-dict spec {SPEC_TSV} is absent (only developers and CI have ../shared)")
    counts: dict[str, int] = {}
    rows: dict[str, tuple[tuple[int, ...], str, str]] = {}
    for line in SPEC_TSV.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            if m := re.match(r"# (\w+): (\d+) trainable parameters", line):
                counts[m.group(1)] = int(m.group(2))
            elif m := re.match(r"# total: (\d+) parameters; (\d+) state_dict entries", line):
                counts["total"], counts["entries"] = int(m.group(1)), int(m.group(2))
            continue
        key, shape, dtype, kind = line.split("\t")
        if key == "key":
            continue
        rows[key] = (tuple(int(s) for s in shape.strip("[]").split(",") if s.strip()), dtype, kind)
    return counts, rows


def test_vit_b_ori_state_dict_matches_spec(vit_b_ori_meta: nn.Module, state_dict_spec: tuple[dict[str, int], dict]) -> None:
    counts, rows = state_dict_spec
    state = vit_b_ori_meta.state_dict()
    params = dict(vit_b_ori_meta.named_parameters())
    assert sorted(set(rows) - set(state)) == [], "keys of the official model missing here"
    assert sorted(set(state) - set(rows)) == [], "keys here that the official model lacks"
    ours = {k: (tuple(v.shape), str(v.dtype).removeprefix("torch."), "param" if k in params else "buffer") for k, v in state.items()}
    assert ours == rows
    assert counts == {**VIT_B_ORI_PARAMS, "total": VIT_B_ORI_TOTAL, "entries": VIT_B_ORI_ENTRIES}
    assert len(rows) == counts["entries"]


# -- quirk 1: padded windows ---------------------------------------------------------------------


def _rel_matrix(table: torch.Tensor, side: int) -> torch.Tensor:
    """R[i, j] = table[i - j + side - 1] for i, j in [0, side): (side, side, head_dim)."""
    idx = torch.arange(side)[:, None] - torch.arange(side)[None, :] + side - 1
    return table[idx]


def _official_bias(q: torch.Tensor, attn: nn.Module, side: int) -> torch.Tensor:
    """The official broadcast of the decomposed term, from its formula.

    q: (B, heads, side, side, side, hd) unscaled queries. Returns (B, heads, side³, side³) with
    bias[(qd,qh,qw), (kd,kh,kw)] = q(qd,qh,qw)·Rd[qd,kw] + q(qd,qh,kd)·Rh[qh,kw] + q(qd,qh,kh)·Rw[kh,kw].
    """
    rd, rh, rw = (_rel_matrix(t, side) for t in (attn.rel_pos_d, attn.rel_pos_h, attn.rel_pos_w))
    b, n = q.shape[:2]
    s = side
    term_d = torch.einsum("bnxyzc,xkc->bnxyzk", q, rd)[:, :, :, :, :, None, None, :]  # qd,qh,qw,·,·,kw
    term_h = torch.einsum("bnxyjc,ykc->bnxyjk", q, rh)[:, :, :, :, None, :, None, :]  # qd,qh,·,kd,·,kw
    term_w = torch.einsum("bnxyjc,jkc->bnxyjk", q, rw)[:, :, :, :, None, None, :, :]  # qd,qh,·,·,kh,kw
    return (term_d + term_h + term_w).expand(b, n, s, s, s, s, s, s).reshape(b, n, s**3, s**3)


def _explicit_attention(attn: nn.Module, tokens: torch.Tensor, side: int, bias_side: int | None) -> torch.Tensor:
    """Plain multi-head attention over tokens (B, side, side, side, C) with the official bias.

    bias_side: side of the relative-position tables (None: no relative positions); when it exceeds
    ``side`` the bias is the top-left ``side``-corner of the ``bias_side`` grid's bias.
    """
    b, c = tokens.shape[0], tokens.shape[-1]
    heads = attn.num_heads
    hd = c // heads
    qkv = F.linear(tokens.reshape(b, side**3, c), attn.qkv.weight, attn.qkv.bias)
    q, k, v = qkv.reshape(b, side**3, 3, heads, hd).permute(2, 0, 3, 1, 4)
    logits = (q * hd**-0.5) @ k.transpose(-1, -2)
    if bias_side is not None:
        q_full = F.pad(q.reshape(b, heads, side, side, side, hd), (0, 0) + (0, bias_side - side) * 3)
        if bias_side > side:
            # Positions beyond the grid only matter through the query-side indexing of rel_h/rel_w
            # (they read q at the key's d or h index); give them the value padding would (q_bias).
            q_bias = attn.qkv.bias[:c].reshape(heads, hd)
            mask = torch.zeros(bias_side, bias_side, bias_side, dtype=torch.bool)
            mask[:side, :side, :side] = True
            q_full = torch.where(mask[None, None, ..., None], q_full, q_bias[None, :, None, None, None, :])
        bias = _official_bias(q_full, attn, bias_side)
        keep = torch.zeros(bias_side, bias_side, bias_side, dtype=torch.bool)
        keep[:side, :side, :side] = True
        keep = keep.flatten()
        logits = logits + bias[:, :, keep][:, :, :, keep]
    out = logits.softmax(-1) @ v
    return F.linear(out.transpose(1, 2).reshape(b, side, side, side, c), attn.proj.weight, attn.proj.bias)


def _explicit_block(block: nn.Module, x: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
    x = x + attention
    return x + block.mlp(block.norm2(x))


@pytest.mark.parametrize(("grid", "window"), [(4, 7), (3, 5)])
def test_windowed_block_equals_zero_padding_and_full_attention(grid: int, window: int) -> None:
    model = seeded_model(small_config(grid * 4, 4, window, depth=2, global_idx=(1,)))
    block = model.image_encoder.blocks[0]
    x = torch.randn(2, grid, grid, grid, 16)
    with torch.no_grad():
        h = block.norm1(x)
        padded = F.pad(h, (0, 0, 0, window - grid, 0, window - grid, 0, window - grid))
        full = _explicit_attention(block.attn, padded, window, window)[:, :grid, :grid, :grid]
        expected = _explicit_block(block, x, full)
        got = block(x)
        model.image_encoder.use_reference_attention(True)
        got_reference = block(x)
        # Textbook alternative: attention over the grid only (no padded keys), same bias.
        unpadded = _explicit_block(block, x, _explicit_attention(block.attn, h, grid, window))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got_reference, expected, atol=1e-5, rtol=1e-5)
    assert (unpadded - expected).abs().max() > 0.05 * expected.abs().max()


# -- quirk 2: the decomposed relative-position broadcast ------------------------------------------


def _loop_bias(q: np.ndarray, rd: np.ndarray, rh: np.ndarray, rw: np.ndarray, textbook: bool) -> np.ndarray:
    """Index-by-index bias for one head: q (S, S, S, hd), R* (S, S, hd) → (S³, S³)."""
    s = q.shape[0]
    out = np.zeros((s**3, s**3))
    for qi, (qd, qh, qw) in enumerate(np.ndindex(s, s, s)):
        for ki, (kd, kh, kw) in enumerate(np.ndindex(s, s, s)):
            if textbook:
                out[qi, ki] = q[qd, qh, qw] @ rd[qd, kd] + q[qd, qh, qw] @ rh[qh, kh] + q[qd, qh, qw] @ rw[qw, kw]
            else:
                out[qi, ki] = q[qd, qh, qw] @ rd[qd, kw] + q[qd, qh, kd] @ rh[qh, kw] + q[qd, qh, kh] @ rw[kh, kw]
    return out


def test_relative_position_term_is_the_official_broadcast() -> None:
    side, dim, heads, hd = 3, 8, 2, 4
    model = seeded_model(small_config(side * 2, 2, 0, embed_dim=dim, heads=heads, depth=1, global_idx=()))
    block = model.image_encoder.blocks[0]
    ref = copy.deepcopy(block).double()  # float64 reference from the formula
    attn = ref.attn
    x = torch.randn(1, side, side, side, dim)
    with torch.no_grad():
        h = ref.norm1(x.double())
        qkv = F.linear(h.reshape(1, side**3, dim), attn.qkv.weight, attn.qkv.bias)
        q, k, v = qkv.reshape(1, side**3, 3, heads, hd).permute(2, 0, 3, 1, 4)
        rd, rh, rw = (_rel_matrix(t, side).numpy() for t in (attn.rel_pos_d, attn.rel_pos_h, attn.rel_pos_w))
        results = {}
        for textbook in (False, True):
            bias = np.stack([_loop_bias(q[0, n].reshape(side, side, side, hd).numpy(), rd, rh, rw, textbook) for n in range(heads)])
            out = ((q * hd**-0.5) @ k.transpose(-1, -2) + torch.from_numpy(bias)[None]).softmax(-1) @ v
            out = F.linear(out.transpose(1, 2).reshape(1, side, side, side, dim), attn.proj.weight, attn.proj.bias)
            results[textbook] = _explicit_block(ref, x.double(), out).float()
        got = block(x)
        model.image_encoder.use_reference_attention(True)
        got_reference = block(x)
    torch.testing.assert_close(got, results[False], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got_reference, results[False], atol=1e-5, rtol=1e-5)
    assert (results[True] - results[False]).abs().max() > 0.05 * results[False].abs().max()


# -- quirk 3: dense positional encoding --------------------------------------------------------


@pytest.fixture(scope="module")
def prompt_encoder() -> PromptEncoder3D:
    torch.manual_seed(0)
    return PromptEncoder3D(384, (8, 8, 8), (128, 128, 128), 16).eval()


@pytest.mark.parametrize("cell", [(0, 5, 2), (7, 1, 3), (2, 6, 6), (4, 4, 0)])
def test_click_encodes_like_dense_cell_with_axes_0_and_1_swapped(prompt_encoder: PromptEncoder3D, cell: tuple[int, int, int]) -> None:
    a, b, c = cell
    coords = torch.tensor([[[16 * a + 7.5, 16 * b + 7.5, 16 * c + 7.5]]])
    with torch.no_grad():
        sparse, _ = prompt_encoder((coords, torch.tensor([[1]])), None, None)
        dense = prompt_encoder.get_dense_pe()[0]
    click = sparse[0, 0] - prompt_encoder.point_embeddings[1].weight[0]
    torch.testing.assert_close(click, dense[:, b, a, c], atol=1e-5, rtol=0)
    if a != b:
        assert (click - dense[:, a, b, c]).abs().max() > 0.1


def test_dense_encoding_is_sin_cos_sin_of_swapped_cell_centres(prompt_encoder: PromptEncoder3D) -> None:
    gauss = prompt_encoder.pe_layer.positional_encoding_gaussian_matrix.double()
    i, j, k = torch.meshgrid(*(torch.arange(8, dtype=torch.float64),) * 3, indexing="ij")
    centres = torch.stack([(j + 0.5) / 8, (i + 0.5) / 8, (k + 0.5) / 8], dim=-1)  # component 0 runs along axis 1
    angle = 2 * math.pi * ((2 * centres - 1) @ gauss)
    expected = torch.cat([angle.sin(), angle.cos(), angle.sin()], dim=-1).permute(3, 0, 1, 2)
    with torch.no_grad():
        dense = prompt_encoder.get_dense_pe()
    assert dense.shape == (1, 384, 8, 8, 8)
    torch.testing.assert_close(dense[0].double(), expected, atol=2e-5, rtol=0)


def test_sparse_tokens_end_with_the_padding_point(prompt_encoder: PromptEncoder3D) -> None:
    coords = torch.tensor([[[10.0, 20.0, 30.0], [90.0, 60.0, 5.0]], [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]])
    labels = torch.tensor([[1, 0], [0, 1]])
    with torch.no_grad():
        sparse, dense = prompt_encoder((coords, labels), None, None)
    assert sparse.shape == (2, 3, 384)
    assert dense.shape == (2, 384, 8, 8, 8)
    torch.testing.assert_close(sparse[:, 2], prompt_encoder.not_a_point_embed.weight.expand(2, -1))
    pe = prompt_encoder.pe_layer.forward_with_coords(coords + 0.5, (128, 128, 128))
    torch.testing.assert_close(sparse[0, 1] - pe[0, 1], prompt_encoder.point_embeddings[0].weight[0])
    torch.testing.assert_close(sparse[1, 1] - pe[1, 1], prompt_encoder.point_embeddings[1].weight[0])


# -- fast path == reference path -----------------------------------------------------------------

FAST_CASES = {
    "grid4_window7_padded": small_config(16, 4, 7),
    "grid4_window14_padded": small_config(16, 4, 14, embed_dim=8),
    "grid4_window4_equal": small_config(16, 4, 4),
    "grid4_all_global": small_config(16, 4, 0, global_idx=()),
    "grid4_window7_no_rel_pos": small_config(16, 4, 7, use_rel_pos=False),
    "grid6_window4_split": small_config(24, 4, 4),
}


@pytest.mark.parametrize("name", sorted(FAST_CASES))
def test_fast_attention_equals_reference(name: str) -> None:
    model = seeded_model(FAST_CASES[name])
    size = model.image_encoder.img_size
    x = torch.randn(2, 1, size, size, size)
    with torch.inference_mode():
        fast = model.image_encoder(x)
        model.image_encoder.use_reference_attention(True)
        reference = model.image_encoder(x)
    torch.testing.assert_close(fast, reference, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["grid4_window7_padded", "grid4_all_global"])
def test_fast_attention_gradients_equal_reference(name: str) -> None:
    model = seeded_model(FAST_CASES[name]).train()
    size = model.image_encoder.img_size
    x = torch.randn(1, 1, size, size, size)
    weight = torch.randn(1, 48, size // 4, size // 4, size // 4)
    grads = []
    for reference in (False, True):
        model.zero_grad()
        model.image_encoder.use_reference_attention(reference)
        (model.image_encoder(x) * weight).sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.image_encoder.named_parameters()})
    scale = max(g.abs().max() for g in grads[1].values())
    assert set(grads[0]) == set(grads[1])
    for n in grads[1]:
        torch.testing.assert_close(grads[0][n], grads[1][n], atol=1e-5 * scale, rtol=1e-4, msg=n)


@pytest.mark.slow
def test_vit_b_ori_fast_path_equals_reference() -> None:
    model = seeded_model(VIT_B_ORI)
    x = torch.randn(1, 1, 128, 128, 128)
    with torch.inference_mode():
        fast = model.image_encoder(x)
        model.image_encoder.use_reference_attention(True)
        reference = model.image_encoder(x)
        sparse, dense = model.prompt_encoder((torch.tensor([[[64.0, 40.0, 90.0]]]), torch.tensor([[1]])), None, torch.zeros(1, 1, 32, 32, 32))
        logits, iou = model.mask_decoder(fast, model.prompt_encoder.get_dense_pe(), sparse, dense)
    assert fast.shape == (1, 384, 8, 8, 8)
    assert logits.shape == (1, 1, 32, 32, 32) and iou.shape == (1, 1)
    torch.testing.assert_close(fast, reference, atol=1e-5, rtol=1e-5)


def test_cpu_bf16_autocast_stays_close_to_fp32() -> None:
    # The patch embedding runs in fp32 under CPU autocast (bf16 Conv3d is very slow there); the
    # rest runs in bf16. The whole click path must work and stay near the fp32 numbers.
    model = seeded_model(small_config(32, 8, 14))
    x = torch.randn(1, 1, 32, 32, 32)
    coords, labels, mask = torch.tensor([[[10.0, 20.0, 5.0]]]), torch.tensor([[1]]), torch.zeros(1, 1, 16, 16, 16)
    with torch.inference_mode():
        emb32 = model.image_encoder(x)
        logits32, _ = model.predict_low_res(emb32, coords, labels, mask)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            tokens = model.image_encoder.patch_embed(x)
            emb16 = model.image_encoder(x)
            logits16, _ = model.predict_low_res(emb16, coords, labels, mask)
    assert tokens.dtype == torch.float32
    assert (emb16.float() - emb32).abs().max() < 0.05 * emb32.abs().max()
    assert (logits16.float() - logits32).abs().max() < 0.05 * logits32.abs().max()


# -- prompts and decoder -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny() -> nn.Module:
    return seeded_model(small_config(32, 8, 14))


def test_zero_mask_first_click_differs_from_no_mask(tiny: nn.Module) -> None:
    emb = torch.randn(1, 48, 4, 4, 4)
    coords, labels = torch.tensor([[[10.0, 20.0, 5.0]]]), torch.tensor([[1]])
    with torch.inference_mode():
        zero_mask, _ = tiny.predict_low_res(emb, coords, labels, torch.zeros(1, 1, 16, 16, 16))
        no_mask, _ = tiny.predict_low_res(emb, coords, labels, None)
        _, dense_zero = tiny.prompt_encoder((coords, labels), None, torch.zeros(1, 1, 16, 16, 16))
        _, dense_none = tiny.prompt_encoder((coords, labels), None, None)
    assert zero_mask.shape == no_mask.shape == (1, 1, 16, 16, 16)
    torch.testing.assert_close(dense_none, tiny.prompt_encoder.no_mask_embed.weight.reshape(1, 48, 1, 1, 1).expand(1, 48, 4, 4, 4))
    assert (dense_zero - dense_none).abs().max() > 0.1
    assert (zero_mask - no_mask).abs().max() > 1e-3


@pytest.mark.parametrize(("multimask", "channels"), [(False, 1), (True, 3)])
def test_decoder_output_shapes(tiny: nn.Module, multimask: bool, channels: int) -> None:
    emb = torch.randn(1, 48, 4, 4, 4)
    with torch.inference_mode():
        sparse, dense = tiny.prompt_encoder((torch.rand(2, 3, 3) * 32, torch.tensor([[1, 0, 1], [1, 1, 0]])), None, None)
        logits, iou = tiny.mask_decoder(emb, tiny.prompt_encoder.get_dense_pe(), sparse, dense, multimask)
    assert logits.shape == (2, channels, 16, 16, 16)
    assert iou.shape == (2, channels)


def test_box_prompt_is_refused(tiny: nn.Module) -> None:
    with pytest.raises(PromptError, match="no box prompt"):
        tiny.prompt_encoder(None, torch.zeros(1, 6), None)


@pytest.mark.parametrize(
    ("coords", "labels"),
    [(torch.zeros(1, 3), torch.ones(1, 1)), (torch.zeros(1, 2, 2), torch.ones(1, 2)), (torch.zeros(1, 2, 3), torch.ones(1, 3))],
)
def test_malformed_points_are_refused(tiny: nn.Module, coords: torch.Tensor, labels: torch.Tensor) -> None:
    with pytest.raises(PromptError, match=r"points must be \(coords \(B, N, 3\), labels \(B, N\)\)"):
        tiny.prompt_encoder((coords, labels), None, None)


def test_encoder_refuses_wrong_input_shape(tiny: nn.Module) -> None:
    with pytest.raises(ValueError, match=r"expects input of shape \(B, 1, 32, 32, 32\), got \(1, 1, 32, 32, 16\)"):
        tiny.image_encoder(torch.zeros(1, 1, 32, 32, 16))


# -- click maps (this project's extension of the dense prompt) ----------------------------------


def test_official_architecture_has_no_click_maps(vit_b_ori_meta: nn.Module) -> None:
    assert vit_b_ori_meta.config["prompt_encoder"]["click_maps"] is False
    assert vit_b_ori_meta.prompt_encoder.mask_downscaling[0].weight.shape[1] == 1  # official layout


@pytest.fixture(scope="module")
def tiny_maps() -> nn.Module:
    return seeded_model(_edit("prompt_encoder", click_maps=True))


def test_click_maps_peak_on_the_cell_of_each_click(tiny_maps: nn.Module) -> None:
    pe = tiny_maps.prompt_encoder  # 32³ input, 16³ low-res grid: voxel v lies in cell v // 2
    coords = torch.tensor([[[3.0, 30.0, 17.0], [31.0, 0.0, 8.0], [9.0, 9.0, 9.0]]])
    labels = torch.tensor([[1, 0, -1]])  # the padding label is ignored
    maps = pe.click_maps_for((coords, labels), 1, torch.device("cpu"))
    assert maps.shape == (1, 2, 16, 16, 16)
    for channel, voxel in ((0, (3, 30, 17)), (1, (31, 0, 8))):
        peak = np.unravel_index(int(maps[0, channel].argmax()), (16, 16, 16))
        assert tuple(int(i) for i in peak) == tuple(v // 2 for v in voxel)
        assert 0.9 < float(maps[0, channel].max()) <= 1.0
    # the cone falls off with distance and reaches zero CLICK_MAP_REACH cells away
    assert maps[0, 0, 1, 15, 8] > maps[0, 0, 1, 15, 6] > maps[0, 0, 1, 15, 3] and maps[0, 1].min() == 0.0
    assert maps[0, 0, 15, 0, 8] == 0.0  # 20 cells from the positive click
    assert not pe.click_maps_for(None, 2, torch.device("cpu")).any()


def test_click_maps_move_the_prediction_with_the_click(tiny_maps: nn.Module) -> None:
    emb = torch.randn(1, 48, 4, 4, 4)
    zero = torch.zeros(1, 1, 16, 16, 16)
    lab = torch.tensor([[1]])
    with torch.inference_mode():
        here, _ = tiny_maps.predict_low_res(emb, torch.tensor([[[4.0, 4.0, 4.0]]]), lab, zero)
        there, _ = tiny_maps.predict_low_res(emb, torch.tensor([[[28.0, 28.0, 28.0]]]), lab, zero)
        negative, _ = tiny_maps.predict_low_res(emb, torch.tensor([[[4.0, 4.0, 4.0]]]), torch.tensor([[0]]), zero)
        _, dense_none = tiny_maps.prompt_encoder(None, None, None)
        _, dense_zero = tiny_maps.prompt_encoder(None, None, zero)
    assert (here - there).abs().max() > 1e-3 and (here - negative).abs().max() > 1e-3
    torch.testing.assert_close(dense_none, dense_zero)  # no mask means a zero mask here


# -- configuration -------------------------------------------------------------------------------


def _edit(section: str, **changes: Any) -> dict[str, Any]:
    config = small_config(32, 8, 14)
    config[section] = {**config[section], **changes}
    return config


@pytest.mark.parametrize(
    ("config", "match"),
    [
        ({**small_config(32, 8, 14), "decoder": {}}, r"unknown config option\(s\): 'decoder'"),
        ({k: v for k, v in small_config(32, 8, 14).items() if k != "mask_decoder"}, r"lacks section\(s\) \['mask_decoder'\]"),
        (_edit("image_encoder", window=7), r"'window' \(did you mean 'window_size'\?\)"),
        (_edit("prompt_encoder", embed_dim=96), r"out_chans \(48\), prompt_encoder.embed_dim \(96\) .* must be equal"),
        (_edit("image_encoder", img_size=30), r"img_size 30 is not a multiple of patch_size 8"),
        (_edit("image_encoder", num_heads=5), r"embed_dim 16 is not divisible by num_heads 5"),
        (_edit("image_encoder", global_attn_indexes=[2]), r"global_attn_indexes \[2\] are outside 0..1"),
        (_edit("prompt_encoder", image_embedding_size=[4, 4, 2]), r"image_embedding_size \[4, 4, 2\] must be the token grid \[4, 4, 4\]"),
        (_edit("prompt_encoder", input_image_size=64), r"input_image_size \[64, 64, 64\] must be \[32, 32, 32\]"),
        (_edit("prompt_encoder", image_embedding_size=[4, 4]), r"image_embedding_size must have 3 values"),
        (_edit("prompt_encoder", click_maps="yes"), r"prompt_encoder.click_maps must be true or false, got 'yes'"),
        ("vit_b_or", r"unknown architecture 'vit_b_or'.*Did you mean 'vit_b_ori'\?"),
        ("vit_h", r"unknown architecture 'vit_h'; known: vit_b_ori"),
        ([1, 2], r"model config must be a dict"),
    ],
)
def test_invalid_configs_are_refused(config: Any, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        build_sam3d(config)


@pytest.mark.parametrize(
    "config",
    [
        VIT_B_ORI,
        small_config(32, 8, 14),
        small_config(64, 8, 4, depth=3, global_idx=(0, 2)),
        small_config(32, 4, 4, depth=2, global_idx=()),
        small_config(48, 16, 7, embed_dim=24, heads=3, prompt_dim=96, mask_in_chans=32),
        _edit("prompt_encoder", click_maps=True),
    ],
    ids=["vit_b_ori", "grid4_w14", "grid8_w4_two_global", "grid8_w4_no_global", "grid3_w7_wide_prompt", "click_maps"],
)
def test_infer_config_round_trip(config: dict[str, Any]) -> None:
    with torch.device("meta"):
        model = build_sam3d(config)
    assert infer_config(model.state_dict()) == normalize_config(config) == model.config


def test_infer_config_all_global_builds_the_same_model() -> None:
    # A window equal to the grid and global attention are the same numbers (and the same
    # 2G-1-row tables), so the inferred config may name either; the model must be the same.
    config = small_config(16, 4, 0, global_idx=())
    model = seeded_model(config)
    inferred = build_sam3d(infer_config(model.state_dict()))
    inferred.load_state_dict(model.state_dict(), strict=True)
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.inference_mode():
        torch.testing.assert_close(inferred.image_encoder(x), model.image_encoder(x))


@pytest.mark.parametrize(
    ("state", "match"),
    [
        ({"encoder.weight": torch.zeros(2)}, r"not a SAM-Med3D state dict: key 'image_encoder.patch_embed.proj.weight' is missing"),
        ("no_rel_pos", r"cannot infer num_heads without relative-position tables"),
    ],
)
def test_infer_config_errors(state: Any, match: str) -> None:
    if state == "no_rel_pos":
        with torch.device("meta"):
            state = build_sam3d(small_config(32, 8, 14, use_rel_pos=False)).state_dict()
    with pytest.raises(ConfigError, match=match):
        infer_config(state)


@pytest.mark.parametrize(
    ("module_path", "eps"),
    [("image_encoder.blocks.0.norm1", 1e-6), ("image_encoder.neck.1", 1e-6), ("mask_decoder.transformer.norm_final_attn", 1e-5)],
)
def test_layer_norm_epsilons_are_the_official_ones(vit_b_ori_meta: nn.Module, module_path: str, eps: float) -> None:
    assert vit_b_ori_meta.get_submodule(module_path).eps == eps
