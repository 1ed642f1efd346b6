"""The procedural generator on a photo's dense face mesh, against the 68 points it replaces.

Two paths on the same photo (the astronaut, Grace Hopper): "before", prepared by dlib
(68 points; the renderer draws exactly as it did before the mesh reached it), and
"after", prepared by the "mediapipe" backend, whose 468-point mesh reaches the renderer
(``avatar.procedural.dense``). The photo's own lip and lid lines are taken from its mesh
(a spline through the mesh's vertices; for "before" the mesh is moved into dlib's crop)
and carried through each path's warp, then measured:

- a blink (closure 1) shuts the photo's lid line: the gap left between its upper and
  lower lid, in eye distances;
- the mouth interior is painted up to the photo's inner lip line: how far the carried
  line lies from the painted interior's edge, in pixels of the 512 px frame (outside:
  a band of stretched photo between lip and interior; inside: lip painted over), and
  nothing outside the interior is stretched more than 4 times (no tearing);
- the cheeks follow the jaw and the smile, never further than the landmarks move, and
  the warp's stretch jumps across triangle edges in the cheeks no more than before;

and a contact sheet of the astronaut, before and after, from the same speech and seed.
The mouth against the audio on both backends is in ``test_photo_mouth.py``.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
import soundfile as sf

from avatar.face.align import alignment_matrix, map_mesh
from avatar.face.mesh import MESH_TO_68
from avatar.face.prepare import prepare_photo
from avatar.procedural import ProceduralGenerator, ProceduralOptions, render_clip
from avatar.procedural.dense import CHEEKS, INNER_LOWER, INNER_UPPER, LIDS
from avatar.procedural.geometry import curve
from avatar.procedural.renderer import FrameRenderer
from avatar.types import PreparedAvatar
from tests.conftest import espeak_wav

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("LIKENESS_TEST_ARTIFACTS", REPO / "test-artifacts"))
SIZE = 512


@dataclass(frozen=True)
class Photo:
    """One photo on both paths, and its mesh in each path's crop (the photo's lines)."""

    name: str
    before: PreparedAvatar
    after: PreparedAvatar
    lines_before: np.ndarray  # (468, 2) the photo's mesh in dlib's crop
    lines_after: np.ndarray  # (468, 2) in its own crop


@pytest.fixture(scope="module", params=["astronaut", "hopper"])
def photo(request, analyzers) -> Photo:
    rgb = request.getfixturevalue(request.param)
    before = prepare_photo(rgb, analyzers["dlib"], SIZE)
    after = prepare_photo(rgb, analyzers["mediapipe"], SIZE)
    matrix = alignment_matrix(analyzers["dlib"].analyze(rgb).landmarks, SIZE)
    mesh = analyzers["mediapipe"].analyze(rgb).mesh
    moved = map_mesh(mesh.points, matrix)[:, :2]
    return Photo(request.param, before, after, moved, after.mesh[:, :2])


def still(avatar: PreparedAvatar) -> FrameRenderer:
    return FrameRenderer.create(avatar, SIZE, 25.0, sway=0.0, breathing=0.0, blink=False)


def moves(r: FrameRenderer, shape, blink=(0.0, 0.0)) -> tuple[np.ndarray, np.ndarray | None]:
    """The landmarks' and the dense mesh's moves for a mouth ``shape`` and a blink."""
    delta = r.rig.displace(np.asarray(shape, np.float32), blink)
    return delta, None if r.dense is None else r.dense.displace(delta, blink)


def carry(r: FrameRenderer, points: np.ndarray, delta, extra, side: float) -> np.ndarray:
    """``points`` (N, 2) of the rest frame moved as the warp moves the pixels under them.

    Each point goes with the rest triangle it lies in; ``side`` nudges it that many
    pixels down first (and back after), so a point on a closed lip line goes with the
    upper (negative) or lower (positive) lip.
    """
    mesh = r.mesh
    disp = mesh.vertex_displacements(delta, extra)
    rest = mesh.vertices[mesh.triangles].astype(np.float64)
    moved = rest + disp[mesh.triangles]
    p = np.asarray(points, np.float64) + [0.0, side]
    a, e1, e2 = rest[:, 0], rest[:, 1] - rest[:, 0], rest[:, 2] - rest[:, 0]
    det = e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]
    det = np.where(np.abs(det) > 1e-9, det, np.nan)
    rel = p[:, None, :] - a[None]
    v = (rel[..., 0] * e2[:, 1] - rel[..., 1] * e2[:, 0]) / det
    w = (e1[:, 0] * rel[..., 1] - e1[:, 1] * rel[..., 0]) / det
    u = 1.0 - v - w
    inside = np.nan_to_num(np.minimum(np.minimum(u, v), w), nan=-np.inf)
    k = np.argmax(inside, axis=1)
    rows = np.arange(len(p))
    bary = np.stack([u[rows, k], v[rows, k], w[rows, k]], 1)
    return np.einsum("nj,njd->nd", bary, moved[k]) - [0.0, side]


def line(mesh_xy: np.ndarray, ring) -> np.ndarray:
    """The photo's line through the mesh vertices ``ring`` (a spline, 4 points a segment)."""
    return curve(mesh_xy[list(ring)], samples=4)


