"""Face analysis on real photos shipped in registry packages, with the real models.

Every test whose outcome depends on the backend runs on each of them (the ``analyzer``
fixture: "dlib", then "mediapipe"), with the same thresholds; what comes after the
landmarks (paste-back) runs once, on dlib.

Photos: scikit-image's astronaut (Eileen Collins, NASA, public domain; 512x512, face
about 91 px wide) and matplotlib's Grace Hopper (US Navy, public domain; 512x600, face
about 187 px wide) as a different person. Everything else is made from them here
(:mod:`tests.avatar.renders`): re-encoded, shifted, mirrored, rotated, turned, composed,
shrunk and enlarged copies; a true 3-D turn comes from the synthetic head of
:mod:`consent.ceremony.sim.head`.
"""

from __future__ import annotations

import io
import re

import cv2
import numpy as np
import pytest
import skimage.data
from PIL import Image

from avatar.errors import FaceNotFoundError, ImageInputError, ModelNotFoundError
from avatar.face import (
    BACKENDS,
    LICENCES,
    SAME_PERSON_THRESHOLD,
    FaceAnalyzer,
    FaceOptions,
    LandmarkBackend,
    MeshBackend,
    UnknownBackendError,
    align_face,
    as_rgb,
    available_backends,
    embedding_distance,
    head_pose,
    load_backend,
    paste_back,
    prepare_photo,
    read_image,
)
from avatar.face.align import invert_affine, map_points
from avatar.face.models import model_path
from avatar.synthetic import FaceStyle
from avatar.types import Box, PreparedAvatar
from consent.ceremony.sim.head import Head, Scene
from tests.avatar.renders import jpeg, mirror, rotate_about, turn_head

# ---------------------------------------------------------------- photos and helpers


@pytest.fixture(scope="module", params=BACKENDS)
def analyzer(request) -> FaceAnalyzer:
    """Each backend in turn, for the tests whose outcome depends on the backend."""
    return FaceAnalyzer.load(FaceOptions(backend=request.param))


@pytest.fixture(scope="module")
def dlib_analyzer() -> FaceAnalyzer:
    """One backend, for tests of what comes after the landmarks (paste-back)."""
    return FaceAnalyzer.load(FaceOptions(backend="dlib"))


@pytest.fixture(params=["astronaut", "hopper"])
def photo(request) -> np.ndarray:
    return request.getfixturevalue(request.param)


def errors_px(found: np.ndarray, expected: np.ndarray) -> np.ndarray:
    return np.linalg.norm(np.asarray(found, np.float64) - np.asarray(expected, np.float64), axis=1)


# ---------------------------------------------------------------- reading images


def test_read_image_converts_modes_to_rgb(tmp_path, astronaut):
    rgb = astronaut[:64, :48]
    Image.fromarray(rgb).convert("L").save(tmp_path / "gray.png")
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])
    rgba[:, :10, 3] = 0  # transparent strip: laid over white
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    Image.fromarray(rgb[:, :, 0].astype(np.uint16) * 257).save(tmp_path / "deep.png")

    for name in ("gray", "rgba", "rgb", "deep"):
        out = read_image(tmp_path / f"{name}.png")
        assert out.dtype == np.uint8 and out.shape == (64, 48, 3), name
    assert np.array_equal(read_image(tmp_path / "rgb.png"), rgb)
    over_white = read_image(tmp_path / "rgba.png")
    assert (over_white[:, :10] == 255).all()
    assert np.array_equal(over_white[:, 10:], rgb[:, 10:])
    deep = read_image(tmp_path / "deep.png")
    assert np.abs(deep[:, :, 0].astype(int) - rgb[:, :, 0]).max() <= 1


