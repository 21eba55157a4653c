"""Bad checkpoints, model cards and downloads: a clear error that says what to do, or a warning the user sees.

Table-driven, one case a parameter (issue 17 and beyond). The checkpoints are real files written
by torch for a real small SAM-Med3D; nothing is downloaded (the refused URLs never reach a network).
"""

from __future__ import annotations

import copy
import logging
import math
import os
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from SAMMed3DLib import load_model
from SAMMed3DLib import registry as reg
from SAMMed3DLib.card import ModelCard
from SAMMed3DLib.checkpoint import verify_checkpoint
from SAMMed3DLib.cli import main
from SAMMed3DLib.download import download_file, partial_path
from SAMMed3DLib.errors import CheckpointError, DownloadError, ModelCardError



@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv(reg.CACHE_ENV, str(cache))
    monkeypatch.delenv(reg.URL_ENV_PREFIX + "SAM_MED3D_TURBO", raising=False)
    return cache


@pytest.fixture(scope="session")
def small_payload(small_model_path) -> dict:
    """The contents of the small test checkpoint (conftest's): its weights and its card."""
    return torch.load(small_model_path, weights_only=True)


@pytest.fixture
def small_state(small_payload) -> dict[str, torch.Tensor]:
    return copy.deepcopy(small_payload["model_state_dict"])


@pytest.fixture
def good_card(small_payload) -> dict:
    return copy.deepcopy(small_payload["model_card"])


def _save(state: dict[str, torch.Tensor], path: Path, card: dict) -> Path:
    """A checkpoint in this project's format holding ``state`` and ``card``."""
    torch.save({"format": "sammed3d", "format_version": 1, "model_state_dict": state, "model_card": card}, path)
    return path


# -- weights --------------------------------------------------------------------------------------

WEIGHT = "mask_decoder.iou_token.weight"

#: (case id, value put into one weight, words of the message).
BAD_WEIGHTS = [
    ("nan", float("nan"), "1 NaN"),
    ("inf", float("-inf"), "1 inf"),
    ("huge", 1e30, "values up to 1e+30"),
    ("large", 3e6, "values up to 3e+06"),
]


@pytest.mark.parametrize(("value", "words"), [c[1:] for c in BAD_WEIGHTS], ids=[c[0] for c in BAD_WEIGHTS])
def test_unusable_weights_are_refused(tmp_path, small_state, good_card, value, words) -> None:
    """They used to load and give empty masks; the download check (verify_checkpoint) refuses them too."""
    state = small_state
    state[WEIGHT][0, 3] = value
    path = _save(state, tmp_path / "bad.pth", good_card)
    for load in (load_model, verify_checkpoint):
        with pytest.raises(CheckpointError) as caught:
            load(path)
        message = str(caught.value)
        assert f"{WEIGHT} ({words})" in message and "use another checkpoint" in message


def test_half_precision_nan_is_found_too(tmp_path, small_state, good_card) -> None:
    state = {k: v.half() for k, v in small_state.items()}
    state[WEIGHT][0, 0] = float("nan")
    with pytest.raises(CheckpointError, match="1 NaN"):
        load_model(_save(state, tmp_path / "half.pth", good_card))


def _record_data_offset(path: Path, name: str) -> int:
    """Where the bytes of a zip record start in the file (after its local header)."""
    info = zipfile.ZipFile(path).getinfo(name)
    with open(path, "rb") as handle:
        handle.seek(info.header_offset)
        header = handle.read(30)
    name_length, extra_length = struct.unpack("<HH", header[26:30])
    return info.header_offset + 30 + name_length + extra_length


def test_one_flipped_bit_in_the_weights_is_refused(tmp_path, small_state, good_card) -> None:
    """torch.load reads such a file without a word; the CRC-32 torch stores per record finds it."""
    path = _save(small_state, tmp_path / "good.pth", good_card)
    assert load_model(path) is not None
    records = [i for i in zipfile.ZipFile(path).infolist() if "/data/" in i.filename]
    rng = np.random.default_rng(0)
    for trial in range(5):
        record = records[int(rng.integers(len(records)))]
        data = bytearray(path.read_bytes())
        data[_record_data_offset(path, record.filename) + int(rng.integers(record.file_size))] ^= 1 << int(rng.integers(8))
        flipped = tmp_path / f"flipped{trial}.pth"
        flipped.write_bytes(bytes(data))
        with pytest.raises(CheckpointError) as caught:
            load_model(flipped)
        assert f"the checksum of its record {record.filename!r} does not match" in str(caught.value)
        assert "download or copy it again" in str(caught.value)


