"""The embedded procedural generator: landmarks + mesh warp + mouth shapes from speech.

It animates any approved face (or the synthetic demo face) in real time on one CPU
core, with no model weights. What it draws is labelled as what it is by the caller.

Modules, one concern each: ``visemes`` (phonemes and words to mouth shapes),
``audio_mouth`` (mouth motion from the audio), ``rig`` (shapes to landmark moves),
``warp`` (the piecewise-affine mesh warp), ``mouth`` (the mouth interior),
``motion`` (blinks, breathing, head sway), ``renderer`` (one frame), ``mouth_segment``
(audio and frame accounting of a speech segment), ``generator`` (the streaming
generator and ``render_clip``), ``bench`` (a one-core benchmark).
"""

from avatar.procedural.generator import ProceduralGenerator, ProceduralOptions, render_clip
from avatar.procedural.mouth_segment import frame_count, frame_times
from avatar.procedural.visemes import MouthShape

__all__ = [
    "MouthShape",
    "ProceduralGenerator",
    "ProceduralOptions",
    "frame_count",
    "frame_times",
    "render_clip",
]
