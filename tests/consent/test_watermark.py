"""The invisible grant-id watermark: invisible, cheap, robust where frames travel, and
silent on everything it did not mark.

Real parts only: frames from the procedural generator and scikit-image's photos, real
PNG/JPEG files, aiortc's own VP8 encoder and decoder, a real consent store, the CLI.
"""

from __future__ import annotations

import fractions
import hashlib
import io
import json
import os
import stat
import time
import uuid

import cv2
import numpy as np
import pytest
from PIL import Image

from avatar.face.images import read_image
from avatar.procedural.generator import ProceduralOptions, render_clip
from avatar.synthetic import make_demo_avatar
from consent.errors import KeyFileError, KeyPermissionError
from consent.watermark import (
    CHIPS,
    PRESENCE_THRESHOLD,
    SYNTHETIC,
    Watermark,
    WatermarkOptions,
    detect,
    payload_of,
    threshold,
)
from consent.watermark_key import KEY_FILE, WatermarkKey, key_dir
from runtime.label import AiLabel, FrameStamp

SIZE = 512
GRANT = uuid.UUID(int=0x5EED).hex  # the grant the frames are stamped with


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255**2 / mse))


@pytest.fixture(scope="module")
def key() -> WatermarkKey:
    """A fixed key, so every figure below is the same on every run (files: first test)."""
    return WatermarkKey(hashlib.sha256(b"likeness test watermark key").digest())


@pytest.fixture(scope="module")
def others() -> list[str]:
    """Other grants in the store: the detector must pick the right one among them."""
    rng = np.random.default_rng(7)
    return [uuid.UUID(bytes=rng.bytes(16)).hex for _ in range(100)]


@pytest.fixture(scope="module")
def clip() -> list[np.ndarray]:
    """Two seconds of the synthetic face talking (the frames a session sends)."""
    sr, n = 16000, 50
    t = np.arange(sr * n // 25) / sr
    pcm = (0.5 * np.sin(2 * np.pi * 180 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))).astype(
        np.float32
    )
    frames = render_clip(make_demo_avatar(SIZE), pcm, sr, options=ProceduralOptions(size=SIZE))
    return [f.image for f in frames[:n]]


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    from skimage import data

    return data.astronaut()  # 512² RGB, public domain (NASA)


def encode(image: np.ndarray, fmt: str, **params) -> np.ndarray:
    """Write ``image`` to an in-memory file and read it back the way the CLI does."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, fmt, **params)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def half_and_back(image: np.ndarray) -> np.ndarray:
    small = cv2.resize(image, (SIZE // 2, SIZE // 2), interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (SIZE, SIZE), interpolation=cv2.INTER_LINEAR)


def vp8_round_trip(frames: list[np.ndarray]) -> list[np.ndarray]:
    """What a browser decodes: aiortc's VP8 encoder (default bitrate) and decoder."""
    import av
    from aiortc.codecs.vpx import Vp8Decoder, Vp8Encoder, vp8_depayload
    from aiortc.jitterbuffer import JitterFrame

    encoder, decoder = Vp8Encoder(), Vp8Decoder()
    out = []
    for i, image in enumerate(frames):
        frame = av.VideoFrame.from_ndarray(image, format="rgb24")
        frame.pts, frame.time_base = i * 3600, fractions.Fraction(1, 90_000)
        payloads, timestamp = encoder.encode(frame)
        data = b"".join(vp8_depayload(p) for p in payloads)
        for decoded in decoder.decode(JitterFrame(data=data, timestamp=timestamp)):
            out.append(decoded.to_ndarray(format="rgb24"))
    assert len(out) == len(frames)
    return out


def marked(key: WatermarkKey, image: np.ndarray, grant: str | None = GRANT) -> np.ndarray:
    return Watermark.make(key, grant, image.shape[0]).apply(image.copy())


# ---------------------------------------------------------------------------- the key


def test_key_is_private_stable_and_required_for_detection(tmp_path):
    folder = key_dir(tmp_path)
    key = WatermarkKey.load(folder)
    file = folder / KEY_FILE
    assert stat.S_IMODE(file.stat().st_mode) == 0o600
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    again = WatermarkKey.load(folder, create=False)
    assert again.stream("x", 64) == key.stream("x", 64) and again.key_id == key.key_id
    assert file.read_bytes().hex() not in repr(key)
    os.chmod(file, 0o644)
    with pytest.raises(KeyPermissionError, match="chmod 600"):
        WatermarkKey.load(folder)
    with pytest.raises(KeyFileError, match="no watermark key"):
        WatermarkKey.load(tmp_path / "elsewhere", create=False)
    assert not (tmp_path / "elsewhere").exists(), "detection never creates a key"


def test_payload_and_options_refuse_bad_input():
    assert payload_of(None) == SYNTHETIC
    assert payload_of(" 0123ABCD-0000 ") == "0123abcd0000"
    for bad in ("", "synthetic"):
        with pytest.raises(ValueError, match="not a grant id"):
            payload_of(bad)
    with pytest.raises(ValueError, match="strength"):
        WatermarkOptions(strength=20)


