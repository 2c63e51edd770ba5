"""The room observer: turns LiveKit's answers into room views the lifecycle decides on.

``ListRooms`` answers for every room at once (``Room.num_participants`` excludes agents); presence
needs ``ListParticipants`` and is asked only where it matters.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

from loqua_operator.lifecycle import RoomView, room_view_from_participants
from loqua_operator.livekit_gateway import LiveKitGateway


class RoomObserver:
    def __init__(self, gateway: LiveKitGateway) -> None:
        self._gw = gateway

    async def rooms(self) -> tuple[dict[str, Any], float]:
        """Every room LiveKit has: one ``ListRooms``; with the time it was asked."""
        seen = time.monotonic()
        return {r.name: r for r in await self._gw.list_rooms()}, seen

    async def room(self, room: str) -> RoomView:
        """One room, fresh, with presence: ``ListRooms`` for it, then ``ListParticipants`` if it exists.

        Learners are counted from the participants, not ``Room.num_participants``: livekit-server
        updates that count seconds after a join, and a decision to delete must not rest on it.
        """
        seen = time.monotonic()
        found = await self._gw.list_rooms([room])
        if not found:
            return RoomView(exists=False, seen=seen)
        return room_view_from_participants(found[0].sid, await self._gw.list_participants(room), seen)

    async def with_presence(
        self, rooms: Mapping[str, Any], need: Iterable[str], seen: float
    ) -> tuple[dict[str, RoomView], int]:
        """Views of ``rooms``; ``need`` also get presence. Returns (views, failed presence lookups)."""
        from loqua_operator.livekit_gateway import LiveKitError

        views = {name: RoomView(True, r.sid, int(r.num_participants), None, seen) for name, r in rooms.items()}
        failures = 0
        for name in need:
            if name not in rooms:
                continue
            try:
                views[name] = room_view_from_participants(rooms[name].sid, await self._gw.list_participants(name), seen)
            except LiveKitError:
                failures += 1
        return views, failures