def test_read_image_follows_exif_orientation(tmp_path, astronaut):
    exif = Image.Exif()
    exif[0x0112] = 6  # the camera was held rotated: show the pixels turned 90 degrees clockwise
    Image.fromarray(astronaut[:, :300]).save(tmp_path / "phone.jpg", exif=exif, quality=95)
    upright = read_image(tmp_path / "phone.jpg")
    assert upright.shape == (300, 512, 3)
    expected = np.rot90(astronaut[:, :300], k=-1)
    assert np.abs(upright.astype(np.int16) - expected).mean() < 3


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("garbage.jpg", bytes(range(256)) * 8, "format"),
        ("empty.png", b"", "empty"),
        ("notes.txt", b"a face, honestly", "format"),
    ],
)
def test_read_image_refuses_unreadable_files(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ImageInputError, match=message) as err:
        read_image(path)
    assert name in str(err.value)


def test_read_image_refuses_missing_and_truncated_files(tmp_path, astronaut):
    with pytest.raises(ImageInputError, match="does not exist"):
        read_image(tmp_path / "nowhere.jpg")
    buf = io.BytesIO()
    Image.fromarray(astronaut).save(buf, "JPEG")
    (tmp_path / "cut.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(ImageInputError, match="cut.jpg.*(corrupt|truncated)"):
        read_image(tmp_path / "cut.jpg")


def test_as_rgb_converts_and_refuses():
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4)
    assert as_rgb(gray).shape == (3, 4, 3)
    assert as_rgb(np.zeros((3, 4, 4), np.uint8)).shape == (3, 4, 3)
    assert as_rgb(np.ones((2, 2, 3), np.float32)).max() == 255
    for bad in (np.zeros((0, 4, 3), np.uint8), np.zeros((3, 4, 2), np.uint8), "photo.jpg"):
        with pytest.raises(ImageInputError):
            as_rgb(bad)
    with pytest.raises(ImageInputError, match="int64"):
        as_rgb(np.zeros((3, 4, 3), np.int64))


# ---------------------------------------------------------------- backends and registry


@pytest.mark.parametrize("name", BACKENDS)
def test_backend_contract(name, hopper):
    backend = load_backend(name)
    assert isinstance(backend, LandmarkBackend) and backend.name == name
    found = backend.detect(hopper, 1)
    assert len(found) >= 1
    best = max(found, key=lambda d: d.score)
    assert 0 <= best.box.x0 < best.box.x1 <= hopper.shape[1]
    assert 0 <= best.box.y0 < best.box.y1 <= hopper.shape[0]
    points = backend.landmarks(hopper, best.box)
    assert points.shape == (68, 2) and points.dtype == np.float32
    # Eyes above the nose tip, nose above the mouth, the subject's right eye on the left.
    assert points[36:42, 0].mean() < points[42:48, 0].mean()
    assert points[36:48, 1].mean() < points[30, 1] < points[48:68, 1].mean()
    five = backend.landmarks5(hopper, best.box)
    assert five.shape == (5, 2) and five.dtype == np.float32
    # dlib's order: image-right eye outer, inner; image-left eye outer, inner; nose base.
    assert five[0, 0] > five[1, 0] > five[3, 0] > five[2, 0]
    assert five[4, 1] > five[:4, 1].max()
    assert backend.detect(np.full((200, 200, 3), 90, np.uint8), 1) == []


def test_registry_and_licences():
    with pytest.raises(UnknownBackendError, match="dlib"):
        load_backend("insightface")
    assert available_backends()["dlib"].startswith("ready")
    assert "commercial" in LICENCES["dlib"] and "300-W" in LICENCES["dlib"]
    assert set(BACKENDS) <= set(LICENCES)


def test_missing_model_names_the_install_command():
    with pytest.raises(ModelNotFoundError, match="pip install"):
        model_path("no_such_model.dat")


def test_options_fail_fast():
    with pytest.raises(ValueError, match="multiple"):
        FaceOptions(multiple="all")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_abs_yaw_deg"):
        FaceOptions(max_abs_yaw_deg=0)


# ---------------------------------------------------------------- analysis and landmarks


def test_analyze_finds_the_astronaut(analyzer, astronaut):
    face = analyzer.analyze(astronaut)
    assert face.faces_found == 1 and face.warnings == () and face.scale == 1.0
    assert face.landmarks.shape == (68, 2) and face.landmarks.dtype == np.float32
    assert 80 <= face.box.width <= 110 and 160 <= face.box.x0 <= 190
    assert abs(face.pose.yaw) < 15 and abs(face.pose.roll) < 10
    assert set(face.timings) == {"detect", "landmarks", "pose"}