def lid_gaps(r: FrameRenderer, mesh_xy: np.ndarray) -> np.ndarray:
    """At closure 1: the vertical gap between the photo's upper and lower lid lines as
    the warp carries them, in eye distances, along both eyes."""
    delta, extra = moves(r, np.zeros(5), (1.0, 1.0))
    gaps = []
    for upper, lower in LIDS:
        top = carry(r, line(mesh_xy, upper), delta, extra, -0.5)
        bottom = carry(r, line(mesh_xy, lower), delta, extra, 0.5)
        gaps.append(np.abs(bottom[:, 1] - top[:, 1]))
    return np.concatenate(gaps) / r.rig.iod


def painted(r: FrameRenderer, shape) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(warped, painted, interior mask, the moves) for a mouth shape, head still."""
    delta, extra = moves(r, shape)
    warped = r.rest_image.copy()
    r.mesh.warp(r.rest_image, warped, delta, extra)
    landmarks = r.rest_landmarks + delta
    out = warped.copy()
    r.painter.paint(out, landmarks, float(shape[4]), r.lines(landmarks, extra)[0])
    mask = np.abs(out.astype(int) - warped).max(axis=2) > 0
    return warped, out, mask, (delta, extra)


def lip_offsets(r: FrameRenderer, mesh_xy: np.ndarray, shape) -> np.ndarray:
    """Signed distance (px) of the photo's inner lip line, carried by the warp, from the
    painted interior's edge: positive inside the interior, negative outside it."""
    _, _, mask, (delta, extra) = painted(r, shape)
    pts = np.concatenate(
        [
            carry(r, line(mesh_xy, INNER_UPPER)[1:-1], delta, extra, -0.5),
            carry(r, line(mesh_xy, INNER_LOWER)[1:-1], delta, extra, 0.5),
        ]
    )
    m8 = mask.astype(np.uint8)
    signed = cv2.distanceTransform(m8, cv2.DIST_L2, 5) - cv2.distanceTransform(
        1 - m8, cv2.DIST_L2, 5
    )
    ij = np.round(pts).astype(int)
    s = signed[ij[:, 1], ij[:, 0]]
    return s - 0.5 * np.sign(s)  # from pixel centres to the edge between pixels


def torn_pixels(r: FrameRenderer, shape) -> int:
    """Pixels outside the painted interior (grown by a pixel) whose triangle the warp
    stretched to more than 4 times its area."""
    _, _, mask, (delta, extra) = painted(r, shape)
    mesh = r.mesh
    disp = mesh.vertex_displacements(delta, extra)
    rest = mesh.vertices[mesh.triangles].astype(np.float64)
    moved = rest + disp[mesh.triangles]

    def area(t):
        e1, e2 = t[:, 1] - t[:, 0], t[:, 2] - t[:, 0]
        return np.abs(e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]) / 2

    stretched = np.zeros(mask.shape, np.uint8)
    for tri in moved[area(moved) > 4 * area(rest) + 1.0]:
        cv2.fillConvexPoly(stretched, np.round(tri * 16).astype(np.int32), 1, cv2.LINE_8, 4)
    grown = cv2.dilate(mask.astype(np.uint8), np.ones((3, 3), np.uint8))
    return int((stretched.astype(bool) & ~grown.astype(bool)).sum())


