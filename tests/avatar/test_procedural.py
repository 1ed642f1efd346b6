"""The procedural generator on real speech (espeak-ng, made at test time) and the synthetic face.

What is checked: the AvatarGenerator contract (``tests/avatar/contract.py``:
chunk-by-chunk frames, flush, clear_buffer, idle frames, the pts clock), that the mouth
eases shut after a barge-in and follows the speech (correlation with the audio envelope,
closed in silence, visemes for p/a/u/i/f), that only the face region changes when the
head is still (and that head motion is one global transform), blinks, render_clip's
frame count, the benchmark, and a contact sheet PNG to look at (its tiles checked against
their labels: open or closed mouth, shut or open eyes).
"""

from __future__ import annotations

import asyncio
import math
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
import soundfile as sf

from avatar.face.crop import fit_avatar
from avatar.procedural import (
    ProceduralGenerator,
    ProceduralOptions,
    frame_count,
    frame_times,
    render_clip,
)
from avatar.procedural.bench import bench_procedural, speech_like_audio
from avatar.procedural.visemes import VisemeTrack, phoneme_shapes, word_sounds
from avatar.procedural.warp import OUTLINES, FaceMesh, face_region
from avatar.synthetic import make_demo_avatar
from avatar.types import EndOfSegment, VideoFrame
from tests.avatar import contract
from tests.conftest import espeak_wav

REPO = Path(__file__).resolve().parents[2]
# Read at import: the suite's autouse fixture clears LIKENESS_* variables per test.
ARTIFACTS = Path(os.environ.get("LIKENESS_TEST_ARTIFACTS", REPO / "test-artifacts"))
FPS = 25.0
VARIANT = 3  # a second synthetic face: other skin, hair, proportions


@dataclass(frozen=True)
class Speech(contract.Speech):
    timings: tuple = ()
    gap: tuple[float, float] = (0.0, 0.0)  # where a pause is, if any (s)


@pytest.fixture(scope="module")
def avatar():
    return make_demo_avatar(512, seed=0)


@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> Speech:
    """About 3 s of espeak-ng speech, as the espeak-ng program writes it."""
    path = espeak_wav(
        "I would like to hear a story about the sea, please.",
        tmp_path_factory.mktemp("speech") / "story.wav",
    )
    pcm, rate = sf.read(path, dtype="float32")
    return Speech(pcm, rate)


@pytest.fixture(scope="module")
def speech_with_pause() -> Speech:
    """Two espeak sentences with 600 ms of silence between, and their phoneme timings."""
    from voice.tts.espeak import EspeakTTS

    async def sentences():
        return [
            c
            async for c in EspeakTTS.load().synthesize("Hello there, my friend. Look at the moon.")
        ]

    chunks = asyncio.run(sentences())
    assert len(chunks) == 2
    rate = chunks[0].sample_rate
    gap = np.zeros(int(0.6 * rate), np.float32)
    offset = (len(chunks[0].pcm) + len(gap)) / rate
    timings = list(chunks[0].timings)
    for t in chunks[1].timings:
        timings.append(type(t)(t.symbol, t.kind, t.start + offset, t.end + offset))
    pcm = np.concatenate([chunks[0].pcm, gap, chunks[1].pcm])
    return Speech(pcm, rate, tuple(timings), (len(chunks[0].pcm) / rate, offset))


def opening(landmarks: np.ndarray) -> float:
    """Inner-lip gap over the eye distance, from a frame's own landmarks."""
    gap = landmarks[[67, 66, 65], 1] - landmarks[[61, 62, 63], 1]
    return float(max(gap.mean(), 0.0) / eye_distance(landmarks))


def eye_distance(landmarks: np.ndarray) -> float:
    return float(np.linalg.norm(landmarks[42:48].mean(0) - landmarks[36:42].mean(0)))


def eye_openness(landmarks: np.ndarray) -> float:
    lids = landmarks[[41, 40, 47, 46], 1] - landmarks[[37, 38, 43, 44], 1]
    return float(lids.mean() / eye_distance(landmarks))


