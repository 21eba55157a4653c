"""A cache of label maps for synthetic training images: every label, resampled onto the card's grid.

Usage::

    python -m training.labelmaps ../shared/data/labelmaps ../shared/data/train --out synth-cache \\
        --exclude-cases brats13_pat0006_flair ts_ct_pulmonary sts002_ct sts002_mr_t1

A synthetic sample (:mod:`training.synth`) paints an image from a whole label map — every
structure, however small, gets its own intensity — and asks the model to segment one cleaned
structure of it. So, unlike the image cache of :mod:`training.prepare`, this cache keeps two maps
per case:

* ``label``: every labelled value of the source, renumbered 1..K in increasing source value
  (uint8, uint16 above 255 labels), 0 unlabelled: what the image is painted from;
* ``target``: the structures that survive the paper's cleaning steps
  (:func:`training.prepare.clean_structures`, the same thresholds as ``training.prepare``:
  size, background of the window crop, 5 largest components, left/right split), numbered 1..n
  as in the image cache: what a sample asks for.

Sources are folders holding ``<case>/label.nii.gz`` and ``<case>/labels.json`` at any depth:
``../shared/data/labelmaps`` (``<set>/<case>/``, no images) and ``../shared/data/train``
(its images are ignored; only the label maps are read). A case's id is ``<parent>/<case>``
(``kits19_kidney/case_00000``, ``train/sts001_ct``); ``--exclude-cases`` takes either that id or
the case folder's name, so the validation cases of a run can be left out by the names the
trainer's ``--val-cases`` uses. The *set* of a case (its parent folder) weighs the sampling
(:class:`LabelMapCache`), so that 100 KiTS kidneys do not drown one abdomen.

Geometry is :mod:`training.prepare`'s: the same isotropic RAS grid of the card's spacing
(:func:`~training.prepare.ras_reference_grid`, nearest-neighbour resampling), then cropped to the
labelled voxels plus a margin (the maps are mostly background; outside the crop is unlabelled,
exactly what the crop removed). Each map is an uncompressed ``.npy`` read memory-mapped, so
training touches only the windows it draws.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from SAMMed3DLib.atomic import atomic_open, atomic_write_json
from SAMMed3DLib.card import WindowSpec
from SAMMed3DLib.cases import LABEL_FILE, LABELS_JSON, read_image, read_labels_json
from SAMMed3DLib.errors import DataError, SAMMed3DError

from .cleaning import MAX_BACKGROUND_FRACTION, MIN_EXTENT_MM, MIN_VOLUME_ML, mask_bbox
from .dataset import StructureRef
from .prepare import PrepareOptions, clean_structures, ras_reference_grid, resample_label_to_ras

logger = logging.getLogger(__name__)

#: Voxels kept around the labelled part of a map when cropping it.
CROP_MARGIN = 4


@dataclass(frozen=True)
class LabelMapSource:
    """One label map on disk: id ``<set>/<case>``, its file and its value → name table."""

    case_id: str
    set: str
    label_path: Path
    names: dict[int, str]
    region: str


def find_label_maps(sources: Sequence[str | Path], exclude: Sequence[str] = ()) -> list[LabelMapSource]:
    """Every ``label.nii.gz`` + ``labels.json`` folder under ``sources`` (any depth), sorted.

    Args:
        sources: folders to search.
        exclude: case ids (``set/case``) or case folder names to leave out.

    Raises:
        DataError: a source does not exist, holds no label map, or two maps get the same id.
    """
    found: list[LabelMapSource] = []
    for src in sources:
        root = Path(src).expanduser()
        if not root.is_dir():
            raise DataError(f"label-map source {root} does not exist or is not a folder")
        folders = sorted({p.parent for p in root.rglob(LABEL_FILE) if (p.parent / LABELS_JSON).is_file()})
        if not folders:
            raise DataError(f"{root} holds no <case>/{LABEL_FILE} with a {LABELS_JSON} beside it")
        for folder in folders:
            names, meta = read_labels_json(folder / LABELS_JSON)
            found.append(LabelMapSource(f"{folder.parent.name}/{folder.name}", folder.parent.name, folder / LABEL_FILE, names, str(meta.get("region", ""))))
    ids = [s.case_id for s in found]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise DataError(f"label maps found twice across the sources: {dupes}; give each source once")
    excluded = set(exclude)
    unknown = sorted(excluded - {s.case_id for s in found} - {s.case_id.split("/", 1)[1] for s in found})
    if unknown:
        logger.warning("--exclude-cases: no label map named %s", unknown)
    return [s for s in found if s.case_id not in excluded and s.case_id.split("/", 1)[1] not in excluded]


def _crop_box(label: np.ndarray, margin: int) -> tuple[np.ndarray, np.ndarray]:
    box = mask_bbox(label != 0)
    if box is None:
        return np.zeros(3, int), np.array(label.shape)
    lo = np.maximum(np.array(box[0]) - margin, 0)
    hi = np.minimum(np.array(box[1]) + margin + 1, label.shape)
    return lo, hi


def _save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_open(path) as fh:
        np.save(fh, array)


def prepare_label_map(source: LabelMapSource, out_dir: Path, opts: PrepareOptions) -> tuple[dict[str, Any] | None, list[Any]]:
    """Resample, clean, crop and write one label map. Returns its index entry (None: no target kept) and the drops."""
    label = read_image(source.label_path)
    ref = ras_reference_grid(label, opts.spacing_mm)
    raw = resample_label_to_ras(label, ref)
    lo, hi = _crop_box(raw, CROP_MARGIN)
    raw = np.ascontiguousarray(raw[tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))])
    # every cleaning step counts voxels or compares components, so the crop changes none of them
    kept, dropped = clean_structures(source.case_id, raw, source.names, opts)
    if not kept:
        return None, dropped
    if len(kept) > 255:
        raise DataError(f"label map {source.case_id} has {len(kept)} structures after cleaning; the cache holds at most 255 per map")
    values = np.unique(raw)
    values = values[values != 0]
    lut = np.zeros(int(values.max()) + 1, dtype=np.uint16 if values.size > 255 else np.uint8)
    lut[values] = np.arange(1, values.size + 1)
    renumbered = lut[raw]
    target = np.zeros(renumbered.shape, dtype=np.uint8)
    structures = []
    for value, (name, mask) in enumerate(kept, start=1):
        target[mask] = value
        mlo, mhi = mask_bbox(mask)  # type: ignore[misc]
        structures.append({"value": value, "name": name, "voxels": int(mask.sum()), "bbox_ras": [list(mlo), list(mhi)]})
    del kept
    stem = source.case_id.replace("/", "__")
    _save_npy(out_dir / f"{stem}.label.npy", renumbered)
    _save_npy(out_dir / f"{stem}.target.npy", target)
    origin = np.array(ref.GetOrigin()) + np.array(ref.GetDirection()).reshape(3, 3) @ (lo * opts.spacing_mm)
    entry = {
        "case": source.case_id, "set": source.set, "region": source.region, "source": str(source.label_path),
        "label_file": f"{stem}.label.npy", "target_file": f"{stem}.target.npy", "shape_ras": list(renumbered.shape),
        "origin_lps": [float(v) for v in origin], "direction_lps": list(ref.GetDirection()),
        "labels": [source.names.get(int(v), f"label_{int(v)}") for v in values],
        "structures": structures,
    }
    return entry, dropped


def prepare_labelmaps(sources: Sequence[str | Path], out_dir: str | Path, opts: PrepareOptions | None = None, exclude: Sequence[str] = ()) -> dict[str, Any]:
    """Build a label-map cache (see the module docstring); returns the index written to ``out_dir/index.json``.

    Raises:
        DataError: no source, or no structure survives cleaning.
    """
    opts = opts or PrepareOptions()
    spec = opts.window_spec
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    entries, dropped = [], []
    for source in find_label_maps(sources, exclude):
        t0 = time.perf_counter()
        entry, drops = prepare_label_map(source, out, opts)
        dropped.extend({"case": d.case, "structure": d.structure, "step": d.step, "reason": d.reason} for d in drops)
        if entry is None:
            logger.warning("%s: no structure kept after cleaning", source.case_id)
            continue
        entries.append(entry)
        logger.info("%s: %d label(s), %d target(s), shape %s (%.1f s)", source.case_id, len(entry["labels"]), len(entry["structures"]),
                    entry["shape_ras"], time.perf_counter() - t0)
    if not entries:
        raise DataError(f"no structure survived cleaning in {[str(s) for s in sources]}; check the labels or relax the thresholds")
    index = {
        "version": 1, "kind": "labelmaps", "window": spec.to_dict(), "card": opts.card or None,
        "axes": "array axis 0 → patient Right, 1 → Anterior, 2 → Superior",
        "options": {k: getattr(opts, k) for k in ("spacing_mm", "min_volume_ml", "min_extent_mm", "max_background", "keep_components", "window")},
        "excluded": sorted(exclude), "cases": entries, "dropped": dropped,
        "n_structures": sum(len(e["structures"]) for e in entries),
    }
    atomic_write_json(out / "index.json", index, indent=1)
    return index


class LabelMapCache:
    """Read access to a cache written by :func:`prepare_labelmaps` (maps memory-mapped, loaded on first use).

    ``structures`` lists every target; ``case_weights`` gives each case the sampling weight
    ``sqrt(targets of its set) / cases of its set``: sets count by the square root of their
    variety, cases of a set equally.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        path = self.root / "index.json"
        if not path.is_file():
            raise DataError(f"{self.root} is not a label-map cache (no index.json); create one with `python -m training.labelmaps SRC --out {self.root}`")
        self.index: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        if self.index.get("kind") != "labelmaps":
            raise DataError(f"{self.root} is not a label-map cache (an image cache? index.json has no \"kind\": \"labelmaps\"); "
                            f"create one with `python -m training.labelmaps SRC --out NEW_FOLDER`")
        try:
            self.window_spec = WindowSpec.from_dict(self.index["window"])
        except (KeyError, TypeError, SAMMed3DError) as exc:
            raise DataError(f"{path} records no valid window spec ({exc}); prepare it again with `python -m training.labelmaps`") from exc
        self.cases: list[dict[str, Any]] = self.index["cases"]
        self.structures = [StructureRef(i, s["value"], s["name"]) for i, c in enumerate(self.cases) for s in c["structures"]]
        per_set: dict[str, list[int]] = {}
        for i, c in enumerate(self.cases):
            per_set.setdefault(c["set"], []).append(i)
        weights = np.zeros(len(self.cases))
        for members in per_set.values():
            variety = sum(len(self.cases[i]["structures"]) for i in members)
            weights[members] = np.sqrt(variety) / len(members)
        self.case_weights = weights / weights.sum()
        self._maps: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    @property
    def case_ids(self) -> list[str]:
        return [c["case"] for c in self.cases]

    def maps(self, case: int) -> tuple[np.ndarray, np.ndarray]:
        """(label, target) arrays (R, A, S) of case position ``case``, memory-mapped."""
        if case not in self._maps:
            c = self.cases[case]
            self._maps[case] = (np.load(self.root / c["label_file"], mmap_mode="r"), np.load(self.root / c["target_file"], mmap_mode="r"))
        return self._maps[case]

    def bbox(self, ref: StructureRef) -> tuple[np.ndarray, np.ndarray]:
        """Inclusive (lo, hi) voxel bounding box of a target, (R, A, S) order."""
        s = next(s for s in self.cases[ref.case]["structures"] if s["value"] == ref.value)
        return np.array(s["bbox_ras"][0]), np.array(s["bbox_ras"][1])

    def label_names(self, case: int) -> list[str]:
        """Names of the renumbered labels 1..K of case position ``case`` (entry 0 is label 1)."""
        return list(self.cases[case]["labels"])


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m training.labelmaps SRC... --out CACHE [--exclude-cases ID...]``."""
    defaults = WindowSpec()
    parser = argparse.ArgumentParser(prog="python -m training.labelmaps", description=__doc__.split("\n\n")[0])
    parser.add_argument("sources", nargs="+", help="folders holding <case>/label.nii.gz + labels.json at any depth")
    parser.add_argument("--out", required=True, help="cache folder to write")
    parser.add_argument("--exclude-cases", nargs="*", default=[], help="case ids (set/case) or folder names to leave out: the validation cases")
    parser.add_argument("--spacing", type=float, default=defaults.spacing_mm, help=f"isotropic spacing in mm (default {defaults.spacing_mm:g}, the card's)")
    parser.add_argument("--window", type=int, default=defaults.input_size, help=f"model window side in voxels (default {defaults.input_size})")
    parser.add_argument("--max-background", type=float, default=MAX_BACKGROUND_FRACTION, help="drop targets whose background exceeds this fraction of the window crop")
    parser.add_argument("--min-volume-ml", type=float, default=MIN_VOLUME_ML, help=f"drop targets under this volume (default {MIN_VOLUME_ML:g}, the paper's)")
    parser.add_argument("--min-extent-mm", type=float, default=MIN_EXTENT_MM,
                        help=f"drop targets whose bounding box is shorter along an axis (default {MIN_EXTENT_MM:g}, the paper's; lower it to keep cords and nerves)")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    if not args.spacing > 0 or args.window < 1 or not 0 < args.max_background <= 1 or args.min_volume_ml < 0 or args.min_extent_mm < 0:
        parser.error("--spacing must be > 0, --window ≥ 1, --max-background in (0, 1], --min-volume-ml and --min-extent-mm ≥ 0")
    opts = PrepareOptions(spacing_mm=args.spacing, window=args.window, max_background=args.max_background, min_volume_ml=args.min_volume_ml,
                          min_extent_mm=args.min_extent_mm)
    try:
        index = prepare_labelmaps(args.sources, args.out, opts, exclude=args.exclude_cases)
    except SAMMed3DError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    sets = sorted({c["set"] for c in index["cases"]})
    print(f"{len(index['cases'])} label map(s) of {len(sets)} set(s) ({', '.join(sets)}), {index['n_structures']} target(s) written to {args.out}; "
          f"{len(index['dropped'])} structure(s) dropped by cleaning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