def crease(r: FrameRenderer, shape) -> float:
    """99.5th percentile of the jump of the warp's area stretch between neighbouring
    pixels in the cheeks (under the eyes to the jaw, the mouth left out)."""
    delta, extra = moves(r, shape)
    (x0, y0, x1, y1), source = r.mesh.source_map(delta, extra)
    gx, gy = np.gradient(source, axis=1), np.gradient(source, axis=0)
    stretch = np.ones((SIZE, SIZE))
    stretch[y0:y1, x0:x1] = gx[..., 0] * gy[..., 1] - gx[..., 1] * gy[..., 0]
    lm, iod = r.rest_landmarks, r.rig.iod
    moved = lm + delta
    mx0, my0 = np.floor(moved[48:60].min(0) - 0.08 * iod).astype(int)
    mx1, my1 = np.ceil(moved[48:60].max(0) + 0.08 * iod).astype(int)
    stretch[my0:my1, mx0:mx1] = np.nan
    top, bottom = int(lm[36:48, 1].max() + 0.15 * iod), int(lm[8, 1])
    part = stretch[top:bottom, int(lm[2, 0]) : int(lm[14, 0])]
    jumps = np.maximum(np.abs(np.diff(part, axis=0))[:, :-1], np.abs(np.diff(part, axis=1))[:-1])
    return float(np.percentile(jumps[np.isfinite(jumps)], 99.5))


# ------------------------------------------------------------------------------ data


def test_the_prepared_photo_carries_its_mesh_to_the_renderer(photo):
    after, before = photo.after, photo.before
    assert after.mesh is not None and after.mesh.shape == (468, 3)
    np.testing.assert_array_equal(after.mesh[MESH_TO_68, :2], after.landmarks)
    assert before.mesh is None and still(before).dense is None
    r = still(after)
    assert r.dense is not None and r.mesh.n_extra == len(r.dense.rest) == len(r.dense.vertices)
    assert not set(r.dense.vertices.tolist()) & set(MESH_TO_68.tolist())
    frame = r.render(0.0, None, False)  # nothing moves: the photo as it is
    assert np.array_equal(frame.image, r.rest_image)


def test_the_mesh_lines_are_edges_of_the_warp(photo):
    """The inner lip and lid lines, as the 68 path's OUTLINES (the outer lip line may be
    crossed by a triangle, as it is on the 68 path)."""
    r = still(photo.after)
    helpers = len(r.mesh.helper_motion)
    edges = {
        tuple(sorted((int(t[i]), int(t[(i + 1) % 3])))) for t in r.mesh.triangles for i in range(3)
    }
    for name, ring in r.dense.rings.items():
        if name.startswith("outer"):
            continue
        vertex = [int(v) if v < 68 else int(v) + helpers for v in ring]
        pairs = zip(vertex[:-1], vertex[1:], strict=True)
        missing = [p for p in pairs if tuple(sorted(p)) not in edges]
        assert not missing, f"{photo.name} {name}: {missing}"


# ---------------------------------------------------------------------------- blinks


def test_a_blink_shuts_the_photos_lid_line(photo):
    before = lid_gaps(still(photo.before), photo.lines_before)
    after = lid_gaps(still(photo.after), photo.lines_after)
    print(
        f"{photo.name}: lid gap at closure 1 (eye distances), mean / max: before "
        f"{before.mean():.4f} / {before.max():.4f}, after {after.mean():.4f} / {after.max():.4f}"
    )
    assert after.mean() < 0.006 and after.max() < 0.016
    assert after.mean() < 0.5 * before.mean()


# ----------------------------------------------------------------------------- mouth


@pytest.mark.parametrize("opening", [0.5, 1.0])
def test_the_mouth_interior_meets_the_photos_lip_line(photo, opening):
    shape = [opening, 0.0, 0.0, 0.0, 0.0]
    before = lip_offsets(still(photo.before), photo.lines_before, shape)
    after = lip_offsets(still(photo.after), photo.lines_after, shape)
    torn = torn_pixels(still(photo.before), shape), torn_pixels(still(photo.after), shape)
    print(
        f"{photo.name}, open {opening}: lip line from the interior's edge (px), mean |d| / "
        f"outside / inside: before {np.abs(before).mean():.2f} / {-before.min():.1f} / "
        f"{before.max():.1f}, after {np.abs(after).mean():.2f} / {-after.min():.1f} / "
        f"{after.max():.1f}; torn pixels before {torn[0]}, after {torn[1]}"
    )
    assert np.abs(after).mean() < 1.5 and after.min() > -1.5 and after.max() < 3.0
    assert np.abs(after).mean() < 0.5 * np.abs(before).mean()
    assert torn[1] == 0


