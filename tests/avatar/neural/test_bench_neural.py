"""``likeness bench avatar --backend neural`` as a real process on a tiny random model:
every field of the JSON is there with sane values; bad options exit 2."""

from __future__ import annotations

import json
import math

import pytest
import torch

from avatar.bench_neural import NeuralBenchError, NeuralBenchOptions, bench_neural, parse_streams
from tests.runtime.test_cli import run

METRICS = (
    "fps_per_stream",
    "realtime_factor",
    "first_chunk_ms",
    "first_chunk_audio_ms",
    "motion_ms_per_chunk",
    "render_ms_per_chunk",
    "render_ms_per_frame",
    "gflops_per_frame",
    "gflops_renderer_per_frame",
    "gflops_motion_per_frame",
    "peak_memory_mb",
    "generator_fps",
)


def check_result(data: dict, streams: list[int], runtime: str, device: str) -> None:
    """Every field present, finite and plausible for a tiny model."""
    config, metrics, scaling = data["config"], data["metrics"], data["scaling"]
    assert config["backend"] == "neural" and config["runtime"] == runtime
    assert config["device"].startswith(device) and config["image_size"] == 64
    assert "random" in config["weights"] and config["streams"] == streams
    for key in METRICS:
        assert isinstance(metrics[key], float) and math.isfinite(metrics[key]), key
        assert metrics[key] > 0, (key, metrics[key])
    # The flop counter's figures for tiny (avatar/models/README.md: 0.05 GFLOPs a frame),
    # split into renderer + motion.
    assert 0.01 < metrics["gflops_per_frame"] < 0.2
    parts = metrics["gflops_renderer_per_frame"] + metrics["gflops_motion_per_frame"]
    assert metrics["gflops_per_frame"] == pytest.approx(parts)
    # The audio a first chunk needs: K + L = 10 frames at 25 fps.
    assert metrics["first_chunk_audio_ms"] == pytest.approx(400.0)
    assert metrics["first_chunk_ms"] < 5000
    assert metrics["render_ms_per_frame"] == pytest.approx(metrics["render_ms_per_chunk"] / 8)
    assert 50 < metrics["peak_memory_mb"] < 8000
    assert [row["streams"] for row in scaling] == streams
    for row in scaling:
        n = row["streams"]
        assert row["chunks"] >= 1 and row["fps_per_stream"] > 0
        assert row["fps_total"] == pytest.approx(n * row["fps_per_stream"])
        assert metrics[f"fps_total_x{n}"] == pytest.approx(row["fps_total"])
        # End to end: log-mel, batching, paste-back into the output frame.
        assert 0 < row["session_fps_per_stream"] == metrics[f"session_fps_per_stream_x{n}"]
    one = scaling[0]
    assert metrics["fps_per_stream"] == pytest.approx(one["fps_per_stream"])
    assert metrics["realtime_factor"] == pytest.approx(one["fps_per_stream"] / 25.0)


@pytest.mark.slow
def test_bench_neural_tiny_writes_every_field(tmp_path):
    out = tmp_path / "bench.json"
    result = run(
        "bench", "avatar", "--backend", "neural", "--size", "tiny", "--device", "cpu",
        "--seconds", "1", "--streams", "1,4", "--json", str(out),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    data = json.loads(out.read_text())
    assert data["bench"] == "avatar" and data["machine"]["cores"] >= 1
    check_result(data, [1, 4], "torch", "cpu")
    assert "batched streams" in result.stdout and "first_chunk_ms" in result.stdout
    assert "random-initialised" in result.stderr


def test_bench_neural_onnx_runtime_in_process():
    options = NeuralBenchOptions("tiny", "onnx", "cpu", streams=(1, 2), seconds=0.5)
    check_result(bench_neural(options), [1, 2], "onnx", "cpu")


def test_bad_options_are_refused_plainly():
    assert parse_streams("8,1,2,2") == (1, 2, 8)
    with pytest.raises(NeuralBenchError, match="1,2,4,8"):
        parse_streams("one,two")
    with pytest.raises(NeuralBenchError, match="size"):
        NeuralBenchOptions(size="huge")
    with pytest.raises(NeuralBenchError, match="runtime"):
        NeuralBenchOptions(runtime="tensorflow")
    result = run("bench", "avatar", "--backend", "neural", "--size", "huge")
    assert result.returncode == 2 and "size must be one of" in result.stderr
    with pytest.raises(NeuralBenchError, match="streams"):
        NeuralBenchOptions(streams=(0,))
    with pytest.raises(NeuralBenchError, match="compile is for the torch runtime"):
        NeuralBenchOptions(runtime="onnx", compile=True)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (the gpu extra)")
@pytest.mark.parametrize("size", ["tiny", "base"])
def test_bench_neural_on_cuda_bf16(size):
    data = bench_neural(NeuralBenchOptions(size=size, device="cuda", streams=(1, 4), seconds=2))
    assert data["config"]["device"].startswith("cuda")
    assert data["config"]["peak_memory"] == "torch.cuda.max_memory_allocated"
    metrics = data["metrics"]
    assert metrics["fps_per_stream"] > 0 and metrics["peak_memory_mb"] > 0
    assert data["scaling"][1]["fps_total"] > 0