def test_file_saved_without_checksums_still_loads(tmp_path, small_state, good_card) -> None:
    previous = torch.serialization.get_crc32_options()
    torch.serialization.set_crc32_options(False)
    try:
        path = _save(small_state, tmp_path / "nocrc.pth", good_card)
    finally:
        torch.serialization.set_crc32_options(previous)
    assert all(r.CRC == 0 for r in zipfile.ZipFile(path).infolist())
    model = load_model(path)
    torch.testing.assert_close(model.state_dict()[WEIGHT], small_state[WEIGHT])


@pytest.mark.skipif(not os.path.exists("/proc/self/mem"), reason="needs Linux's /proc/self/mem, a file whose read fails")
def test_unreadable_checkpoint_says_so(tmp_path) -> None:
    """Reading /proc/self/mem at offset 0 fails with EIO, even for root (chmod 000 would not stop root)."""
    link = tmp_path / "model.pth"
    link.symlink_to("/proc/self/mem")
    with pytest.raises(CheckpointError, match=r"cannot read checkpoint .*model\.pth: Input/output error; make the file readable"):
        load_model(link)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads a chmod 000 file")
def test_checkpoint_without_read_permission_says_so(tmp_path, small_state, good_card) -> None:
    path = _save(small_state, tmp_path / "locked.pth", good_card)
    path.chmod(0)
    with pytest.raises(CheckpointError, match="Permission denied; make the file readable"):
        load_model(path)


# -- model cards ----------------------------------------------------------------------------------


def _with(card: dict, **changes: object) -> dict:
    return {**card, **changes}


#: (case id, changed fields, words of the ModelCardError).
BAD_CARDS = [
    ("clip-one-element", {"intensity_clip": [1.0]}, "intensity_clip must be null or two numbers"),
    ("clip-string", {"intensity_clip": "abc"}, "intensity_clip must be null or two numbers"),
    ("clip-string-value", {"intensity_clip": [0, "x"]}, "intensity_clip must be null or two numbers"),
    ("clip-nan", {"intensity_clip": [math.nan, 1.0]}, "two finite numbers with low < high"),
    ("clip-reversed", {"intensity_clip": [5.0, 1.0]}, "two finite numbers with low < high"),
    ("version-string", {"card_version": "2"}, "card_version must be a whole number"),
    ("version-bool", {"card_version": True}, "card_version must be a whole number"),
    ("version-newer", {"card_version": 99}, "update sammed3d"),
    ("spacing-string", {"spacing_mm": "1.5"}, "spacing_mm must be a positive number of mm"),
    ("spacing-infinite", {"spacing_mm": math.inf}, "spacing_mm must be a positive number of mm"),
    ("spacing-negative", {"spacing_mm": -1.5}, "spacing_mm must be a positive number of mm"),
    ("name-number", {"name": 5}, "name (int, expected str)"),
    ("extra-string", {"extra": "notes"}, "extra (str, expected dict)"),
    ("normalization-list", {"normalization": ["zscore"]}, "normalization (list, expected str)"),
]


@pytest.mark.parametrize(("changes", "words"), [c[1:] for c in BAD_CARDS], ids=[c[0] for c in BAD_CARDS])
def test_malformed_card_is_a_model_card_error(good_card, changes, words) -> None:
    with pytest.raises(ModelCardError) as caught:
        ModelCard.from_dict(_with(good_card, **changes))
    assert words in str(caught.value)