# ---------------------------------------------------------------------------- cheeks


def test_the_cheeks_follow_the_jaw_and_the_smile(photo):
    r = still(photo.after)
    index = {int(v): k for k, v in enumerate(r.dense.vertices)}
    delta, extra = moves(r, [1.0, 0.0, 0.0, 0.0, 0.0])
    drop = extra[[index[v] for v in CHEEKS], 1]
    assert drop.max() <= delta[:, 1].max() and drop.min() >= -0.02 * delta[:, 1].max()
    chin = delta[8, 1]
    assert all(extra[index[v], 1] > 0.3 * chin for v in (210, 430))  # the jowls go with the jaw
    assert all(abs(extra[index[v], 1]) < 0.05 * chin for v in (117, 346))  # under the eyes
    delta, extra = moves(r, [0.0, 1.0, 0.0, 0.0, 0.0])  # a smile's spread corners
    assert extra[index[57], 0] < 0.5 * delta[48, 0] < 0  # beside the corners, outwards
    assert extra[index[287], 0] > 0.5 * delta[54, 0] > 0
    for opening in (0.5, 1.0):
        shape = [opening, 0.0, 0.0, 0.0, 0.0]
        before, after = crease(still(photo.before), shape), crease(still(photo.after), shape)
        print(f"{photo.name}, open {opening}: cheek creases before {before:.3f}, after {after:.3f}")
        assert after <= 1.05 * before


# ------------------------------------------------------------------- contact sheet

TILE, BAND = 256, 28


@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> tuple[np.ndarray, int]:
    path = espeak_wav(
        "I would like to hear a story about the sea, please.",
        tmp_path_factory.mktemp("speech") / "story.wav",
    )
    pcm, rate = sf.read(path, dtype="float32")
    return pcm, rate


def _cell(text: str, image: np.ndarray) -> np.ndarray:
    """One sheet cell: ``text`` on a white band above ``image`` shrunk to the tile size."""
    cell = np.full((TILE + BAND, TILE, 3), 255, np.uint8)
    cell[BAND:] = cv2.resize(image, (TILE, TILE), interpolation=cv2.INTER_AREA)
    cv2.putText(cell, text, (6, 19), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (20, 20, 20), 1, cv2.LINE_AA)
    return cell


