"""Pre-warming a loaded model, and OpenMP's passive wait being in effect for the Python API."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from SAMMed3DLib import build_sam3d, load_model, save_model, warmup
from SAMMed3DLib.card import ModelCard
from SAMMed3DLib.session import Session

TINY = {
    "image_encoder": {
        "img_size": 128, "patch_size": 16, "embed_dim": 48, "depth": 4, "num_heads": 4, "out_chans": 48,
        "use_rel_pos": True, "window_size": 14, "global_attn_indexes": [1, 3],
    },
    "prompt_encoder": {"embed_dim": 48, "image_embedding_size": 8, "input_image_size": 128, "mask_in_chans": 16},
    "mask_decoder": {"transformer_dim": 48},
}  # fmt: skip


def _calls(model) -> dict[str, int]:  # noqa: ANN001
    """Forward calls of each part of the model, counted by hooks."""
    counts: dict[str, int] = {}
    parts = {"patch_embed": model.image_encoder.patch_embed, "neck": model.image_encoder.neck, "decoder": model.mask_decoder,
             "prompt_encoder": model.prompt_encoder}  # fmt: skip
    parts.update({f"block{i}": b for i, b in enumerate(model.image_encoder.blocks)})
    for name, module in parts.items():
        counts[name] = 0
        module.register_forward_hook(lambda *_, name=name: counts.__setitem__(name, counts[name] + 1))
    return counts


def _image() -> sitk.Image:
    image = sitk.GetImageFromArray(np.random.default_rng(0).normal(100, 20, (30, 40, 50)).astype(np.float32))
    image.SetSpacing((1.5, 1.5, 1.5))
    return image


def test_warm_up_runs_each_kind_of_layer_once_and_changes_nothing() -> None:
    torch.manual_seed(0)
    model = build_sam3d(TINY).eval()
    reference = {k: v.clone() for k, v in model.state_dict().items()}
    counts = _calls(model)
    assert warmup.warm_up(model) > 0.0
    # one windowed (block 0) and one global block (block 1), not all four; everything else once
    assert counts == {"patch_embed": 1, "neck": 1, "decoder": 1, "prompt_encoder": 1, "block0": 1, "block1": 1, "block2": 0, "block3": 0}
    assert warmup.warm_up(model) == 0.0 and counts["decoder"] == 1  # warmed already: nothing runs
    assert all(torch.equal(v, reference[k]) for k, v in model.state_dict().items())
    image = _image()
    centre = np.array(image.TransformContinuousIndexToPhysicalPoint([s / 2 for s in image.GetSize()]))
    warmed = Session(model, image, auto_extend=False).click(centre).mask_array
    torch.manual_seed(0)
    fresh = Session(build_sam3d(TINY).eval(), image, auto_extend=False).click(centre).mask_array
    np.testing.assert_array_equal(warmed, fresh)  # same masks as a model that was never warmed


def test_a_model_with_a_fine_head_warms_its_head_too() -> None:
    model = build_sam3d({**TINY, "fine_head": {"channels": [4, 8, 8], "geodesic_reach": 16.0}}).eval()
    calls = []
    model.fine_head.register_forward_hook(lambda *_: calls.append(1))
    warmup.warm_up(model)
    assert calls == [1]


def test_a_session_stops_an_unfinished_background_warm_up_instead_of_competing_with_it(monkeypatch) -> None:
    model = build_sam3d(TINY).eval()
    started = threading.Event()
    real = warmup.warm_up

    def slow_warm_up(m, stop):  # noqa: ANN001, ANN202 - a warm-up whose first step lasts until it is stopped
        started.set()
        stop.wait(30)
        return real(m, stop)

    monkeypatch.setattr(warmup, "warm_up", slow_warm_up)
    thread = warmup.warm_up_in_background(model)  # returns at once
    assert started.wait(10) and thread.is_alive()
    assert not warmup.wait_for_warm_up(model, timeout=0.05)
    t = time.perf_counter()
    Session(model, _image())  # stops it: the step in progress ends, the rest is skipped
    assert time.perf_counter() - t < 10 and not thread.is_alive()
    monkeypatch.setattr(warmup, "warm_up", real)
    assert warmup.warm_up(model) > 0.0  # a stopped warm-up does not count: the kernels were not all warmed


def test_a_stopped_warm_up_skips_its_remaining_steps() -> None:
    model = build_sam3d(TINY).eval()
    counts = _calls(model)
    stop = threading.Event()
    model.image_encoder.patch_embed.register_forward_hook(lambda *_: stop.set())  # a click comes during the first step
    warmup.warm_up(model, stop)
    assert counts["patch_embed"] == 1 and counts["block0"] == counts["neck"] == counts["decoder"] == 0
    warmup.warm_up(model)  # not warmed yet: a later call runs every step
    assert counts["block0"] == counts["block1"] == counts["neck"] == counts["decoder"] == 1


def test_load_model_warms_up_in_the_background_when_asked(tmp_path) -> None:
    model = build_sam3d(TINY)
    path = tmp_path / "tiny.pt"
    save_model(model, path, card=ModelCard(name="tiny", config=model.config))
    loaded = load_model(path, device="cpu", warm_up=True)
    assert warmup.wait_for_warm_up(loaded, timeout=120)
    assert warmup.warm_up(loaded) == 0.0  # the background warm-up ran to the end
    assert warmup.warm_up(load_model(path, device="cpu")) > 0.0  # not asked: not warmed


def test_a_failed_background_warm_up_is_a_warning_not_an_error(caplog) -> None:
    model = build_sam3d(TINY).eval()
    model.image_encoder.patch_embed.register_forward_hook(lambda *_: (_ for _ in ()).throw(RuntimeError("out of memory")))
    warmup.warm_up_in_background(model).join(30)
    assert "pre-warming the model failed" in caplog.text and "out of memory" in caplog.text


# -- OpenMP's wait policy ------------------------------------------------------------------------

#: Runs 200 short parallel regions on 2 threads with 2 ms pauses between them and prints the
#: process's CPU seconds: OpenMP threads that spin while waiting burn CPU in every pause.
_SPIN_PROBE = textwrap.dedent(
    """
    import json, sys, time
    {imports}
    from SAMMed3DLib import warmup
    torch.set_num_threads(2)
    x = torch.randn(200_000)
    y = torch.empty_like(x)
    torch.mul(x, 1.0001, out=y)
    start = time.process_time()
    for _ in range(200):
        torch.mul(x, 1.0001, out=y)
        time.sleep(0.002)
    print(json.dumps({{"cpu_s": time.process_time() - start, "passive": warmup.openmp_wait_is_passive(),
                       "warned": warmup.warn_if_openmp_spins()}}))
    """
)


def _probe(imports: str, policy: str | None) -> dict:
    import json

    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if policy is not None:
        env["OMP_WAIT_POLICY"] = policy
    code = _SPIN_PROBE.format(imports=imports)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True, timeout=120)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="torch runs one thread on one core: no OpenMP waiting to observe")
def test_passive_wait_is_in_effect_for_the_python_api_and_a_late_import_is_reported() -> None:
    spinning = _probe("import torch\nimport SAMMed3DLib", None)  # torch first, nothing set: libgomp's default
    if spinning["cpu_s"] < 0.3:
        pytest.skip(f"OpenMP's spinning is not observable here ({spinning['cpu_s']:.2f} s of CPU in 200 pauses)")
    assert spinning["passive"] is False and spinning["warned"] is True
    api = _probe("import SAMMed3DLib\nimport torch", None)  # the Python API: SAMMed3DLib first
    assert api["passive"] is True and api["warned"] is False
    assert api["cpu_s"] < 0.5 * spinning["cpu_s"], (api, spinning)  # no CPU burnt while waiting
    chosen = _probe("import torch\nimport SAMMed3DLib", "ACTIVE")  # the user's choice is respected, not warned about
    assert chosen["passive"] is False and chosen["warned"] is False