@pytest.mark.parametrize(("changes", "words"), [c[1:] for c in BAD_CARDS[:6]], ids=[c[0] for c in BAD_CARDS[:6]])
def test_malformed_card_in_a_checkpoint_is_one_line_from_the_cli(tmp_path, small_state, good_card, capsys, changes, words) -> None:
    path = _save(small_state, tmp_path / "bad_card.pth", card=_with(good_card, **changes))
    ct = tmp_path / "ct.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(np.random.default_rng(0).normal(0, 1, (20, 30, 30)).astype(np.float32)), str(ct))
    out = tmp_path / "mask.nii.gz"
    assert main(["segment", str(ct), "--ijk", "--point", "10,10,10", "--model", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sammed3d segment: error: ") and str(path) in err and words in err
    assert not out.exists()


@pytest.mark.parametrize(
    ("changes", "warned"),
    [
        pytest.param({"spacing_mm": 0.1}, "outside the 0.2-10 mm", id="spacing-0.1mm"),
        pytest.param({"spacing_mm": 15.0}, "outside the 0.2-10 mm", id="spacing-15mm"),
        pytest.param({"intensity_clip": [0.0, 1e-6]}, "narrower than 0.001", id="clip-1e-6-wide"),
        pytest.param({"spacing_mm": 1.5, "intensity_clip": [-1000.0, 1000.0]}, None, id="plausible"),
        pytest.param({"spacing_mm": 0.2}, None, id="spacing-0.2mm-edge"),
    ],
)
def test_implausible_card_values_warn(caplog, good_card, changes, warned) -> None:
    """A card that lies cannot be caught, but an implausible one is pointed out (and still used)."""
    caplog.set_level(logging.WARNING, logger="SAMMed3DLib.card")
    card = ModelCard.from_dict(_with(good_card, **changes))
    assert card.spacing_mm == changes.get("spacing_mm", 1.5)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    if warned is None:
        assert warnings == []
    else:
        assert len(warnings) == 1 and warned in warnings[0] and "probably wrong" in warnings[0]


# -- downloads ------------------------------------------------------------------------------------

#: (case id, URL, words of the DownloadError).
BAD_URLS = [
    ("file-url", "file:///tmp/model.pth", "pass its path instead"),
    ("plain-path", "/tmp/model.pth", "pass its path instead"),
    ("no-scheme", "notaurl", "pass its path instead"),
    ("ftp", "ftp://example.org/model.pth", "give an http:// or https:// address"),
    ("no-host", "https:///model.pth", "give an http:// or https:// address"),
]


@pytest.mark.parametrize(("url", "words"), [c[1:] for c in BAD_URLS], ids=[c[0] for c in BAD_URLS])
def test_non_http_url_is_refused_before_any_transfer(tmp_path, url, words) -> None:
    dest = tmp_path / "models" / "model.pth"
    with pytest.raises(DownloadError) as caught:
        download_file(url, dest, retries=0)
    assert f"{url!r} is not an http(s) URL" in str(caught.value) and words in str(caught.value)
    assert not dest.exists() and not partial_path(dest).exists()


@pytest.mark.parametrize("url", ["file:///tmp/sam_med3d_turbo.pth", "sam_med3d_turbo.pth"])
def test_url_from_the_environment_is_checked_and_named(_isolated_cache, monkeypatch, capsys, url) -> None:
    monkeypatch.setenv(reg.URL_ENV_PREFIX + "SAM_MED3D_TURBO", url)
    assert main(["models", "download", "sam_med3d_turbo"]) == 2
    err = capsys.readouterr().err
    assert f"$SAMMED3D_MODEL_URL_SAM_MED3D_TURBO {url!r} is not an http(s) URL" in err and "Traceback" not in err
    assert not _isolated_cache.exists() or list(_isolated_cache.iterdir()) == []


def _tiny_registry(cache: Path) -> reg.ModelRegistry:
    entry = {"description": "test", "license": "Apache-2.0", "source": "tests", "filename": "tiny.pth", "url": "http://127.0.0.1:9/tiny.pth"}
    return reg.ModelRegistry(reg.parse_registry({"schema_version": 1, "models": {"tiny": entry}}), cache=cache)


def test_folder_in_the_place_of_a_cached_model_is_reported(tmp_path) -> None:
    """It used to be "not downloaded yet", and a download would have failed at its very end."""
    registry = _tiny_registry(tmp_path / "cache")
    (tmp_path / "cache" / "tiny.pth").mkdir(parents=True)
    assert registry.info("tiny").status == "blocked (not a file)"
    for call in (registry.ensure_model, registry.download_model):
        with pytest.raises(CheckpointError, match=r"tiny\.pth is a folder, not a checkpoint; remove it, then run `sammed3d models download tiny`"):
            call("tiny")


def test_broken_link_in_the_cache_is_reported(tmp_path) -> None:
    registry = _tiny_registry(tmp_path / "cache")
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "tiny.pth").symlink_to(tmp_path / "gone.pth")
    with pytest.raises(CheckpointError, match="is a link to .*gone.pth.*, which does not exist; remove it"):
        registry.ensure_model("tiny")


@pytest.mark.skipif(not os.path.exists("/proc/self/mem"), reason="needs Linux's /proc/self/mem, a file whose read fails")
def test_unreadable_cached_model_is_named_when_loading(tmp_path, monkeypatch, capsys) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "sam_med3d_turbo.pth").symlink_to("/proc/self/mem")
    monkeypatch.setenv(reg.CACHE_ENV, str(cache))
    ct = tmp_path / "ct.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((20, 30, 30), np.float32)), str(ct))
    code = main(["segment", str(ct), "--ijk", "--point", "10,10,10", "--model", "sam_med3d_turbo", "--out", str(tmp_path / "m.nii.gz")])
    err = capsys.readouterr().err
    assert code == 2 and "sam_med3d_turbo.pth: Input/output error; make the file readable" in err and "--force" in err
