"""The bona fide synthetic head (consent/ceremony/sim/head.py), read by the real dlib analyzer.

Measured figures are printed (run with ``-s``) and written next to each threshold.
"""

from __future__ import annotations

import time

import cv2
import numpy as np
import pytest

from avatar.face import FaceAnalyzer, FaceOptions, embedding_distance
from avatar.synthetic import FaceStyle, face_landmarks
from consent.ceremony.sim import Head, Scene

SEEDS = (0, 1, 2, 5, 6)  # see test_yaw_read_back for seeds dlib loses when turned


@pytest.fixture(scope="module")
def analyzer() -> FaceAnalyzer:
    return FaceAnalyzer.load(FaceOptions())


def head(seed: int = 0, **scene) -> Head:
    return Head(FaceStyle.from_seed(seed), Scene(seed=seed, **scene))


@pytest.mark.parametrize("seed", SEEDS)
def test_yaw_read_back(analyzer, seed):
    """One face at every yaw, read with the right sign, growing with the drawn turn.

    Measured (dlib + head_pose, 320 px), drawn -30/-20/0/20/30:
    seed 0: -25.0 -14.1 +5.1 +21.3 +27.7; seed 1: -21.2 -14.4 +3.7 +17.7 +21.7;
    seed 2: -25.4 -11.9 +4.2 +18.6 +27.2; seed 5: -21.3 -11.6 +3.9 +20.8 +26.1;
    seed 6: -20.3 -10.8 +6.7 +15.1 +22.3. A frontal face reads 3.7-6.7 degrees (the
    pose template's bias on this face). Seeds 3 and 4 (short blond / deep skin with a
    grey bob) are lost by dlib's HOG detector at -30 (seed 4 already at -20), like the
    2-D test clips' faces beyond 40 degrees; seeds 7-11 read with the right sign.
    """
    sim = head(seed)
    read = {}
    for drawn in (-30, -20, 0, 20, 30):
        face = analyzer.analyze(sim.render(drawn))
        assert face.faces_found == 1, f"seed {seed} yaw {drawn}: {face.faces_found} faces"
        read[drawn] = face.pose.yaw
    print(f"\nseed {seed}: " + " ".join(f"{d:+d}->{m:+.1f}" for d, m in read.items()))
    assert abs(read[0]) < 9.0  # measured 3.7-6.7
    for drawn in (20, 30):
        assert read[drawn] > 8.0, read  # measured >= 15.1
        assert read[-drawn] < -8.0, read  # measured <= -10.8
    assert read[30] > read[20] > read[0] > read[-20] > read[-30], read


def test_far_cheek_hides_behind_the_face():
    """Turned 30 degrees, the far half of the face loses texels; the near half hardly."""
    sim = head(0)
    p = sim.portrait_px
    lm = face_landmarks(sim.style) * p
    face = np.zeros((p, p), np.uint8)
    cv2.fillPoly(face, [np.round(np.concatenate([lm[:17], lm[26:16:-1]])).astype(np.int32)], 1)
    left = face.astype(bool) & (np.arange(p)[None, :] < lm[27, 0])
    right = face.astype(bool) & ~left

    def counts(yaw):
        seen = sim.visible_texels(yaw)
        return (seen & left).sum(), (seen & right).sum()

    l0, r0 = counts(0.0)
    assert l0 == left.sum() and r0 == right.sum()  # frontal: the whole face in sight
    far, near = counts(30.0)  # positive yaw turns the face to the image's left
    drop_far, drop_near = 1 - far / l0, 1 - near / r0
    print(f"\nyaw +30: far half lost {drop_far:.1%}, near half {drop_near:.1%}")
    assert drop_far > 0.03  # measured 4.8%
    assert drop_near < 0.01  # measured 0.0%
    mirror_far, mirror_near = counts(-30.0)
    assert 1 - mirror_near / r0 > 0.03 and 1 - mirror_far / l0 < 0.01


