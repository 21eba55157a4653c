"""The model card's window spec as the one source of spacing, window size and orientation in training."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from test_training import TINY, _cfg, _one_thread, tiny_cache  # noqa: F401  (fixtures re-used)

from SAMMed3DLib.card import (
    DEFAULT_INPUT_SIZE,
    DEFAULT_SPACING_MM,
    WINDOW_ORIENTATION,
    ModelCard,
    WindowSpec,
    official_card,
    orientation_direction_lps,
)
from SAMMed3DLib.errors import ModelCardError
from SAMMed3DLib.geometry import Window
from SAMMed3DLib.model import build_sam3d
from training.dataset import StructureSamples, TrainingCache, validation_samples
from training.prepare import CACHE_DIRECTION_LPS, PrepareOptions
from training.prepare import main as prepare_main
from training.trainer import Trainer

# -- the card module -----------------------------------------------------------------------------


def test_the_card_defaults_are_the_official_window() -> None:
    spec = official_card().window_spec
    assert spec == WindowSpec() == WindowSpec(DEFAULT_SPACING_MM, DEFAULT_INPUT_SIZE, WINDOW_ORIENTATION)
    assert (spec.spacing_mm, spec.input_size, spec.orientation) == (1.5, 128, "RAS")
    assert str(spec) == "128³ voxels of 1.5 mm, axes RAS"
    assert ModelCard(name="t", config=TINY, spacing_mm=2.0).window_spec == WindowSpec(2.0, 32)


def test_the_cache_grid_has_the_inference_window_orientation() -> None:
    window = Window.centred_at((0.0, 0.0, 0.0), 4, 1.0)
    np.testing.assert_array_equal(np.reshape(CACHE_DIRECTION_LPS, (3, 3)), window.direction)
    assert orientation_direction_lps("ras") == CACHE_DIRECTION_LPS == WindowSpec().direction_lps
    assert orientation_direction_lps("LPI") == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, -1.0)
    assert orientation_direction_lps("SAR") == (0.0, 0.0, -1.0, 0.0, -1.0, 0.0, 1.0, 0.0, 0.0)


@pytest.mark.parametrize("kwargs", [{"orientation": "RAR"}, {"orientation": "XY"}, {"spacing_mm": 0}, {"input_size": 32.5}, {"input_size": "big"}])
def test_invalid_window_specs_are_refused(kwargs) -> None:
    with pytest.raises(ModelCardError):
        WindowSpec(**kwargs)
    with pytest.raises(ModelCardError, match="a window spec is an object"):
        WindowSpec.from_dict({"spacing_mm": 1.5, "size": 128})


def test_mismatches_name_each_fact() -> None:
    assert WindowSpec().mismatches(WindowSpec()) == []
    assert WindowSpec().mismatches(WindowSpec(2.0, 64, "LPS")) == ["spacing 1.5 mm vs 2 mm", "window 128³ vs 64³ voxels", "orientation RAS vs LPS"]


# -- the cache records it ------------------------------------------------------------------------


def test_the_index_records_the_window_spec_and_the_card(tiny_cache: Path, tmp_path: Path) -> None:  # noqa: F811
    index = json.loads((tiny_cache / "index.json").read_text(encoding="utf-8"))
    assert index["window"] == {"spacing_mm": 1.5, "input_size": 32, "orientation": "RAS"} and index["card"] is None
    assert TrainingCache(tiny_cache).window_spec == WindowSpec(1.5, 32)
    opts = PrepareOptions.for_card(ModelCard(name="tiny2", config=TINY, spacing_mm=2.0), max_background=0.5)
    assert (opts.spacing_mm, opts.window, opts.card, opts.max_background, opts.window_spec) == (2.0, 32, "tiny2", 0.5, WindowSpec(2.0, 32))


def test_a_cache_written_before_the_spec_was_recorded_still_reads(tiny_cache: Path, tmp_path: Path) -> None:  # noqa: F811
    old = tmp_path / "old"
    shutil.copytree(tiny_cache, old)
    index = json.loads((old / "index.json").read_text(encoding="utf-8"))
    del index["window"], index["card"]
    (old / "index.json").write_text(json.dumps(index))
    assert TrainingCache(old).window_spec == WindowSpec(1.5, 32) and TrainingCache(old).spacing_mm == 1.5


def test_the_prepare_command_takes_the_grid_from_a_model_card(tiny_cache: Path, tmp_path: Path, capsys) -> None:  # noqa: F811
    from SAMMed3DLib.checkpoint import save_model

    save_model(build_sam3d(TINY), tmp_path / "m.pth", card=ModelCard(name="mine", config=TINY, spacing_mm=2.0))
    src = tiny_cache.parent / "src"
    args = [str(src), "--out", str(tmp_path / "cache"), "--model", str(tmp_path / "m.pth"), "--max-background", "0.99999"]
    assert prepare_main(args) == 0
    assert "of 32³ voxels of 2 mm, axes RAS written" in capsys.readouterr().out
    index = json.loads((tmp_path / "cache" / "index.json").read_text(encoding="utf-8"))
    assert index["window"] == {"spacing_mm": 2.0, "input_size": 32, "orientation": "RAS"} and index["card"] == "mine"
    assert index["spacing_mm"] == 2.0 and index["options"]["window"] == 32
    with pytest.raises(SystemExit):
        prepare_main([*args, "--spacing", "1.5"])
    assert "--spacing 1.5 disagrees with the card of" in capsys.readouterr().err


# -- the trainer and the samples check every card against it ---------------------------------------


def test_an_init_model_made_for_another_grid_is_refused(tiny_cache: Path, tmp_path: Path) -> None:  # noqa: F811
    from SAMMed3DLib.checkpoint import save_model

    save_model(build_sam3d(TINY), tmp_path / "coarse.pth", card=ModelCard(name="coarse", config=TINY, spacing_mm=3.0))
    with pytest.raises(ModelCardError, match=r"--init .*coarse\.pth \(card 'coarse': 32³ voxels of 3 mm.*spacing 3 mm vs 1\.5 mm.*training\.prepare .*--model"):
        Trainer(_cfg(tiny_cache, tmp_path / "run", init=str(tmp_path / "coarse.pth")))


def test_a_model_config_for_another_window_is_refused(tiny_cache: Path, tmp_path: Path) -> None:  # noqa: F811
    big = copy.deepcopy(TINY)
    big["image_encoder"]["img_size"] = 64
    big["prompt_encoder"].update(image_embedding_size=[4, 4, 4], input_image_size=[64, 64, 64])
    with pytest.raises(ModelCardError, match=r"--model-config .*window 64³ vs 32³ voxels"):
        Trainer(_cfg(tiny_cache, tmp_path / "run", model_config=big))


def test_samples_refuse_a_card_for_another_grid(tiny_cache: Path) -> None:  # noqa: F811
    cache = TrainingCache(tiny_cache)
    card = ModelCard(name="fine", config=TINY, spacing_mm=1.0)
    with pytest.raises(ModelCardError, match="spacing 1 mm vs 1.5 mm"):
        StructureSamples(cache, card)
    with pytest.raises(ModelCardError, match="spacing 1 mm vs 1.5 mm"):
        validation_samples(cache, card)
