"""`sammed3d benchmark` reports what a user meets: the cold first click of a fresh process and warm ones."""

from __future__ import annotations

import pytest

from SAMMed3DLib import benchmark

#: A small network with the official window (128³): the figures' plumbing, not their values.
TINY = {
    "image_encoder": {
        "img_size": 128, "patch_size": 16, "embed_dim": 48, "depth": 2, "num_heads": 4, "out_chans": 48,
        "use_rel_pos": True, "window_size": 14, "global_attn_indexes": [1],
    },
    "prompt_encoder": {"embed_dim": 48, "image_embedding_size": 8, "input_image_size": 128, "mask_in_chans": 16},
    "mask_decoder": {"transformer_dim": 48},
}


@pytest.mark.slow
def test_the_benchmark_reports_cold_and_warm_first_clicks_next_clicks_encoder_and_memory() -> None:
    result = benchmark.run_click_latency(threads=1, follow_ups=2, config=TINY, cold_repeats=1)
    keys = ("cold_first_click_s", "cold_first_click_no_warm_up_s", "cold_load_s", "first_click_s", "next_click_s", "encoder_s",
            "first_click_oblique_s", "next_click_oblique_s", "peak_rss_mb")  # fmt: skip
    for key in keys:
        assert isinstance(result[key], float) and result[key] > 0, key
    assert result["windows"] == 1 and len(result["next_click_all_s"]) == 2 and len(result["cold_first_click_all_s"]) == 1
    table = benchmark.format_table(result)
    assert "cold first click (fresh process)" in table and "without pre-warming" in table and "first click, new window" in table
    assert "oblique CT: follow-up click" in table


def test_the_benchmark_ct_is_axis_aligned_or_tilted() -> None:
    # the axis-aligned CT takes the separable paste, the tilted one SimpleITK's
    from SAMMed3DLib.geometry import ImageGeometry, Window
    from SAMMed3DLib.paste import _index_affine
    from SAMMed3DLib.separable import separable_axes

    for oblique, separable in ((False, True), (True, False)):
        image = benchmark.synthetic_ct(size_xyz=(64, 64, 20), oblique=oblique)
        geometry = ImageGeometry.from_image(image)
        window = Window.centred_at(geometry.index_to_lps([[32.0, 32.0, 10.0]])[0], 128, 1.5)
        assert (separable_axes(_index_affine(window, geometry)[0], geometry.size_xyz) is not None) is separable


def test_a_failing_cold_process_is_reported_with_its_error() -> None:
    with pytest.raises(RuntimeError, match="cold-start benchmark process failed"):
        benchmark.run_cold_first_click(threads=1, config="no_such_config")


@pytest.mark.slow
def test_the_benchmark_measures_a_checkpoint_loaded_from_disk(tmp_path) -> None:
    import torch

    from SAMMed3DLib import build_sam3d
    from SAMMed3DLib.checkpoint import save_model

    torch.manual_seed(0)
    path = save_model(build_sam3d(TINY), tmp_path / "tiny.pth", card_json=False)
    result = benchmark.run_click_latency(threads=1, follow_ups=1, cold_repeats=1, model_source=str(path))
    assert result["model"] == str(path) and result["cold_load_s"] > 0 and result["next_click_s"] > 0
    assert benchmark.format_table(result).startswith(f"model: {path}")
    with pytest.raises(RuntimeError, match="cold-start benchmark process failed"):
        benchmark.run_cold_first_click(threads=1, model=str(tmp_path / "missing.pth"))
