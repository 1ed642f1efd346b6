"""Samplers of the neural generator: step logic only, no weights.

- :mod:`avatar.samplers.flow_matching`: Euler flow-matching samplers, the teacher with
  two-weight classifier-free guidance and the few-step distilled student.
- :mod:`avatar.samplers.chunks`: the chunk schedule with per-chunk seeded noise; one-shot
  (:func:`generate_motion`) and streaming (:class:`MotionStream`) generation that agree
  bit for bit.
"""

from avatar.samplers.chunks import (
    ChunkLayout,
    MotionStream,
    chunk_noise,
    chunk_seed,
    generate_motion,
    sample_chunk,
)
from avatar.samplers.flow_matching import (
    FlowMatchingStudent,
    FlowMatchingTeacher,
    StudentOptions,
    TeacherOptions,
    condition_dropout,
    flow_matching_pair,
    time_grid,
)

__all__ = [
    "ChunkLayout",
    "FlowMatchingStudent",
    "FlowMatchingTeacher",
    "MotionStream",
    "StudentOptions",
    "TeacherOptions",
    "chunk_noise",
    "chunk_seed",
    "condition_dropout",
    "flow_matching_pair",
    "generate_motion",
    "sample_chunk",
    "time_grid",
]
