"""Simulated subjects for the consent ceremony's tests: bona fide heads in a lit room."""

from consent.ceremony.sim.head import MAX_PITCH_DEG, MAX_YAW_DEG, MOUTH_LEVELS, Head, Scene

__all__ = ["MAX_PITCH_DEG", "MAX_YAW_DEG", "MOUTH_LEVELS", "Head", "Scene"]
