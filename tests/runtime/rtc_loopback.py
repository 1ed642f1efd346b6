"""Two real aiortc peers connected in one event loop, for media and session tests.

The client plays the browser: it makes the offer (its own tracks sendrecv, recvonly
transceivers for what the server sends), the server answers and adds its tracks to
the offered transceivers, as a live session does. Offer and answer are exchanged
in-process; ICE runs over the host's interfaces with no STUN server::

    async with rtc_loopback(server_tracks=[audio_out, video_out]) as link:
        heard, seen = link.client_received
        frame = await heard.recv()
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass

from aiortc import RTCConfiguration, RTCDataChannel, RTCPeerConnection, RTCRtpTransceiver
from aiortc.mediastreams import MediaStreamTrack

CONNECT_TIMEOUT = 15.0  # seconds for ICE and DTLS on loopback


@dataclass
class Loopback:
    """A connected pair of peers.

    Attributes:
        client: the browser's side (it made the offer).
        server: the runtime's side.
        client_received: the client's remote tracks, in the order of ``server_tracks``.
        server_received: the server's remote tracks, in the order of ``client_tracks``.
        client_channel: the client's "events" data channel (``events=True``), open.
        server_channel: the same channel on the server's side.
    """

    client: RTCPeerConnection
    server: RTCPeerConnection
    client_received: list[MediaStreamTrack]
    server_received: list[MediaStreamTrack]
    client_channel: RTCDataChannel | None = None
    server_channel: RTCDataChannel | None = None


def _remote_tracks(
    senders: RTCPeerConnection, receivers: RTCPeerConnection, tracks: Sequence[MediaStreamTrack]
) -> list[MediaStreamTrack]:
    """The remote track on ``receivers`` of each local track of ``senders`` (matched by mid)."""
    by_mid: dict[str | None, RTCRtpTransceiver] = {t.mid: t for t in receivers.getTransceivers()}
    sent = {id(t.sender.track): t.mid for t in senders.getTransceivers()}
    return [by_mid[sent[id(track)]].receiver.track for track in tracks]


async def _connected(pc: RTCPeerConnection) -> None:
    while pc.connectionState != "connected":
        if pc.connectionState in ("failed", "closed"):
            raise ConnectionError(f"peer connection {pc.connectionState}")
        await asyncio.sleep(0.02)


@asynccontextmanager
async def rtc_loopback(
    server_tracks: Sequence[MediaStreamTrack] = (),
    client_tracks: Sequence[MediaStreamTrack] = (),
    events: bool = False,
) -> AsyncIterator[Loopback]:
    """Connect a client and a server peer; close both on exit.

    Args:
        server_tracks: what the server sends (e.g. ``AudioOut``, ``VideoOut``); at most
            one per kind beyond the client's own tracks of that kind.
        client_tracks: what the client sends (e.g. a microphone track).
        events: the client also opens an "events" data channel, as the pages do.

    Yields:
        The connected :class:`Loopback`. Read the received tracks with ``recv()``; they
        end (``MediaStreamError``) when the context exits.
    """
    config = RTCConfiguration(iceServers=[])
    client, server = RTCPeerConnection(config), RTCPeerConnection(config)
    try:
        for track in client_tracks:
            client.addTrack(track)
        client_kinds = [t.kind for t in client_tracks]
        for track in server_tracks:
            if track.kind in client_kinds:
                client_kinds.remove(track.kind)  # rides on the client's sendrecv transceiver
            else:
                client.addTransceiver(track.kind, direction="recvonly")
        channel = client.createDataChannel("events") if events else None
        server_channels: list[RTCDataChannel] = []
        server.on("datachannel", server_channels.append)
        await client.setLocalDescription(await client.createOffer())
        await server.setRemoteDescription(client.localDescription)
        for track in server_tracks:
            server.addTrack(track)
        await server.setLocalDescription(await server.createAnswer())
        await client.setRemoteDescription(server.localDescription)
        async with asyncio.timeout(CONNECT_TIMEOUT):
            await asyncio.gather(_connected(client), _connected(server))
            while channel is not None:
                if channel.readyState == "open" and server_channels:
                    break
                await asyncio.sleep(0.02)
        yield Loopback(
            client=client,
            server=server,
            client_received=_remote_tracks(server, client, server_tracks),
            server_received=_remote_tracks(client, server, client_tracks),
            client_channel=channel,
            server_channel=server_channels[0] if server_channels else None,
        )
    finally:
        await client.close()
        await server.close()
