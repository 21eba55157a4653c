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
    result = benchmark.run_click_latency(threads=1, follow_ups=2, config=TINY)
    for key in ("cold_first_click_s", "cold_load_s", "first_click_s", "next_click_s", "encoder_s", "peak_rss_mb"):
        assert isinstance(result[key], float) and result[key] > 0, key
    table = benchmark.format_table(result)
    assert "cold first click (fresh process)" in table and "first click, new window" in table


def test_a_failing_cold_process_is_reported_with_its_error() -> None:
    with pytest.raises(RuntimeError, match="cold-start benchmark process failed"):
        benchmark.run_cold_first_click(threads=1, config="no_such_config")