def _square(image: np.ndarray, centre: np.ndarray, side: int) -> np.ndarray:
    x0, y0 = (np.round(centre) - side // 2).astype(int)
    return image[y0 : y0 + side, x0 : x0 + side]


def _eye_openness(landmarks: np.ndarray) -> float:
    return float((landmarks[[41, 40, 47, 46], 1] - landmarks[[37, 38, 43, 44], 1]).mean())


def _idle(avatar: PreparedAvatar, seconds: float = 8.0) -> list:
    async def frames():
        gen = ProceduralGenerator.load(avatar, ProceduralOptions(seed=11))
        it = aiter(gen)
        out = [await anext(it) for _ in range(int(seconds * 25))]
        await gen.aclose()
        return out

    return asyncio.run(frames())


def _sclera(tile: np.ndarray, marks: np.ndarray) -> float:
    """Share of the eye boxes that is white of the eye (HSV saturation < 50, value > 150)."""
    shares = []
    for eye in (slice(36, 42), slice(42, 48)):
        x0, y0 = np.floor(marks[eye].min(0)).astype(int) - 1
        x1, y1 = np.ceil(marks[eye].max(0)).astype(int) + 2
        hsv = cv2.cvtColor(np.ascontiguousarray(tile[y0:y1, x0:x1]), cv2.COLOR_RGB2HSV)
        shares.append(((hsv[..., 1] < 50) & (hsv[..., 2] > 150)).ravel())
    return float(np.concatenate(shares).mean())


def _dark(tile: np.ndarray, marks: np.ndarray) -> float:
    """Share of the mouth's box (rest landmarks, 0.25 eye distances lower) that is dark."""
    iod = float(np.linalg.norm(marks[42:48].mean(0) - marks[36:42].mean(0)))
    x0, y0 = np.floor(marks[48:68].min(0)).astype(int)
    x1, y1 = np.ceil(marks[48:68].max(0) + [0.0, 0.25 * iod]).astype(int)
    luma = tile[y0:y1, x0:x1].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    return float(np.mean(luma < 60))


def test_contact_sheet_before_and_after(astronaut, analyzers, speech):
    """The astronaut from the same speech and seed, drawn from dlib's 68 points (before)
    and from the mesh (after), written as a PNG to look at: open mouth, the mouth and the
    eyes mid-blink at twice the size, closed mouth, idle. Read back, each tile is its
    frame under its label, and shows what the label says on both rows: a dark interior
    in the open mouth and none in the closed one, the white of the eyes gone mid-blink
    and there at idle; the rows differ in the open mouth."""
    pcm, rate = speech
    rows = {}
    for label, backend in (("before", "dlib"), ("after", "mediapipe")):
        avatar = prepare_photo(astronaut, analyzers[backend], SIZE)
        rows[label] = (
            avatar,
            render_clip(avatar, pcm, rate, None, ProceduralOptions(seed=11)),
            _idle(avatar),
        )
    _, talk, idle = rows["before"]  # the same frames are shown on both rows
    gaps = np.array([f.mouth_open for f in talk])
    open_at, closed_at = int(np.argmax(gaps)), int(np.argmin(gaps[5:-5])) + 5
    eyes = np.array([_eye_openness(f.landmarks) for f in idle])
    blink_at, idle_at = int(np.argmin(eyes)), int(np.argmax(eyes > 0.98 * eyes.max()))
    cells, checks = [], {}
    for label, (avatar, talk, idle) in rows.items():
        lm = avatar.landmarks
        tiles = [
            ("open mouth", talk[open_at].image),
            ("open, mouth x2", _square(talk[open_at].image, lm[48:68].mean(0), SIZE // 4)),
            ("mid-blink, eyes x2", _square(idle[blink_at].image, lm[36:48].mean(0), SIZE // 2)),
            ("closed mouth", talk[closed_at].image),
            ("idle", idle[idle_at].image),
        ]
        cells.append([(f"{label}: {name}", image) for name, image in tiles])
        checks[label] = lm * (TILE / SIZE)
    sheet = np.concatenate(
        [np.concatenate([_cell(text, image) for text, image in row], axis=1) for row in cells]
    )
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / "procedural_mesh_before_after.png"
    assert cv2.imwrite(str(path), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
    back = cv2.imread(str(path))
    assert back is not None and back.shape == (2 * (TILE + BAND), 5 * TILE, 3)
    back = cv2.cvtColor(back, cv2.COLOR_BGR2RGB)
    shown = {}
    for r, (row, label) in enumerate(zip(cells, rows, strict=True)):
        for c, (text, image) in enumerate(row):
            cell = back[r * (TILE + BAND) : (r + 1) * (TILE + BAND), c * TILE : (c + 1) * TILE]
            assert np.array_equal(cell, _cell(text, image)), text
            assert (cell[:BAND].max(axis=2) < 100).sum() > 50, f"{text}: a label on the band"
            shown[text] = cell[BAND:]
        marks = checks[label]
        dark = {k: _dark(shown[f"{label}: {k}"], marks) for k in ("open mouth", "closed mouth")}
        sclera = {k: _sclera(shown[f"{label}: {k}"], marks) for k in ("idle", "closed mouth")}
        blink_marks = (marks - marks[36:48].mean(0)) * 2 + TILE / 2  # the x2 eye tile
        sclera["mid-blink"] = _sclera(shown[f"{label}: mid-blink, eyes x2"], blink_marks)
        print(f"{label}: dark mouth {dark}, white of the eyes {sclera}")
        assert dark["open mouth"] > 0.15 and dark["closed mouth"] < 0.03, dark
        assert sclera["idle"] > 0.05 and sclera["closed mouth"] > 0.05, sclera
        assert sclera["mid-blink"] < 0.1 * sclera["idle"], sclera
    a, b = (shown[f"{label}: open, mouth x2"].astype(np.float32) for label in rows)
    assert np.abs(a - b).mean() > 5, "the mesh draws the open mouth differently"