def test_landmarks_stable_on_the_512_photo(analyzer, astronaut):
    """Bound: mean error at most 1 px, every point within 3 px (face about 91 px wide)."""
    base = analyzer.analyze(astronaut).landmarks
    shifted = np.empty_like(astronaut)
    shifted[:, 1:] = astronaut[:, :-1]
    shifted[:, 0] = astronaut[:, 0]
    aligned = align_face(astronaut, base)
    in_crop = analyzer.analyze(aligned.crop).landmarks
    cases = {
        "jpeg q90": analyzer.analyze(jpeg(astronaut)).landmarks,
        "1 px right": analyzer.analyze(shifted).landmarks - np.float32([1, 0]),
        "align-detect-back": map_points(in_crop, invert_affine(aligned.matrix)),
    }
    for name, points in cases.items():
        err = errors_px(points, base)
        print(f"astronaut {name}: mean {err.mean():.2f} px, max {err.max():.2f} px")
        assert err.mean() <= 1.0 and err.max() <= 3.0, name


def test_landmarks_stable_relative_to_face_size(analyzer, photo):
    """Bound: mean error at most 3 % of the face box width (Grace Hopper: 5.6 px)."""
    face = analyzer.analyze(photo)
    aligned = align_face(photo, face.landmarks)
    back = map_points(analyzer.analyze(aligned.crop).landmarks, invert_affine(aligned.matrix))
    for name, points in {"jpeg": analyzer.analyze(jpeg(photo)).landmarks, "align": back}.items():
        err = errors_px(points, face.landmarks) / face.box.width
        assert err.mean() <= 0.03, (name, err.mean())


# ---------------------------------------------------------------- head pose


def test_yaw_flips_sign_on_a_mirrored_photo(analyzer, astronaut2x):
    base = analyzer.analyze(astronaut2x)
    turned = turn_head(astronaut2x, base.landmarks, 20)
    pose = analyzer.analyze(turned).pose
    flipped = analyzer.analyze(mirror(turned)).pose
    assert pose.yaw > 5 and flipped.yaw < -5
    assert abs(pose.yaw + flipped.yaw) < 5, (pose, flipped)
    assert abs(pose.roll + flipped.roll) < 3


@pytest.mark.parametrize("name", ["astronaut2x", "hopper"])
def test_yaw_follows_a_rendered_head_turn(analyzer, request, name):
    image = request.getfixturevalue(name)
    base = analyzer.analyze(image)
    to_left = analyzer.analyze(turn_head(image, base.landmarks, 20)).pose
    to_right = analyzer.analyze(turn_head(image, base.landmarks, -20)).pose
    print(
        f"{name}: yaw {base.pose.yaw:.1f}, turned left {to_left.yaw:.1f}, right {to_right.yaw:.1f}"
    )
    assert to_left.yaw > base.pose.yaw + 4
    assert to_right.yaw < base.pose.yaw - 4


def test_in_plane_rotation_shows_in_roll_not_yaw(analyzer, photo):
    base = analyzer.analyze(photo)
    centre = base.landmarks.mean(axis=0)
    for degrees in (-20, 20):
        pose = analyzer.analyze(rotate_about(photo, centre, degrees)).pose
        assert abs(pose.roll - base.pose.roll - degrees) < 4, (degrees, pose, base.pose)
        assert abs(pose.yaw - base.pose.yaw) < 7, (degrees, pose, base.pose)  # measured <= 5.3


def test_head_pose_checks_its_input():
    with pytest.raises(ValueError, match="68"):
        head_pose(np.zeros((5, 2)), (100, 100, 3))


# ---------------------------------------------------------------- identity


