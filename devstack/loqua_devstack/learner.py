"""A scripted learner: a real LiveKit participant (the `livekit` rtc SDK) joining with attributes."""

from __future__ import annotations

import uuid

from livekit import api, rtc


class Learner:
    """Joins a room the way the Loqua web app's users do: identity plus ``user_id`` etc. attributes."""

    def __init__(self, env: dict[str, str], room: str, user_id: str | None = None, **attributes: str) -> None:
        self.env = env
        self.room_name = room
        self.identity = f"learner-{uuid.uuid4().hex[:8]}"
        self.attributes = {"user_id": user_id or self.identity, **attributes}
        self.room: rtc.Room | None = None

    def token(self) -> str:
        return (
            api.AccessToken(self.env["LIVEKIT_API_KEY"], self.env["LIVEKIT_API_SECRET"])
            .with_identity(self.identity)
            .with_name(self.attributes.get("display_name", self.identity))
            .with_attributes(self.attributes)
            .with_grants(api.VideoGrants(room_join=True, room=self.room_name))
            .to_jwt()
        )

    async def join(self) -> Learner:
        self.room = rtc.Room()
        await self.room.connect(self.env["LIVEKIT_URL"], self.token())
        return self

    async def leave(self) -> None:
        if self.room is not None:
            await self.room.disconnect()
            self.room = None

    async def refresh(self) -> None:
        """A page refresh: leave, then join again with the same identity and attributes."""
        await self.leave()
        await self.join()

    def agents_in_room(self) -> list[rtc.RemoteParticipant]:
        if self.room is None:
            return []
        return [
            p for p in self.room.remote_participants.values() if p.kind == rtc.ParticipantKind.PARTICIPANT_KIND_AGENT
        ]