def rms_envelope(speech: Speech, n_frames: int, fps: float = FPS) -> np.ndarray:
    """RMS of the audio in each frame's interval [i/fps, (i+1)/fps)."""
    out = np.zeros(n_frames)
    for i in range(n_frames):
        a = int(i / fps * speech.sample_rate)
        b = int((i + 1) / fps * speech.sample_rate)
        seg = speech.pcm[a:b]
        out[i] = np.sqrt(np.mean(seg * seg)) if len(seg) else 0.0
    return out


async def stream(gen: ProceduralGenerator, speech: Speech, chunk_s: float = 0.04) -> list:
    """Push ``speech`` in chunks (each with its own timings, relative to it), then flush;
    returns the items up to the EndOfSegment."""
    step = int(chunk_s * speech.sample_rate)
    rate = speech.sample_rate
    for start in range(0, len(speech.pcm), step):
        a, b = start / rate, (start + step) / rate
        timings = [
            type(t)(t.symbol, t.kind, t.start - a, t.end - a)
            for t in speech.timings
            if a <= t.start < b
        ]
        await gen.push_audio(speech.pcm[start : start + step], rate, timings or None)
    await gen.flush()
    items: list = []
    frames = aiter(gen)
    while not items or not isinstance(items[-1], EndOfSegment):
        items.append(await anext(frames))
    return items


# --------------------------------------------------------------------- contract


@pytest.fixture
def backend(avatar) -> contract.Backend:
    return contract.procedural_backend(avatar)


@pytest.mark.parametrize("check", contract.CHECKS, ids=lambda c: c.__name__)
async def test_avatar_contract(backend, speech, check):
    await check(backend, speech)


async def test_the_mouth_eases_shut_after_clear_buffer(backend, speech):
    later = await contract.clear_buffer_returns_to_idle(backend, speech)
    assert later[-1].landmarks.shape == (68, 2)
    assert opening(later[-1].landmarks) < 0.01


def test_options_fail_fast_with_the_field_name():
    with pytest.raises(ValueError, match="ProceduralOptions.fps"):
        ProceduralOptions(fps=0)
    with pytest.raises(ValueError, match="ProceduralOptions.sway"):
        ProceduralOptions(sway=-1)


# ----------------------------------------------------------------------- mouth


@pytest.mark.parametrize("with_timings", [False, True], ids=["audio", "timings"])
async def test_mouth_follows_the_speech(avatar, speech_with_pause, with_timings):
    speech = speech_with_pause
    if not with_timings:
        speech = Speech(speech.pcm, speech.sample_rate)
    gen = ProceduralGenerator.load(avatar)
    items = await stream(gen, speech)
    await gen.aclose()
    frames = [i for i in items if isinstance(i, VideoFrame) and i.speaking]
    assert len(frames) == math.ceil(speech.duration * FPS)
    mouth = np.array([opening(f.landmarks) for f in frames])
    envelope = rms_envelope(speech, len(frames))
    r = float(np.corrcoef(mouth, envelope)[0, 1])
    print(f"pearson r ({'timings' if with_timings else 'audio'}) = {r:.3f}")
    assert r >= 0.5
    gap_start, gap_end = speech_with_pause.gap
    times = np.arange(len(frames)) / FPS
    silent = (times >= gap_start + 0.12) & (times <= gap_end - 0.12)
    assert silent.sum() >= 7  # >= 300 ms of frames well inside the pause
    assert mouth[silent].max() < 0.02
    assert mouth.max() > 0.15  # and it does open while speaking


