"""A session run under a caller's bf16 autocast: the network in bf16, windows, logits and paste-back in float32.

On a GPU a caller (or ``sammed3d benchmark --precision bf16``) may wrap clicks in
``torch.autocast("cuda", torch.bfloat16)``; the CPU's autocast takes the same code path, so it
is what runs here. CUDA itself stays untested on CI (no GPU): the figures in the README come
from a lent H200.
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from SAMMed3DLib import benchmark
from SAMMed3DLib.checkpoint import load_model
from SAMMed3DLib.metrics import dice as _dice
from SAMMed3DLib.session import Session


def _blob_ct() -> sitk.Image:
    """An anisotropic, oblique CT-like volume with a bright ellipsoid (the object)."""
    z, y, x = np.mgrid[0:40, 0:96, 0:96].astype(np.float32)
    inside = ((x - 50) / 18) ** 2 + ((y - 44) / 14) ** 2 + ((z - 20) / 7) ** 2 <= 1
    rng = np.random.default_rng(0)
    image = sitk.GetImageFromArray(np.where(inside, 180.0, 30.0).astype(np.float32) + rng.normal(0, 8, inside.shape).astype(np.float32))
    image.SetSpacing((0.8, 0.8, 2.5))
    image.SetDirection(sitk.VersorTransform((0.2, 0.1, 1.0), 0.25).GetMatrix())
    image.SetOrigin((-40.0, 12.0, 300.0))
    return image


def _session_masks(model, image: sitk.Image, autocast: bool, device_type: str = "cpu") -> tuple[Session, list[np.ndarray]]:
    session = Session(model, image, auto_extend=False)
    clicks = [((50, 44, 20), True), ((60, 44, 20), True), ((75, 44, 20), False)]
    masks = []
    with torch.autocast(device_type, dtype=torch.bfloat16, enabled=autocast):
        for index, positive in clicks:
            session.click_index(index, positive=positive)
            masks.append(sitk.GetArrayFromImage(session.mask) > 0)
    return session, masks


def test_clicks_under_bf16_autocast_keep_float32_logits_and_the_fp32_mask() -> None:
    model = load_model("default", device="cpu")
    image = _blob_ct()
    _, fp32_masks = _session_masks(model, image, autocast=False)
    session, bf16_masks = _session_masks(model, image, autocast=True)
    for state in session._windows.states:
        assert state.logits.dtype == torch.float32 and (state.output is None or state.output.dtype == torch.float32)
    for fp32, bf16 in zip(fp32_masks, bf16_masks):
        assert fp32.any()
        assert _dice(fp32, bf16) > 0.95  # bf16 rounding moves a few boundary voxels, not the object
    # undo under no autocast returns the bf16 session's own earlier mask exactly
    session.undo()
    np.testing.assert_array_equal(sitk.GetArrayFromImage(session.mask) > 0, bf16_masks[1])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_cuda_session_gives_the_cpu_masks_and_bf16_stays_close_to_them() -> None:
    image = _blob_ct()
    _, cpu_masks = _session_masks(load_model("default", device="cpu"), image, autocast=False)
    on_cuda = load_model("default", device="cuda")
    session, cuda_masks = _session_masks(on_cuda, image, autocast=False, device_type="cuda")
    assert all(state.embedding.device.type == "cuda" for state in session._windows.states)
    _, bf16_masks = _session_masks(on_cuda, image, autocast=True, device_type="cuda")
    for cpu, cuda, bf16 in zip(cpu_masks, cuda_masks, bf16_masks):
        assert cpu.any()
        assert _dice(cpu, cuda) > 0.99  # TF32 convolutions (cuDNN's default) move a voxel or two
        assert _dice(cuda, bf16) > 0.95


def test_the_window_image_and_paste_back_stay_float32_under_cpu_autocast() -> None:
    # The separable resampling (window image, paste-back) is matrix products that CPU autocast
    # would run in bf16; they must give the very values fp32 gives.
    from SAMMed3DLib.geometry import ImageGeometry, Window
    from SAMMed3DLib.window_image import extract_window_separable

    image = _blob_ct()
    image.SetDirection((1, 0, 0, 0, 1, 0, 0, 0, 1))  # axis-aligned: the separable path
    geometry = ImageGeometry.from_image(image)
    window = Window.centred_at(geometry.index_to_lps([[50.0, 44.0, 20.0]])[0], 128, 1.5)
    plain = extract_window_separable(image, window, geometry)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under = extract_window_separable(image, window, geometry)
    assert plain is not None and under.dtype == np.float32
    np.testing.assert_array_equal(plain, under)

    from SAMMed3DLib.paste import paste_logits

    logits = torch.from_numpy(np.random.default_rng(1).normal(0.0, 1.0, (64, 64, 64)).astype(np.float32))
    masks = []
    for enabled in (False, True):
        mask = np.zeros(geometry.shape_zyx, np.uint8)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled):
            paste_logits(logits, window, geometry, mask)
        masks.append(mask)
    assert masks[0].any()
    np.testing.assert_array_equal(masks[0], masks[1])


@pytest.mark.slow
def test_the_benchmark_runs_bf16_and_reports_the_masks_agreement_with_fp32() -> None:
    from test_benchmark import TINY

    result = benchmark.run_click_latency(threads=1, follow_ups=2, config=TINY, cold=False, precision="bf16")
    assert result["precision"] == "bf16"
    assert 0.0 <= result["mask_dice_vs_fp32"] <= 1.0
    assert result["first_click_s"] > 0 and result["next_click_s"] > 0
    assert "final mask Dice vs fp32" in benchmark.format_table(result)


def test_an_unknown_precision_is_refused_before_anything_runs() -> None:
    with pytest.raises(ValueError, match="precision must be one of fp32, bf16"):
        benchmark.run_click_latency(threads=1, follow_ups=1, config="no_such_config", cold=False, precision="fp16")
