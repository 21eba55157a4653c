"""Locked segments as negative evidence (issue 12, item 3): masked out of the prediction only, or also prompted.

Each structure of the held-back multi-structure cases (the BraTS case's four tumour sub-regions,
the pulmonary CT's heart and pulmonary artery) is segmented with the paper protocol (random clicks,
seed 0, Dice after 1/3/5/10) while every other labelled structure is a finished, locked segment.
Variants (``--variant``):

* ``none``: nothing locked;
* ``mask``: the session's rule (``Session.set_locked``): locked voxels are never written;
* ``dense``: ``mask``, and the locked voxels inside the window set to the "outside" logit in the
  decoder's dense prompt (the previous logits) before every decode;
* ``points``: ``mask``, and one negative click at the deepest voxel of each locked component.

``dense`` and ``points`` patch the session's steps in this process only (they are experiments,
not options). Needs ../shared/data; writes benchmarks/results/locked_segments.json.

    python benchmarks/locked_segments.py --variant mask   # then none, dense, points
"""
import argparse
import os
import json

import numpy as np
import torch

torch.set_num_threads(1)
import SimpleITK as sitk
from scipy import ndimage
import SAMMed3DLib.session_steps as ss
from SAMMed3DLib.session import Session
from SAMMed3DLib.checkpoint import load_model
from SAMMed3DLib.evaluate import evaluate, _read_case_images
from SAMMed3DLib.cases import find_cases
from SAMMed3DLib.editing import mask_prompt_logits, OUTSIDE_LOGIT

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("--variant", choices=("none", "mask", "dense", "points"), default="mask")
ap.add_argument("--data", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "train"))
VARIANT = ap.parse_args().variant
DATA = ap.parse_args().data
model = load_model("default")

_decode = ss.WindowSteps._decode
def decode_dense(self, state, timings):
    if self._locked is None or self._editing:
        return _decode(self, state, timings)
    lock = mask_prompt_logits(self._locked.astype(np.uint8), self._geometry, state.window, self.model.low_res_size, self.device)
    prev = state.logits if state.logits is not None else torch.zeros((1, 1, *self.model.low_res_size))
    if lock is not None:
        prev = torch.where(lock > 0, torch.full_like(prev, OUTSIDE_LOGIT), prev)
    self._windows.decode(state, *self._prompts(), dense=prev)

_prompts = ss.WindowSteps._prompts
def prompts_points(self):
    pts, labs = _prompts(self)
    if self._locked is None: return pts, labs
    cache = getattr(self, "_lock_pts", None)
    if cache is None:
        lab, n = ndimage.label(self._locked)
        edt = ndimage.distance_transform_edt(self._locked, sampling=np.asarray(self._geometry.spacing_xyz_mm)[::-1])
        extra = []
        for i, sl in enumerate(ndimage.find_objects(lab), 1):
            if sl is None: continue
            e = np.where(lab[sl] == i, edt[sl], 0)
            if e.max() < 2: continue
            z, y, x = np.unravel_index(np.argmax(e), e.shape)
            extra.append(self._geometry.index_to_lps(np.array([[x + sl[2].start, y + sl[1].start, z + sl[0].start]], float))[0])
        self._lock_pts = cache = np.array(extra).reshape(-1, 3)
    if not len(cache): return pts, labs
    return np.concatenate([cache, pts]), np.concatenate([np.zeros(len(cache), np.int64), labs])

if VARIANT == "dense":
    ss.WindowSteps._decode = decode_dense
if VARIANT == "points":
    ss.WindowSteps._prompts = prompts_points

out = {}
for case in find_cases(DATA, cases=["brats13_pat0006_flair", "ts_ct_pulmonary"]):
    image, lab = _read_case_images(case)
    L = sitk.GetArrayFromImage(lab)
    for value, name in case.names.items():
        others = (L != 0) & (L != value)
        def fac(img, others=others):
            s = Session(model, img)
            if VARIANT != "none":
                s.set_locked(others.astype(np.uint8))
            return s
        r = evaluate(DATA, model=model, method=fac, protocol="paper", cases=[case.case_id], labels=[name])
        out[f"{case.case_id}/{name}"] = {str(row.clicks): round(row.dice, 4) for row in r.rows}
        print(VARIANT, case.case_id, name, out[f"{case.case_id}/{name}"], flush=True)
means = {k: round(float(np.mean([v[k] for v in out.values()])), 4) for k in ("1", "3", "5", "10")}
print(VARIANT, "MEAN", means)
path = os.path.join(os.path.dirname(__file__), "results", "locked_segments.json")
results = json.load(open(path)) if os.path.exists(path) else {}
results[VARIANT] = {"per_structure": out, "mean_dice": means}
with open(path, "w") as f:
    json.dump(results, f, indent=1)
