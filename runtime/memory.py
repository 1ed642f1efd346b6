"""A server that runs all day gives back the memory it freed (glibc malloc).

The server's work runs on many threads (asyncio's executor, aiortc's encoders, Whisper,
Piper, llama.cpp). glibc gives each thread that allocates its own arena, up to eight per
core, and an arena keeps the pages of blocks freed inside it: resident memory climbs for
the first turns of a session and stays there, although the heap is free. Two remedies:

- :func:`limit_arenas` (``server.malloc_arenas``): fewer arenas, shared by the threads;
  set once at start-up, before the model threads exist;
- :func:`release` (``server.release_memory_s``): ``malloc_trim(0)`` now and then, which
  returns every arena's free pages to the system (a few ms).

Neither exists outside glibc (musl, macOS): they then do nothing and say so. Measured
together (2 arenas, a trim every 30 s, the defaults) in a 4-minute soak on 2 cores: the
server's RSS 1.41 -> 1.19 GB, its growth after the first minute 2.9 % -> 0.1 %, turn
latency unchanged.

Python's own collector is the other pause of a long-running process: a full (oldest
generation) collection walks every container object, and torch's import alone leaves
about 180,000 of them: 110 ms of a held event loop each time, at moments nobody chose
(measured on 2 cores; 0.7 ms once they are frozen). :func:`freeze_heap` moves what
exists after start-up out of the collector's reach; the server calls it once warmed up.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import logging
from functools import cache

log = logging.getLogger(__name__)
M_ARENA_MAX = -8  # glibc's mallopt parameter number (malloc.h)


@cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.mallopt, libc.malloc_trim  # noqa: B018 - glibc only: AttributeError elsewhere
    except (OSError, AttributeError):
        return None
    return libc


def limit_arenas(arenas: int) -> bool:
    """Let malloc use at most ``arenas`` arenas (0 keeps glibc's default). Call before
    threads start; returns whether the setting took."""
    if arenas <= 0:
        return False
    libc = _libc()
    if libc is None:
        log.info("malloc arenas left as they are: not glibc")
        return False
    return bool(libc.mallopt(M_ARENA_MAX, int(arenas)))


def release() -> bool:
    """Give the free pages of every malloc arena back to the system; whether any were."""
    libc = _libc()
    return bool(libc.malloc_trim(0)) if libc is not None else False


async def release_every(seconds: float) -> None:
    """:func:`release` every ``seconds``, off the event loop, until cancelled."""
    while True:
        await asyncio.sleep(seconds)
        await asyncio.to_thread(release)


def freeze_heap() -> int:
    """Collect once, then move every object that survived into the collector's permanent
    generation (``gc.freeze``), so later full collections walk only newer objects.

    For what exists after start-up (modules, models, caches) and stays for the process's
    life; cyclic garbage made of frozen objects is never collected, so call it at a quiet
    point, not in a loop over short-lived work. Returns how many objects are frozen.
    """
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