def test_silhouette_moves_with_the_head():
    """The hair and ears' outline shifts; the neck and shirt (the body) stay."""
    sim = head(3)  # short hair: the ears are on the outline
    p, off = sim.portrait_px, (320 - sim.portrait_px) // 2
    ear_row = round(face_landmarks(sim.style)[2, 1] * p) + off
    edges = {}
    for yaw in (-30.0, 0.0, 30.0):
        row = np.nonzero(sim.coverage(yaw)[ear_row] > 0.5)[0]
        edges[yaw] = (row.min(), row.max())
    print(f"\noutline at the ears' height (left, right px): {edges}")
    # measured (138, 245) at -30, (98, 222) at 0, (74, 182) at +30: both edges follow
    # the turn, the side of the head behind the ear (the near side) by more.
    assert edges[30.0][0] < edges[0.0][0] - 10 and edges[30.0][1] < edges[0.0][1] - 20
    assert edges[-30.0][0] > edges[0.0][0] + 20 and edges[-30.0][1] > edges[0.0][1] + 10
    still = head(3, key_intensity=0.0, noise=0.0)
    a, b = still.render(0.0), still.render(30.0)
    chest = slice(300, 320)
    assert np.abs(a[chest].astype(int) - b[chest].astype(int)).max() <= 1  # the body stays


def test_shading_follows_the_turn(analyzer):
    """The face is brighter turned towards the key light: the +30/-30 brightness ratio
    is higher with the light on the upper left than with it on the upper right."""

    def face_brightness(sim, yaw):
        image = sim.render(yaw)
        lm = analyzer.analyze(image).landmarks
        mask = np.zeros(image.shape[:2], np.uint8)
        cv2.fillConvexPoly(mask, cv2.convexHull(lm[:27].astype(np.int32)), 1)
        return image[mask.astype(bool)].mean()

    ratios = []
    for light in ((-0.4, -0.3, 0.86), (0.4, -0.3, 0.86)):
        sim = head(0, noise=0.0, key_light=light, key_intensity=0.6)
        ratios.append(face_brightness(sim, 30.0) / face_brightness(sim, -30.0))
    print(f"\nbrightness +30/-30: light on the left {ratios[0]:.3f}, right {ratios[1]:.3f}")
    assert ratios[0] - ratios[1] > 0.05  # measured 1.038 vs 0.864


def test_screen_light_reaches_the_face_not_the_wall(analyzer):
    sim = head(0)
    lm = analyzer.analyze(sim.render(0.0)).landmarks
    cheeks = [(lm[3] + lm[31]) / 2, (lm[13] + lm[35]) / 2]

    def chroma(image, boxes):
        pixels = np.concatenate(
            [image[y0:y1, x0:x1].reshape(-1, 3) for x0, y0, x1, y1 in boxes]
        ).astype(float)
        return float(np.mean(pixels[:, 0] / pixels.sum(1).clip(1)))

    cheek_boxes = [(round(x) - 6, round(y) - 6, round(x) + 6, round(y) + 6) for x, y in cheeks]
    wall_boxes = [(2, 2, 42, 18), (278, 2, 318, 18)]
    red, blue = sim.render(0.0, screen_rgb=(1, 0, 0)), sim.render(0.0, screen_rgb=(0, 0, 1))
    cheek_delta = chroma(red, cheek_boxes) - chroma(blue, cheek_boxes)
    wall_delta = chroma(red, wall_boxes) - chroma(blue, wall_boxes)
    print(f"\nr/(r+g+b) red - blue flash: cheek {cheek_delta:.4f}, wall {wall_delta:.4f}")
    assert cheek_delta > 0.05  # measured 0.0793
    assert wall_delta < cheek_delta / 4  # measured 0.0092 (cheek / wall: 8.6)


def test_photo_is_the_same_person(analyzer):
    def embedding(image):
        return analyzer.embed(image, analyzer.analyze(image))

    sim, other = head(0), head(3)
    photo = embedding(sim.photo())
    same = embedding_distance(photo, embedding(sim.render(0.0)))
    turned = embedding_distance(photo, embedding(sim.render(20.0)))
    different = embedding_distance(photo, embedding(other.photo()))
    print(f"\nidentity: photo-frame {same:.3f}, photo-turned {turned:.3f}, seed 3 {different:.3f}")
    assert same < 0.4  # measured 0.151 (turned 20 degrees: 0.234)
    assert different > same + 0.15  # measured 0.583
    photo_image = sim.photo(200)
    assert photo_image.shape == (200, 200, 3) and photo_image.dtype == np.uint8
    assert np.array_equal(photo_image, sim.photo(200))  # no noise