def test_visemes_from_hand_made_timings(avatar):
    @dataclass(frozen=True)
    class T:
        symbol: str
        kind: str
        start: float
        end: float

    sounds = [("p", 0.2, 0.3), ("ɑː", 0.3, 0.6), ("m", 0.6, 0.7), ("uː", 0.7, 1.0)]
    sounds += [("f", 1.0, 1.12), ("iː", 1.12, 1.4)]
    timings = [T(s, "phoneme", a, b) for s, a, b in sounds]
    rate = 16_000
    t = np.arange(int(1.6 * rate)) / rate
    tone = (0.2 * np.sin(2 * np.pi * 140 * t) * ((t > 0.18) & (t < 1.42))).astype(np.float32)
    opts = ProceduralOptions(sway=0.0, breathing=0.0, blink=False)
    frames = render_clip(avatar, tone, rate, timings, opts)
    rest = frames[0].landmarks

    def at(time_s):
        return frames[round(time_s * FPS)].landmarks

    def width(lm):
        return float(np.linalg.norm(lm[54] - lm[48]))

    assert opening(at(0.24)) < 0.01  # p: lips pressed
    assert opening(at(0.64)) < 0.01  # m
    assert opening(at(0.44)) > 0.18  # ɑ: wide open
    assert opening(at(0.44)) > opening(at(0.84)) > 0.02  # u opens less than ɑ
    assert width(at(0.84)) < 0.85 * width(rest)  # u: rounded
    assert width(at(1.28)) > 1.08 * width(rest)  # i: spread
    assert opening(at(1.56)) < 0.01  # rest after the last sound


def test_viseme_table_reads_ipa_arpabet_and_words():
    assert [s.press for s, _ in phoneme_shapes("m")] == [1.0]
    assert [s.teeth for s, _ in phoneme_shapes("v")] == [1.0]
    assert len(phoneme_shapes("aɪ")) == 2 and phoneme_shapes("ˈaɪ")[0][0].open > 0.9
    assert phoneme_shapes("AA1") == phoneme_shapes("ɑ")
    assert phoneme_shapes("uː")[0][0].round == 1.0
    assert [ipa for ipa, _ in word_sounds("moon")] == ["m", "u", "n"]

    @dataclass(frozen=True)
    class W:
        symbol: str
        kind: str
        start: float
        end: float

    track = VisemeTrack()
    track.add([W("mama", "word", 0.0, 0.8)])
    values = [track.shape_at(x) for x in (0.05, 0.2, 0.45, 0.6, 1.5)]
    assert values[0].press > 0.9 and values[0].open < 0.05  # m
    assert values[1].open > 0.5  # a
    assert values[4].open == 0.0  # silence after the word


# ---------------------------------------------------------------- picture rules


def test_only_the_face_region_changes_when_the_head_is_still(avatar, speech):
    opts = ProceduralOptions(sway=0.0, breathing=0.0, seed=4)
    frames = render_clip(avatar, speech.pcm, speech.sample_rate, None, opts)
    rest_image, rest_lm = fit_avatar(avatar, opts.size)
    x0, y0, x1, y1 = face_region(rest_lm, rest_image.shape[:2])
    outside = np.ones(rest_image.shape[:2], bool)
    outside[y0:y1, x0:x1] = False
    assert outside.mean() > 0.3
    for f in frames:
        assert np.array_equal(f.image[outside], rest_image[outside])
    assert max(np.abs(f.image.astype(int) - rest_image).max() for f in frames) > 60  # it moved


def test_head_motion_is_one_global_transform(avatar, speech):
    still = render_clip(avatar, speech.pcm, speech.sample_rate, None,
                        ProceduralOptions(sway=0.0, breathing=0.0, seed=5))  # fmt: skip
    moving = render_clip(avatar, speech.pcm, speech.sample_rate, None,
                         ProceduralOptions(sway=1.0, breathing=0.0, seed=5))  # fmt: skip
    shifts = []
    for a, b in zip(still[::8], moving[::8], strict=True):
        m, _ = cv2.estimateAffinePartial2D(a.landmarks, b.landmarks)
        shifts.append(np.abs(b.landmarks - a.landmarks).max())
        expected = cv2.warpAffine(a.image, m, (512, 512), flags=cv2.INTER_LINEAR,
                                  borderMode=cv2.BORDER_REFLECT_101)  # fmt: skip
        diff = np.abs(expected.astype(int) - b.image.astype(int))[8:-8, 8:-8]
        assert diff.mean() < 0.6 and np.percentile(diff, 99.5) <= 6
    assert max(shifts) > 1.5  # the head did move