# ---------------------------------------------------------------------------- invisible, cheap


def test_invisible_psnr_at_least_38_db(key, clip, photo):
    mark = Watermark.make(key, GRANT, SIZE)
    for name, images in {"synthetic face": clip[::10], "astronaut": [photo]}.items():
        values = [psnr(image, mark.apply(image.copy())) for image in images]
        print(f"PSNR {name}: min {min(values):.2f} dB")
        assert min(values) >= 38.0
    # Only the luma moves: the same value is added to R, G and B.
    delta = mark.apply(clip[0].copy()).astype(int) - clip[0]
    unclipped = (clip[0] > 20).all(axis=2) & (clip[0] < 235).all(axis=2)
    assert (delta[unclipped][:, 0] == delta[unclipped][:, 2]).all()
    assert np.abs(delta).max() <= 20


def test_stamp_labels_and_marks_a_copy_in_one_cheap_step(key, clip):
    stamp = FrameStamp(AiLabel(SIZE), Watermark.make(key, GRANT, SIZE))
    frame = clip[3]
    original = frame.copy()
    out = stamp.apply(frame)
    np.testing.assert_array_equal(frame, original)  # the generator's image is untouched
    assert detect(key, out, [GRANT]).grant_id == GRANT
    rows, cols = stamp.label.box()
    assert (out[rows, cols].max(axis=2) > 200).sum() > 50, "the visible label is there too"

    def per_frame_ms(fn) -> float:
        times = []
        for _ in range(300):
            start = time.perf_counter()
            fn(frame)
            times.append(time.perf_counter() - start)
        return 1000 * float(np.median(times))

    watermark_only = per_frame_ms(lambda f: stamp.watermark.apply(f.copy()))
    label_only = per_frame_ms(stamp.label.apply)
    both = per_frame_ms(stamp.apply)
    made = time.perf_counter()
    Watermark.make(key, uuid.uuid4().hex, SIZE)
    make_ms = 1000 * (time.perf_counter() - made)
    print(
        f"per {SIZE}² frame: label {label_only:.3f} ms, label + watermark {both:.3f} ms, "
        f"copy + watermark {watermark_only:.3f} ms; pattern made once in {make_ms:.1f} ms"
    )
    assert both < 4.0, "at 25 fps a frame has 40 ms; the marks must take a sliver of it"


# ---------------------------------------------------------------------------- robustness


def test_survives_png_jpeg75_and_half_size(key, clip, photo, others):
    candidates = [*others, GRANT]
    for name, image in {"synthetic face": clip[20], "astronaut": photo}.items():
        stamped = marked(key, image)
        for how, changed in {
            "PNG": encode(stamped, "PNG"),
            "JPEG q75": encode(stamped, "JPEG", quality=75),
            "50 % and back": half_and_back(stamped),
            "50 % + JPEG q75": encode(half_and_back(stamped), "JPEG", quality=75),
            "screenshot at 300 px": cv2.resize(stamped, (300, 300), interpolation=cv2.INTER_AREA),
        }.items():
            found = detect(key, changed, candidates)
            print(f"{name:15s} {how:22s} score {found.score:5.1f} (needed {found.needed:.1f})")
            assert found.found and found.grant_id == GRANT and not found.synthetic, (name, how)


def test_survives_aiortc_vp8_at_its_default_bitrate(key, clip, others):
    mark = Watermark.make(key, GRANT, SIZE)
    sent = [mark.apply(f.copy()) for f in clip]
    decoded = vp8_round_trip(sent)
    candidates = [*others, GRANT]
    results = [detect(key, image, candidates) for image in decoded]
    scores = [round(r.score, 1) for r in results]
    print(f"VP8 500 kbps, score per frame: {scores}")
    print(f"VP8 PSNR vs. the marked frames: {np.mean(list(map(psnr, decoded, sent))):.1f} dB")
    # The encoder starts coarse (a cheap keyframe, then refines the still parts): from
    # half a second on, every frame a browser shows names the grant.
    late = results[12:]
    assert all(r.found and r.grant_id == GRANT for r in late), scores
    assert min(r.score for r in late) > 1.5 * threshold(len(candidates) + 1)
    assert not any(r.found and r.grant_id != GRANT for r in results), "never another grant"
    unmarked = [detect(key, image, candidates) for image in vp8_round_trip(clip[:15])]
    assert not any(r.found for r in unmarked)