def test_identity_distances(analyzer, astronaut, hopper):
    ref = analyzer.embed(astronaut, analyzer.analyze(astronaut))
    assert ref.shape == (128,) and ref.dtype == np.float32

    def distance(image: np.ndarray) -> float:
        return embedding_distance(ref, analyzer.embed(image, analyzer.analyze(image)))

    brighter = np.clip(astronaut.astype(np.int16) + 40, 0, 255).astype(np.uint8)
    same = {"mirror": distance(mirror(astronaut)), "brighter": distance(brighter)}
    other = distance(hopper)
    print(f"astronaut vs {same}, vs Grace Hopper {other:.3f} (threshold {SAME_PERSON_THRESHOLD})")
    assert all(d < SAME_PERSON_THRESHOLD for d in same.values()), same
    assert other > SAME_PERSON_THRESHOLD
    assert embedding_distance(ref, ref) == 0.0
    with pytest.raises(ValueError):
        embedding_distance(ref, ref[:64])


def test_embedding_from_five_points_agrees(analyzer, astronaut):
    box = analyzer.analyze(astronaut).box
    five = analyzer.backend.landmarks5(astronaut, box)
    full = analyzer.embed(astronaut, analyzer.backend.landmarks(astronaut, box))
    assert five.shape == (5, 2)
    assert embedding_distance(analyzer.embed(astronaut, five), full) < 0.25  # measured 0.16


# ---------------------------------------------------------------- refusals and warnings


@pytest.mark.parametrize(
    "image", [skimage.data.coffee(), np.full((300, 400, 3), 200, np.uint8)], ids=["coffee", "blank"]
)
def test_no_face(analyzer, image):
    with pytest.raises(FaceNotFoundError, match="no face"):
        analyzer.analyze(image)


def test_several_faces(analyzer, astronaut, hopper):
    pair = np.concatenate([astronaut[:500], cv2.resize(hopper, (427, 500))], axis=1)
    face = analyzer.analyze(pair)
    assert face.faces_found == 2
    assert any(re.search(r"\b2 faces\b.*largest", w) for w in face.warnings)
    assert face.box.x0 > astronaut.shape[1]  # Grace Hopper's face is the larger one
    refusing = FaceAnalyzer(analyzer.backend, None, FaceOptions(multiple="refuse"))
    with pytest.raises(FaceNotFoundError, match="2 faces"):
        refusing.analyze(pair)


def test_face_too_small(analyzer, astronaut):
    half = cv2.resize(astronaut, (256, 256), interpolation=cv2.INTER_AREA)
    with pytest.raises(FaceNotFoundError, match="face too small"):
        analyzer.analyze(half)


def test_profile_view_is_refused(analyzer, astronaut2x):
    """A head truly turned 55 degrees (the synthetic 3-D head of
    :mod:`consent.ceremony.sim.head`, 512 px). dlib's HOG detector finds no face there, nor
    in half a face, so with dlib "no face" is the error (at 320 px it does find the head,
    and its 68-point pose reads 36 degrees). The mesh reads 52 degrees (seed 1: 53) and
    the yaw gate refuses it. The 2.5-D warp is no profile: at "45" the mesh reads 25
    (see :func:`tests.avatar.renders.turn_head`). The yaw gate itself is checked with a
    stricter limit on a 20 degree turn that both detectors still find."""
    base = analyzer.analyze(astronaut2x)
    head = Head(FaceStyle.from_seed(0), Scene(size=512, noise=0.0))
    turned = "profile view" if isinstance(analyzer.backend, MeshBackend) else "no face"
    with pytest.raises(FaceNotFoundError, match=turned):
        analyzer.analyze(head.render(55.0))
    nose_x = int(base.landmarks[30, 0])
    with pytest.raises(FaceNotFoundError, match="no face|profile view"):
        analyzer.analyze(np.ascontiguousarray(astronaut2x[:, nose_x:]))
    strict = FaceAnalyzer(analyzer.backend, None, FaceOptions(max_abs_yaw_deg=5))
    with pytest.raises(FaceNotFoundError, match="profile view.*look at the camera"):
        strict.analyze(turn_head(astronaut2x, base.landmarks, 20))