def test_blinks_while_idle(avatar):
    async def idle_frames():
        gen = ProceduralGenerator.load(avatar, ProceduralOptions(seed=11))
        frames = aiter(gen)
        out = [await anext(frames) for _ in range(int(8 * FPS))]
        await gen.aclose()
        return out

    frames = asyncio.run(idle_frames())
    assert all(not f.speaking for f in frames)
    openness = np.array([eye_openness(f.landmarks) for f in frames])
    rest = eye_openness(avatar.landmarks)
    closed = openness < 0.15 * rest
    blinks = int(np.sum(closed[1:] & ~closed[:-1]) + closed[0])
    assert 1 <= blinks <= 5
    assert np.median(openness) > 0.95 * rest
    assert closed.mean() < 0.1


def test_render_clip_frame_count(avatar):
    rate = 16_000
    for seconds in (0.5, 1.0, 1.013, 0.041):
        pcm = speech_like_audio(seconds, rate)
        opts = ProceduralOptions(size=128)
        frames = render_clip(avatar, pcm, rate, None, opts)
        assert len(frames) == math.ceil(len(pcm) / rate * FPS) == frame_count(len(pcm) / rate, FPS)
        np.testing.assert_allclose([f.pts for f in frames], frame_times(len(pcm) / rate, FPS))
        assert all(f.speaking and f.segment == 0 for f in frames)


def test_mesh_keeps_lid_and_lip_outlines_as_edges():
    for seed in (0, 1, 2, 3):
        face = make_demo_avatar(512, seed)
        mesh = FaceMesh.build(face.landmarks, (512, 512))
        edges = {
            tuple(sorted((int(t[i]), int(t[(i + 1) % 3]))))
            for t in mesh.triangles
            for i in range(3)
        }
        helper = 68 + 3
        for outline in OUTLINES:
            for a, b in zip(outline[:-1], outline[1:], strict=True):
                assert tuple(sorted((a, helper))) in edges and tuple(sorted((helper, b))) in edges
                helper += 1


def test_synthetic_faces_are_labelled_and_differ():
    a, b = make_demo_avatar(256, 0), make_demo_avatar(256, VARIANT)
    assert a.synthetic and b.synthetic and a.id != b.id and "synthetic-demo-v1" in a.id
    assert a.image.shape == (256, 256, 3) and a.landmarks.shape == (68, 2)
    assert np.abs(a.image.astype(int) - b.image.astype(int)).mean() > 10
    for face in (a, b):
        lm = face.landmarks
        assert lm[36:48, 1].max() < lm[30, 1] < lm[48:68, 1].min() < lm[8, 1]
        assert (lm >= 0).all() and (lm < 256).all()
    again = make_demo_avatar(256, 0)
    assert np.array_equal(again.image, a.image) and again.id == a.id


def test_bench_reports_speed(avatar):
    result = bench_procedural(avatar, seconds=2.0, options=ProceduralOptions(size=256))
    assert result["frames"] == math.ceil(2.0 * FPS) and result["size"] == 256
    assert result["fps"] > 10 and 0 < result["frame_ms_p50"] <= result["frame_ms_p95"]
    assert 0 < result["first_frame_ms"] < 1000 and result["cpu_use"] > 0


# --------------------------------------------------------------- contact sheet


TILE, BAND = 256, 28  # contact sheet: tile side and label band height, pixels


def _tiles(face, speech: Speech) -> list[tuple[str, VideoFrame]]:
    """The four states of ``face`` the sheet shows, labelled, in column order."""
    frames = render_clip(face, speech.pcm, speech.sample_rate, speech.timings)
    gaps = np.array([opening(f.landmarks) for f in frames])
    closed = frames[int(np.argmin(gaps[5:-5])) + 5]
    open_ = frames[int(np.argmax(gaps))]

    async def idle_frames():
        gen = ProceduralGenerator.load(face, ProceduralOptions(seed=11))
        it = aiter(gen)
        out = [await anext(it) for _ in range(int(8 * FPS))]
        await gen.aclose()
        return out

    idle = asyncio.run(idle_frames())
    eyes = np.array([eye_openness(f.landmarks) for f in idle])
    blink = idle[int(np.argmin(eyes))]
    calm = idle[int(np.argmax(eyes > 0.98 * eyes.max()))]
    return [("closed mouth", closed), ("open mouth", open_), ("mid-blink", blink), ("idle", calm)]


