"""The box's positive stand-in click moves off the centre once a negative click says the centre is not the object."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from SAMMed3DLib import build_sam3d
from SAMMed3DLib.box_prompt import CENTRE_VETO_MM, stand_in_click
from SAMMed3DLib.editing import Box
from SAMMed3DLib.geometry import ImageGeometry
from SAMMed3DLib.model.sam3d import Sam3D
from SAMMed3DLib.session import Session
from test_editing import lps_grid
from test_session import TINY, oblique_volume


def shell_scene():
    """Oblique, anisotropic image holding a hollow sphere (radius 12–30 mm): its box's centre is not the object."""
    image = oblique_volume(size_xyz=(110, 100, 30), spacing=(0.8, 0.9, 3.0))
    pts = lps_grid(image)
    centre = np.array(image.TransformContinuousIndexToPhysicalPoint((55.0, 50.0, 15.0)))
    r = np.linalg.norm(pts - centre, axis=-1)
    shell = (r >= 12.0) & (r <= 30.0)
    box = Box.from_corners(centre - 31.0, centre + 31.0)
    return image, ImageGeometry.from_image(image), pts, shell, box, centre


def test_without_a_contradicting_negative_the_stand_in_is_the_box_centre() -> None:
    image, geometry, pts, shell, box, centre = shell_scene()
    assert np.allclose(stand_in_click(box, geometry, shell, np.zeros((0, 3)), np.zeros(0)), box.center_lps)
    far = centre + np.array([0.0, 0.0, CENTRE_VETO_MM + 5.0])
    assert np.allclose(stand_in_click(box, geometry, shell, np.stack([centre + 1.0, far]), np.array([1, 0])), box.center_lps)


def test_a_negative_at_the_centre_moves_the_stand_in_into_the_mask_away_from_it() -> None:
    image, geometry, pts, shell, box, centre = shell_scene()
    negative = centre + np.array([2.0, -1.0, 0.0])
    point = stand_in_click(box, geometry, shell, negative[None], np.array([0]))
    assert point is not None and box.contains_lps(point[None])[0]
    assert np.linalg.norm(point - negative) > CENTRE_VETO_MM
    index = np.rint(geometry.lps_to_index(point)).astype(int)
    assert shell[index[2], index[1], index[0]], "the stand-in lies in the current mask"
    # Deep in the shell: about mid-way between its inner and outer surfaces (21 mm from the centre).
    assert abs(np.linalg.norm(point - centre) - 21.0) < 4.0


def test_no_stand_in_when_the_mask_lies_only_near_the_negative_click() -> None:
    image, geometry, pts, shell, box, centre = shell_scene()
    core = np.linalg.norm(pts - centre, axis=-1) <= 10.0
    assert stand_in_click(box, geometry, core, centre[None], np.array([0])) is None


class PromptRecorder(Sam3D):
    """A small random-weight SAM-Med3D that records each decode's sparse prompts."""

    def __init__(self) -> None:
        base = build_sam3d(TINY)
        super().__init__(base.image_encoder, base.prompt_encoder, base.mask_decoder, base.config)
        self.card = getattr(base, "card", None)
        self.prompts: list[tuple[np.ndarray, np.ndarray]] = []

    def predict_low_res(self, image_embeddings, coords, labels, mask_logits):  # noqa: ANN001
        if coords is None:
            self.prompts.append((np.zeros((0, 3)), np.zeros(0, dtype=np.int64)))
        else:
            self.prompts.append((coords[0].numpy().copy(), labels[0].numpy().copy()))
        return super().predict_low_res(image_embeddings, coords, labels, mask_logits)


def test_the_decoder_stops_getting_a_positive_at_the_centre_after_a_negative_there() -> None:
    image, geometry, pts, shell, box, centre = shell_scene()
    arr = np.where(shell, 400.0, 100.0).astype(np.float32)
    img = sitk.GetImageFromArray(arr)
    img.CopyInformation(image)
    model = PromptRecorder()
    session = Session(model, img)
    result = session.set_box(box.lo_lps, box.hi_lps)
    window = result.windows[0]
    coords, labels = model.prompts[-1]
    assert labels.tolist() == [1] and np.linalg.norm(window.index_to_lps(coords[:1])[0] - box.center_lps) < 1e-3
    session.click(centre + np.array([1.0, 0.0, 0.0]), positive=False)
    coords, labels = model.prompts[-1]
    lps = window.index_to_lps(coords)
    positives = lps[labels == 1]
    assert np.all(np.linalg.norm(positives - box.center_lps, axis=1) > CENTRE_VETO_MM)
    assert labels[-1] == 0 and np.linalg.norm(lps[-1] - (centre + np.array([1.0, 0.0, 0.0]))) < 1e-3


def test_a_box_larger_than_the_search_budget_is_searched_on_a_coarser_grid(monkeypatch) -> None:
    import SAMMed3DLib.box_prompt as box_prompt

    image, geometry, pts, shell, box, centre = shell_scene()
    full = stand_in_click(box, geometry, shell, centre[None], np.array([0]))
    monkeypatch.setattr(box_prompt, "MAX_SEARCH_VOXELS", 20_000)
    coarse = stand_in_click(box, geometry, shell, centre[None], np.array([0]))
    assert coarse is not None and full is not None
    index = np.rint(geometry.lps_to_index(coarse)).astype(int)
    assert shell[index[2], index[1], index[0]] and np.linalg.norm(coarse - centre) > CENTRE_VETO_MM
    assert abs(np.linalg.norm(coarse - centre) - 21.0) < 5.0


def test_a_negative_on_the_rim_of_a_small_box_keeps_the_stand_in_at_its_centre() -> None:
    from SAMMed3DLib.box_prompt import CENTRE_VETO_FRACTION

    image, geometry, pts, _, _, centre = shell_scene()
    nucleus = np.linalg.norm(pts - centre, axis=-1) <= 7.0
    box = Box.from_corners(centre - 8.0, centre + 8.0)  # 16 mm: every click lies within 20 mm of its centre
    rim = centre + np.array([6.0, 0.0, 0.0])  # 6 mm out, beyond a quarter of the box's side (4 mm)
    assert 6.0 > CENTRE_VETO_FRACTION * 16.0
    assert np.allclose(stand_in_click(box, geometry, nucleus, rim[None], np.array([0])), box.center_lps)
    # A negative at the centre itself still moves it, to the mask's deepest voxel beyond 4 mm.
    moved = stand_in_click(box, geometry, nucleus, centre[None], np.array([0]))
    assert moved is not None and np.linalg.norm(moved - centre) > CENTRE_VETO_FRACTION * 16.0
