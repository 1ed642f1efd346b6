"""The microphone under packet loss: every frame that arrives is heard, lost ones are
filled, and pauses keep their length (runtime/rtp_receiver.py, runtime/inbound.py).

Found in tests/net: at 5 % loss on the way up, Whisper heard "Oh, you're the Greek
color." for "Hello! What is your favourite colour?" and turns lost a third of their
audio. The cause was aiortc's audio jitter buffer, which at that loss throws away a
quarter of the frames that did arrive (below: the same loss pattern through both).
"""

from __future__ import annotations

import asyncio
import random

import numpy as np
import pytest
from aiortc.jitterbuffer import JitterBuffer
from aiortc.rtp import RtpPacket

from runtime.inbound import RATE, InboundStats, conceal, inbound_audio
from runtime.rtp_receiver import LowDelayAudio, UnsupportedReceiver, low_delay_audio
from tests.runtime.rtc_loopback import rtc_loopback
from tests.runtime.test_media import ToneMic

LOSS = 0.05


def _packets(n: int, seed: int, first_seq: int = 0) -> list[RtpPacket]:
    """Opus-like packets (one 20 ms frame each) that survive ``LOSS``, in order."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        if rng.random() < LOSS:
            continue
        packet = RtpPacket(payload_type=111, sequence_number=(first_seq + i) & 0xFFFF)
        packet.timestamp = (i * 960) & 0xFFFFFFFF
        packet._data = bytes([i & 0xFF])
        out.append(packet)
    return out


def _through(buffer, packets: list[RtpPacket]) -> list[int]:
    return [f.timestamp for p in packets if (f := buffer.add(p)[1]) is not None]


@pytest.mark.parametrize("seed", range(5))
def test_every_packet_that_arrived_is_handed_on_where_aiortc_drops_a_quarter(seed):
    packets = _packets(1000, seed, first_seq=65_000)  # wraps past 65535 on the way
    ours = _through(LowDelayAudio(), packets)
    aiortc = _through(JitterBuffer(capacity=16, prefetch=4), packets)
    assert ours == [p.timestamp for p in packets], "every arrived frame, in order, once"
    print(f"seed {seed}: {len(packets)} arrived; aiortc handed on {len(aiortc)}")
    # aiortc 1.16 over 20 seeds at 5 % loss: 73 % of the frames sent (this is the cause).
    assert len(aiortc) < 0.85 * len(packets)


def test_late_and_repeated_packets_are_dropped_and_counted():
    a, b, c = _packets(3, seed=99)  # no loss in the first three with this seed
    buffer = LowDelayAudio()
    assert _through(buffer, [a, c, b, c]) == [a.timestamp, c.timestamp]
    assert (buffer.passed, buffer.skipped, buffer.late) == (2, 1, 2)


def test_only_an_aiortc_audio_receiver_gets_the_buffer():
    with pytest.raises(UnsupportedReceiver, match="cannot replace its jitter buffer"):
        low_delay_audio(object())


def test_concealment_repeats_the_last_frame_fading_then_silence():
    last = np.ones(960, np.float32)
    out = conceal(last, 5 * 960)
    assert np.allclose(out[:960], 0.5) and np.allclose(out[960:1920], 0.25)
    assert np.allclose(out[1920:2880], 0.125) and not out[2880:].any()
    assert len(conceal(last, 100)) == 100


async def _heard_under_loss(low_delay: bool, seconds: float = 3.0):
    """A live loopback peer pair; 5 % of the microphone's packets dropped (seeded) as
    they reach the server's receiver. Returns the chunks inbound_audio yielded, its
    stats and the packets dropped."""
    rng = random.Random(7)
    dropped = [0]
    stats = InboundStats()
    async with rtc_loopback(client_tracks=[ToneMic(440)]) as link:
        (mic,) = link.server_received
        receiver = next(r for r in link.server.getReceivers() if r.track is mic)
        if low_delay:
            low_delay_audio(receiver)
        handle = receiver._handle_rtp_packet

        async def lossy(packet, arrival_time_ms):
            if rng.random() < LOSS:
                dropped[0] += 1
                return None
            return await handle(packet, arrival_time_ms=arrival_time_ms)

        receiver._handle_rtp_packet = lossy
        chunks = []
        stream = inbound_audio(mic, stats=stats)
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        while loop.time() < end:
            chunks.append(await anext(stream))
        await stream.aclose()
    return chunks, stats, dropped[0]


async def test_a_lossy_microphone_is_heard_whole_with_the_losses_filled():
    chunks, stats, dropped = await _heard_under_loss(low_delay=True)
    pts = np.array([c.pts for c in chunks])
    lengths = np.array([len(c.pcm) for c in chunks]) / RATE
    total = lengths.sum()
    print(f"{dropped} packets lost, {stats.concealed_s:.2f} s filled of {total:.2f} s")
    assert dropped >= 5, "the loss was real"
    # Gapless: each chunk starts where the last ended, so pauses keep their length.
    assert np.allclose(pts[1:], pts[:-1] + lengths[:-1], atol=1e-6)
    # Every lost 20 ms frame filled, nothing else (one frame's slack at the ends).
    assert abs(stats.concealed_s - 0.02 * dropped) <= 0.021, (stats.concealed_s, dropped)
    assert stats.dropped == 0


async def test_aiortc_s_own_buffer_loses_many_more_frames_than_the_network():
    ours, our_stats, our_loss = await _heard_under_loss(low_delay=True)
    theirs, their_stats, their_loss = await _heard_under_loss(low_delay=False)
    print(
        f"frames heard: ours {our_stats.frames} ({our_loss} lost on the way), "
        f"aiortc's {their_stats.frames} ({their_loss} lost on the way)"
    )
    # Same seeded loss, same 3 s: ~150 frames sent, 7 lost on the way. aiortc's buffer
    # hands on far fewer: it drops arrived frames once 15 wait (5 runs: ours 144,
    # aiortc's 103, every time).
    assert their_stats.frames < our_stats.frames - 2 * their_loss
