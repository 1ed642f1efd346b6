"""What a generator size costs: parameters and FLOPs per part, counted by running it.

FLOPs are counted with ``torch.utils.flop_counter.FlopCounterMode`` on one forward pass
(matmuls, convolutions and attention; 2 FLOPs per multiply-add; elementwise ops, norms
and ``grid_sample`` are not counted). ``python -m avatar.models.costs`` prints the table
in ``avatar/models/README.md``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from avatar.models.config import GeneratorConfig
from avatar.models.generator import DualBranchGenerator


@dataclass(frozen=True, slots=True)
class ModelCosts:
    """Parameters and GFLOPs of one generator size.

    Attributes:
        params: parameters per part (``appearance``, ``motion_encoder``, ``renderer``,
            ``audio_encoder``, ``motion_dit``).
        appearance_gflops: appearance + motion encoder, once per avatar.
        renderer_gflops: dense motion + warp + decoder, per frame.
        audio_gflops: audio encoder, per chunk (one window).
        dit_gflops: one motion-transformer pass, per chunk.
        chunk_frames: K.
    """

    params: dict[str, int]
    appearance_gflops: float
    renderer_gflops: float
    audio_gflops: float
    dit_gflops: float
    chunk_frames: int

    @property
    def total_params(self) -> int:
        return sum(self.params.values())

    def per_frame_gflops(self, dit_passes: int) -> float:
        """GFLOPs per video frame with ``dit_passes`` transformer passes per chunk
        (student: steps; teacher: steps × guidance passes)."""
        per_chunk = self.audio_gflops + dit_passes * self.dit_gflops
        return self.renderer_gflops + per_chunk / self.chunk_frames


def _gflops(fn) -> float:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() / 1e9


@torch.inference_mode()
def measure_costs(config: GeneratorConfig) -> ModelCosts:
    """Build ``config``'s generator with random weights on the CPU and count its costs."""
    torch.manual_seed(0)
    gen = DualBranchGenerator(config).eval()
    params = {name: sum(p.numel() for p in m.parameters()) for name, m in gen.named_children()}
    s, d = config.image_size, config.dit
    image = torch.zeros(1, 3, s, s)
    appearance = _gflops(lambda: gen.encode_avatar(image))
    avatar = gen.encode_avatar(image)
    codes = avatar.source_code[:, None]
    renderer = _gflops(lambda: gen.render(avatar, codes))
    w = config.window_frames
    mel = torch.zeros(1, w * config.audio.mel_per_frame, config.audio.n_mels)
    audio = _gflops(lambda: gen.audio_encoder(mel))
    tokens = gen.audio_encoder(mel)[:, -(d.context_frames + d.chunk_frames) :]
    x = torch.zeros(1, d.chunk_frames, config.code_dim)
    ctx = torch.zeros(1, d.context_frames, config.code_dim)
    one = torch.ones(1)
    guidance = torch.ones(1, 2) if d.guidance_embed else None
    dit = _gflops(lambda: gen.motion_dit(x, one, ctx, tokens, avatar.id_tokens, one, one, guidance))
    return ModelCosts(params, appearance, renderer, audio, dit, d.chunk_frames)


def _main() -> None:  # pragma: no cover - documentation helper
    print(
        "| size | params (M) | per avatar | renderer/frame | audio/chunk | DiT pass/chunk |"
        " student 2 steps/frame | teacher 32×3/frame |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name in ("tiny", "base", "large"):
        c = measure_costs(getattr(GeneratorConfig, name)())
        print(
            f"| {name} | {c.total_params / 1e6:.2f} | {c.appearance_gflops:.2f} | "
            f"{c.renderer_gflops:.2f} | {c.audio_gflops:.3f} | {c.dit_gflops:.3f} | "
            f"{c.per_frame_gflops(2):.2f} | {c.per_frame_gflops(96):.2f} |"
        )
        print("   params:", {k: round(v / 1e6, 2) for k, v in c.params.items()})


if __name__ == "__main__":  # pragma: no cover
    _main()