def test_what_it_does_not_survive(key, photo, others):
    """Cropping, rotating and mirroring break the mark: the detector then finds nothing
    (it never names a wrong grant). A resize that keeps the square, JPEG and VP8 do not."""
    stamped = marked(key, photo)
    n = SIZE
    centre = (n / 2, n / 2)
    broken = {
        "crop 10 %": stamped[n // 10 :, n // 10 :],
        "rotate 5°": cv2.warpAffine(stamped, cv2.getRotationMatrix2D(centre, 5, 1), (n, n)),
        "mirror": stamped[:, ::-1],
    }
    for how, image in broken.items():
        found = detect(key, np.ascontiguousarray(image), [*others, GRANT])
        print(f"{how}: score {found.score:.1f}")
        assert not found.found, how


# ---------------------------------------------------------------------------- no false marks


def unmarked_images(clip: list[np.ndarray]) -> list[np.ndarray]:
    """200+ images no key of ours marked: photos, crops, noise, drawings, our own frames."""
    from skimage import data
    from skimage.util import img_as_ubyte

    names = [
        "astronaut", "binary_blobs", "brick", "camera", "cat", "cell", "checkerboard",
        "chelsea", "clock", "coffee", "coins", "colorwheel", "grass", "gravel", "horse",
        "hubble_deep_field", "immunohistochemistry", "logo", "microaneurysms", "moon",
        "page", "retina", "rocket", "shepp_logan_phantom", "text",
    ]  # fmt: skip
    rng = np.random.default_rng(11)
    images = []
    for name in names:
        image = img_as_ubyte(getattr(data, name)())
        images.append(image)
        h, w = image.shape[:2]
        for _ in range(6):  # random square crops, as a detector would get screenshots
            side = int(rng.integers(min(h, w) // 3, min(h, w) + 1))
            y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
            images.append(image[y : y + side, x : x + side])
    for sigma in (2, 8, 30, 80):  # noise: white, and smoothed
        for _ in range(4):
            noise = rng.normal(128, sigma, (SIZE, SIZE, 3))
            images.append(np.clip(noise, 0, 255).astype(np.uint8))
            images.append(np.clip(cv2.GaussianBlur(noise, (0, 0), 3), 0, 255).astype(np.uint8))
    images += [np.full((SIZE, SIZE, 3), v, np.uint8) for v in (0, 128, 255)]
    images += [make_demo_avatar(SIZE, seed=s).image for s in (1, 2)]  # other drawn faces
    images += clip[::5]
    return images


def test_no_false_match_on_200_unmarked_images(key, clip, others):
    images = unmarked_images(clip)
    foreign = WatermarkKey(bytes(range(32)))  # another server's key
    images += [marked(foreign, f) for f in clip[::10]]
    images += [marked(foreign, f, None) for f in clip[1::10]]
    assert len(images) >= 200
    candidates = [*others, GRANT]
    results = [detect(key, np.ascontiguousarray(image), candidates) for image in images]
    best = max(r.score for r in results)
    presence = max(r.presence for r in results)
    print(
        f"{len(images)} unmarked images: best score {best:.2f} (a match needs "
        f"{threshold(len(candidates) + 1):.2f}); highest presence z {presence:.2f}"
    )
    assert not any(r.found for r in results)
    assert not any(r.present for r in results)
    assert best < threshold(len(candidates) + 1) - 2  # far from it, not just under it


def test_another_grant_is_never_taken_for_this_one(key, clip, others):
    """A frame of a grant missing from the store (purged) matches none of the others,
    but the detector still sees that this key marked it."""
    stamped = marked(key, clip[5], others[0])
    found = detect(key, stamped, others[1:] + [GRANT])
    assert not found.found and found.grant_id is None
    assert found.present and found.presence > PRESENCE_THRESHOLD
    assert detect(key, stamped, others).grant_id == others[0]


def test_synthetic_frames_say_synthetic(key, clip, others):
    found = detect(key, encode(marked(key, clip[7], None), "JPEG", quality=75), others)
    assert found.found and found.synthetic and found.grant_id is None
    assert found.score > 20 and found.score <= np.sqrt(CHIPS) + 1e-9


# ---------------------------------------------------------------------------- the command


@pytest.mark.slow
def test_cli_detect_watermark(tmp_path, clip):
    from consent.keys import SigningKeys
    from runtime import components
    from runtime.config import load_config
    from tests.consent.conftest import World
    from tests.runtime.test_cli import run

    data = tmp_path / "data"
    store = components.consent_gate(load_config(data_dir=data)).store
    issued = World(store, SigningKeys.load(key_dir(data))).grant()
    store.close()
    key = WatermarkKey.load(key_dir(data))
    Image.fromarray(marked(key, clip[9], issued.id)).save(tmp_path / "frame.png")
    Image.fromarray(marked(key, clip[9], None)).save(tmp_path / "synthetic.jpg", quality=75)
    Image.fromarray(clip[9]).save(tmp_path / "plain.png")
    env = {"LIKENESS_DATA_DIR": str(data)}

    result = run("consent", "detect-watermark", str(tmp_path / "frame.png"), env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(issued.id) and "confidence 1.0" in result.stdout
    result = run("consent", "detect-watermark", "--json", str(tmp_path / "synthetic.jpg"), env=env)
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["synthetic"] and answer["grant_id"] is None and answer["confidence"] > 0.999
    result = run("consent", "detect-watermark", str(tmp_path / "plain.png"), env=env)
    assert result.returncode == 1
    assert result.stdout.strip() == "no likeness watermark found"
    result = run("consent", "detect-watermark", str(tmp_path / "missing.png"), env=env)
    assert result.returncode == 2 and "missing.png" in result.stderr
    assert read_image(tmp_path / "frame.png").shape == (SIZE, SIZE, 3)
