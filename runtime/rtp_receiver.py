"""Two corrections to aiortc's RTP receiver (aiortc 1.16, ``rtcrtpreceiver.py``,
``jitterbuffer.py``): audio that survives packet loss, and when each frame arrived.

**Loss.** aiortc's audio ``JitterBuffer(capacity=16, prefetch=4)`` hands on at most one
frame per packet that comes in, and waits at a missing packet until 16 newer ones are
in. So every lost packet leaves one more frame waiting for good, and once 15 wait, each
further loss makes it throw away a frame that did arrive: at 5 % random loss it
delivers 73 % of the frames sent (20 % loss: 30 %), and the voice reaches Whisper cut to
pieces. :class:`LowDelayAudio` replaces it on a receiver (:func:`low_delay_audio`): every
Opus packet is a whole frame, so it is handed on as it arrives, in order; a missing one
is skipped at once (the gap shows in the frames' pts, ``runtime.inbound`` fills it), and
one that comes after a newer one is dropped. No frame that arrived is lost, and the
80 ms aiortc held every frame back is gone.

**Arrival.** A frame read from ``track.recv()`` is stamped late by a different amount
per kind: audio 80 ms (the four frames above), video one frame interval (a frame is
complete when the next one's first packet arrives: 40 ms at 25 fps). So at ``recv()``
the voice trails the mouth by ~40 ms that no browser shows (its receivers synchronise
audio and video playout themselves). :class:`ArrivalStamps` records, per frame, when its
first packet came off the wire (``time.monotonic()`` when aiortc hands the unprotected
packet to the receiver, the moment it stamps its own ``arrival_time_ms``), looked up by
the decoded frame's ``pts``.

Both rely on aiortc internals, checked when hooked (:class:`UnsupportedReceiver`):
``RTCRtpReceiver._handle_rtp_packet(packet, arrival_time_ms)``, called by the DTLS
transport for every packet; the receiver's private jitter buffer, whose ``add(packet)``
returns ``(pli, frame or None)``; and its ``TimestampMapper.map``, which turns an RTP
timestamp into the pts the decoded frame carries.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any

from aiortc.jitterbuffer import JitterFrame

from runtime.errors import LikenessError

KEEP = 1024  # frames remembered (~20 s of audio, ~40 s of video); older ones are dropped


class UnsupportedReceiver(LikenessError, TypeError):
    """This aiortc's receiver lacks the internals this module hooks."""


class LowDelayAudio:
    """An audio jitter buffer that hands on every packet as it arrives, in order.

    Same interface as aiortc's ``JitterBuffer.add``. Counters: ``passed`` packets handed
    on, ``skipped`` sequence numbers never seen when a newer packet came, ``late``
    packets dropped because a newer one had already gone.
    """

    def __init__(self) -> None:
        self._last: int | None = None  # sequence number of the last packet handed on
        self.passed = self.skipped = self.late = 0

    def add(self, packet: Any) -> tuple[bool, JitterFrame | None]:
        seq = packet.sequence_number
        if self._last is not None:
            ahead = (seq - self._last) & 0xFFFF  # RFC 3550 sequence numbers wrap at 2^16
            if ahead == 0 or ahead >= 0x8000:  # a duplicate, or older than one handed on
                self.late += 1
                return False, None
            self.skipped += ahead - 1
        self._last = seq
        self.passed += 1
        return False, JitterFrame(data=packet._data, timestamp=packet.timestamp)


def low_delay_audio(receiver: Any) -> LowDelayAudio:
    """Give an aiortc audio receiver a :class:`LowDelayAudio` buffer (before media
    flows: in the peer connection's ``track`` event); returns it, for its counters.

    Raises:
        UnsupportedReceiver: not aiortc 1.16's receiver, or not an audio one.
    """
    name = "_RTCRtpReceiver__jitter_buffer"
    if getattr(receiver, "_RTCRtpReceiver__kind", None) != "audio" or not hasattr(receiver, name):
        raise UnsupportedReceiver(
            "aiortc's RTCRtpReceiver changed, or this is no audio receiver: cannot replace "
            "its jitter buffer (runtime/rtp_receiver.py)"
        )
    buffer = LowDelayAudio()
    setattr(receiver, name, buffer)
    return buffer


class ArrivalStamps:
    """The network arrival time of every frame one aiortc receiver decodes.

    Hook it before media flows (in the peer connection's ``track`` event).

    Args:
        receiver: an ``aiortc.RTCRtpReceiver``.

    Raises:
        UnsupportedReceiver: the receiver is not aiortc 1.16's (see the module doc).
    """

    def __init__(self, receiver: Any) -> None:
        mapper = getattr(receiver, "_RTCRtpReceiver__timestamp_mapper", None)
        handle = getattr(receiver, "_handle_rtp_packet", None)
        if mapper is None or not callable(getattr(mapper, "map", None)) or handle is None:
            raise UnsupportedReceiver(
                "aiortc's RTCRtpReceiver changed: cannot stamp packet arrivals "
                "(runtime/rtp_receiver.py hooks _handle_rtp_packet and the timestamp mapper)"
            )
        self._first: OrderedDict[int, float] = OrderedDict()  # RTP timestamp -> arrival
        self._by_pts: OrderedDict[int, float] = OrderedDict()  # decoded pts -> arrival
        self.packets = 0
        to_pts = mapper.map

        async def on_packet(packet: Any, arrival_time_ms: int) -> None:
            self.packets += 1
            if packet.timestamp not in self._first:
                self._first[packet.timestamp] = time.monotonic()
                _trim(self._first)
            await handle(packet, arrival_time_ms=arrival_time_ms)

        def mapped(timestamp: int) -> int:
            pts = to_pts(timestamp)
            arrived = self._first.pop(timestamp, None)
            if arrived is not None:
                self._by_pts[pts] = arrived
                _trim(self._by_pts)
            return pts

        receiver._handle_rtp_packet = on_packet
        mapper.map = mapped

    def arrival(self, pts: int | None) -> float | None:
        """When the frame with this ``pts`` arrived (``time.monotonic()`` seconds), or
        None when it is not known (no pts, or remembered no longer)."""
        return None if pts is None else self._by_pts.pop(pts, None)


def _trim(stamps: OrderedDict[int, float]) -> None:
    while len(stamps) > KEEP:
        stamps.popitem(last=False)