def _cell(text: str, image: np.ndarray) -> np.ndarray:
    """One sheet cell: ``text`` on a white band above ``image`` shrunk to the tile size."""
    cell = np.full((TILE + BAND, TILE, 3), 255, np.uint8)
    cell[BAND:] = cv2.resize(image, (TILE, TILE), interpolation=cv2.INTER_AREA)
    cv2.putText(cell, text, (6, 19), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (20, 20, 20), 1, cv2.LINE_AA)
    return cell


def _luma(image: np.ndarray) -> np.ndarray:
    return image.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)


def _box(image: np.ndarray, points: np.ndarray, margin: int = 3) -> np.ndarray:
    """The pixels of ``image`` in the bounding box of ``points``, grown by ``margin``."""
    x0, y0 = np.floor(points.min(0)).astype(int) - margin
    x1, y1 = np.ceil(points.max(0)).astype(int) + margin
    return image[max(y0, 0) : y1, max(x0, 0) : x1]


def dark_mouth(tile: np.ndarray, marks: np.ndarray) -> float:
    """Share of the mouth box that is dark (luma < 60): the interior of an open mouth;
    ``marks`` are the face's landmarks at rest, in tile pixels."""
    return float(np.mean(_luma(_box(tile, marks[48:68])) < 60))


def white_of_eyes(tile: np.ndarray, marks: np.ndarray) -> float:
    """Share of the eye boxes that is bright (luma > 200): the white of an open eye."""
    boxes = [_box(tile, marks[36:42]), _box(tile, marks[42:48])]
    return float(np.mean(np.concatenate([(_luma(b) > 200).ravel() for b in boxes])))


def test_contact_sheet(speech_with_pause):
    """Two faces in four states, written as a PNG to look at. Read back, each tile is its
    frame under its own label, and shows what the label says: the open mouth's dark
    interior and no dark in the closed one, no white of the eyes mid-blink, open eyes
    and a closed mouth at idle; the two rows show different faces."""
    faces = {seed: make_demo_avatar(512, seed) for seed in (0, VARIANT)}
    rows = [(seed, face, _tiles(face, speech_with_pause)) for seed, face in faces.items()]
    sheet = np.concatenate(
        [
            np.concatenate(
                [_cell(f"seed {seed}: {label}", frame.image) for label, frame in tiles],
                axis=1,
            )
            for seed, _, tiles in rows
        ],
        axis=0,
    )
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / "procedural_contact_sheet.png"
    assert cv2.imwrite(str(path), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
    back = cv2.imread(str(path))
    assert back is not None and back.shape == (2 * (TILE + BAND), 4 * TILE, 3)
    back = cv2.cvtColor(back, cv2.COLOR_BGR2RGB)
    bands, shown = [], []
    for r, (seed, face, tiles) in enumerate(rows):
        marks = face.landmarks * (TILE / face.image.shape[0])
        state = {}
        for c, (label, frame) in enumerate(tiles):
            cell = back[r * (TILE + BAND) : (r + 1) * (TILE + BAND), c * TILE : (c + 1) * TILE]
            expected = _cell(f"seed {seed}: {label}", frame.image)
            assert np.array_equal(cell, expected), f"row {r}, column {c}: seed {seed}, {label}"
            assert (cell[:BAND].max(axis=2) < 100).sum() > 50, "a label on the band"
            bands.append(cell[:BAND])
            state[label] = cell[BAND:]
        mouths = {label: dark_mouth(tile, marks) for label, tile in state.items()}
        whites = {label: white_of_eyes(tile, marks) for label, tile in state.items()}
        assert mouths["open mouth"] > 0.05, mouths
        assert mouths["closed mouth"] < 0.01 and mouths["idle"] < 0.01, mouths
        assert whites["idle"] > 0.02 and whites["closed mouth"] > 0.02, whites
        assert whites["mid-blink"] < 0.2 * whites["idle"], whites
        shown.append(state["idle"])
    assert all(not np.array_equal(a, b) for i, a in enumerate(bands) for b in bands[i + 1 :])
    difference = np.abs(shown[0].astype(np.float32) - shown[1].astype(np.float32)).mean()
    assert difference > 10, f"the two rows show different faces ({difference:.1f})"