def test_huge_photo_is_searched_downscaled(analyzer, astronaut):
    huge = cv2.resize(astronaut, (6000, 6000), interpolation=cv2.INTER_CUBIC)
    face = analyzer.analyze(huge)
    assert face.scale == pytest.approx(1600 / 6000)
    assert any("6000x6000" in w and "1600x1600" in w for w in face.warnings)
    small = analyzer.analyze(astronaut)
    factor = 6000 / 512
    err = errors_px(face.landmarks / factor, small.landmarks)
    assert err.mean() < 1.5 and err.max() < 4, err  # in the 512 photo's pixels
    assert face.box.x0 == pytest.approx(small.box.x0 * factor, abs=10 * factor)


# ---------------------------------------------------------------- alignment and paste-back


def test_align_face_is_upright_and_centred(analyzer, photo):
    face = analyzer.analyze(photo)
    aligned = align_face(photo, face.landmarks, size=256)
    lm = aligned.landmarks
    assert aligned.crop.shape == (256, 256, 3) and aligned.crop.dtype == np.uint8
    right_eye, left_eye = lm[36:42].mean(axis=0), lm[42:48].mean(axis=0)
    assert abs(right_eye[1] - left_eye[1]) < 256 * 0.02  # eyes level
    assert abs((right_eye[0] + left_eye[0]) / 2 - 128) < 256 * 0.05  # centred
    assert 0.18 * 256 < left_eye[0] - right_eye[0] < 0.32 * 256  # margin for hair and chin
    assert lm[:, 1].max() < 0.95 * 256 and lm[:, 1].min() > 0.25 * 256  # chin in, hair room
    assert np.allclose(map_points(face.landmarks, aligned.matrix), lm, atol=1e-3)


def test_paste_back_round_trip(dlib_analyzer, photo):
    face = dlib_analyzer.analyze(photo)
    aligned = align_face(photo, face.landmarks)
    out = paste_back(photo, aligned.crop, aligned.matrix, feather_px=24)
    box = aligned.source_box()
    far = np.ones(photo.shape[:2], bool)
    far[
        max(0, int(box.y0) - 2) : int(np.ceil(box.y1)) + 2,
        max(0, int(box.x0) - 2) : int(np.ceil(box.x1)) + 2,
    ] = False
    assert far.any() and np.array_equal(out[far], photo[far])
    b = face.box
    region = (slice(int(b.y0), int(b.y1)), slice(int(b.x0), int(b.x1)))
    diff = np.abs(out[region].astype(np.int16) - photo[region].astype(np.int16))
    assert diff.mean() < 4, diff.mean()
    # An edited crop (all white) shows fully in the face and fades at the crop's edge.
    white = paste_back(photo, np.full_like(aligned.crop, 255), aligned.matrix, feather_px=24)
    assert (white[region] == 255).all()
    assert np.array_equal(white[far], photo[far])


# ---------------------------------------------------------------- prepare_photo


def test_prepare_photo(analyzer, astronaut, tmp_path):
    prepared = prepare_photo(astronaut, analyzer, size=256)
    assert isinstance(prepared, PreparedAvatar)
    assert prepared.synthetic is False
    assert re.fullmatch(r"[0-9a-f]{64}", prepared.id)
    assert prepared.image.shape == (256, 256, 3) and prepared.landmarks.shape == (68, 2)
    assert ((prepared.landmarks >= 0) & (prepared.landmarks < 256)).all()
    face = analyzer.analyze(astronaut)
    assert isinstance(prepared.source_box, Box)
    assert prepared.source_box.x0 < face.box.x0 and prepared.source_box.x1 > face.box.x1
    assert prepared.pose == face.pose
    assert prepared.warnings == ()
    near_top = prepare_photo(astronaut[60:], analyzer, size=256)
    assert any("edge" in w for w in near_top.warnings)
    # Same pixels, same id (from a file too); another size or photo, another id.
    Image.fromarray(astronaut).save(tmp_path / "a.png")
    assert prepare_photo(tmp_path / "a.png", analyzer, size=256).id == prepared.id
    assert prepare_photo(astronaut, analyzer, size=512).id != prepared.id
    assert prepare_photo(mirror(astronaut), analyzer, size=256).id != prepared.id