def test_mouth_opens(analyzer):
    sim = head(1, noise=0.0)

    def gap(mouth):
        lm = analyzer.analyze(sim.render(0.0, mouth_open=mouth)).landmarks
        return float(lm[66, 1] - lm[62, 1])

    closed, wide = gap(0.0), gap(1.0)
    print(f"\ninner lip gap: closed {closed:.1f} px, open {wide:.1f} px")
    assert wide > closed + 5  # measured -2.0 -> 10.0


def test_frames_are_deterministic_and_noise_follows_the_frame():
    a, b = head(2), head(2)
    args = {"yaw_deg": 12.5, "mouth_open": 0.4, "screen_rgb": (0.2, 0.9, 0.1), "pitch_deg": 5.0}
    first = a.render(**args, frame_index=7)
    assert first.shape == (320, 320, 3) and first.dtype == np.uint8
    assert np.array_equal(first, b.render(**args, frame_index=7))
    other = a.render(**args, frame_index=8)
    difference = first.astype(int) - other.astype(int)
    assert np.abs(difference).max() > 0 and abs(difference.mean()) < 0.2
    assert 1.5 < difference.std() / np.sqrt(2) < 2.5  # noise=2.0 levels
    quiet = head(2, noise=0.0)
    assert np.array_equal(quiet.render(3.0, frame_index=1), quiet.render(3.0, frame_index=2))


def test_pitch_and_scale(analyzer):
    """Chin up reads as more pitch than chin down; a closer head is larger."""
    sim = head(0)
    up = analyzer.analyze(sim.render(0.0, pitch_deg=15.0)).pose.pitch
    down = analyzer.analyze(sim.render(0.0, pitch_deg=-15.0)).pose.pitch
    print(f"\npitch +15 reads {up:+.1f}, -15 reads {down:+.1f}")
    assert up > down + 10  # measured +7.7 vs -16.8
    near = analyzer.analyze(head(0, face_scale=1.25).render(0.0)).box.width
    far = analyzer.analyze(head(0, face_scale=0.75).render(0.0)).box.width
    assert near > 1.4 * far


def test_render_is_fast():
    """One frame at 320 px; the module doc has the figure on one core (about 5-15 ms)."""
    sim = head(0)
    sim.render(0.0)  # paints the texture
    times = []
    for i in range(10):
        start = time.perf_counter()
        sim.render(30.0, screen_rgb=(1, 0, 0), frame_index=i)
        times.append(time.perf_counter() - start)
    assert np.median(times) < 0.1  # a generous bound for a shared machine


@pytest.mark.parametrize(
    ("scene", "words"),
    [
        ({"size": 32}, "size"),
        ({"face_scale": 1.5}, "face_scale"),
        ({"face_scale": 0.5}, "face_scale"),
        ({"key_light": (0.0, 0.0, 0.0)}, "key_light"),
        ({"noise": -1.0}, "noise"),
        ({"ambient": (0.5, float("nan"), 0.5)}, "ambient"),
    ],
)
def test_bad_scene(scene, words):
    with pytest.raises(ValueError, match=words):
        Scene(**scene)


@pytest.mark.parametrize(
    ("args", "words"),
    [
        ({"yaw_deg": float("nan")}, "yaw_deg"),
        ({"yaw_deg": float("inf")}, "yaw_deg"),
        ({"yaw_deg": 75.0}, "yaw_deg"),
        ({"yaw_deg": 0.0, "pitch_deg": float("nan")}, "pitch_deg"),
        ({"yaw_deg": 0.0, "mouth_open": 1.5}, "mouth_open"),
        ({"yaw_deg": 0.0, "screen_rgb": (1.0, 0.0)}, "screen_rgb"),
        ({"yaw_deg": 0.0, "frame_index": -1}, "frame_index"),
    ],
)
def test_bad_render_arguments(args, words):
    with pytest.raises(ValueError, match=words):
        head(0).render(**args)
