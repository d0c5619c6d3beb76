"""LiveKit-format access tokens: minted and verified with `livekit-api`.

Several key pairs may be configured (rotation): the token's issuer picks the secret.
"""

from __future__ import annotations

import datetime
import time
from dataclasses import dataclass

import jwt
from livekit import api

from .room_names import check_room_name


LIFETIME_LEEWAY_S = 60  # clocks of the minting and the verifying host may differ


class AuthError(Exception):
    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Principal:
    identity: str
    name: str
    room: str
    room_join: bool
    room_admin: bool
    can_subscribe: bool
    can_publish_data: bool
    issuer: str = ""  # the API key that signed it


class TokenAuthority:
    def __init__(self, keys: dict[str, str], max_ttl_s: float = 7 * 86400):
        assert keys, "at least one API key pair"
        self.keys = dict(keys)
        self.max_ttl_s = max_ttl_s  # a leaked token must not work for years, whatever it says
        self.primary_key = next(iter(self.keys))

    def mint(
        self,
        identity: str,
        *,
        room: str = "",
        name: str | None = None,
        ttl_s: int = 3600,
        admin: bool = False,
        can_subscribe: bool = True,
        can_publish_data: bool = True,
        room_config=None,
    ) -> str:
        if room:
            check_room_name(room)
        grants = api.VideoGrants(
            room_join=bool(room) or None,
            room=room,
            room_admin=admin or None,
            room_list=admin or None,
            room_create=admin or None,
            can_subscribe=can_subscribe,
            can_publish_data=can_publish_data,
        )
        token = (
            api.AccessToken(self.primary_key, self.keys[self.primary_key])
            .with_identity(identity)
            .with_grants(grants)
            .with_ttl(datetime.timedelta(seconds=ttl_s))
        )
        if name:
            token = token.with_name(name)
        if room_config is not None:
            token = token.with_room_config(room_config)
        return token.to_jwt()

    def verify(self, token: str) -> Principal:
        try:
            issuer = jwt.decode(token, options={"verify_signature": False}).get("iss")
        except jwt.PyJWTError:
            raise AuthError(401, "the token is not a JWT") from None
        secret = self.keys.get(issuer) if isinstance(issuer, str) else None
        if secret is None:
            raise AuthError(401, "the token's issuer is not a known API key")
        try:
            claims = api.TokenVerifier(issuer, secret).verify(token)
        except jwt.ExpiredSignatureError:
            raise AuthError(401, "the token has expired") from None
        except jwt.InvalidSignatureError:
            raise AuthError(401, "the token's signature does not match") from None
        except jwt.PyJWTError as exc:
            raise AuthError(401, f"the token is invalid: {exc}") from None
        except Exception as exc:  # malformed grants
            raise AuthError(401, f"the token is invalid: {exc}") from None
        self._check_lifetime(token)
        video = claims.video or api.VideoGrants()
        if not isinstance(video.room or "", str):
            raise AuthError(401, "the token is invalid: video.room is not a string")
        # Grants that open a door must be literally true; ones that default to allowed
        # (LiveKit's canSubscribe, canPublishData) close only when literally false.
        return Principal(
            identity=str(claims.identity or "anonymous"),
            name=str(claims.name or ""),
            room=video.room or "",
            room_join=video.room_join is True,
            room_admin=video.room_admin is True,
            can_subscribe=video.can_subscribe is not False,
            can_publish_data=video.can_publish_data is not False,
            issuer=issuer,
        )

    def _check_lifetime(self, token: str) -> None:
        exp = jwt.decode(token, options={"verify_signature": False}).get("exp")
        if not isinstance(exp, (int, float)) or exp - time.time() > self.max_ttl_s + LIFETIME_LEEWAY_S:
            raise AuthError(401, f"the token lives longer than the {self.max_ttl_s:g} s this agent accepts")

    def for_room(self, token: str, room: str) -> Principal:
        """A token that may join `room`: a room token for it, or an admin token for it or for all rooms."""
        principal = self.verify(token)
        if principal.room_admin and (not principal.room or principal.room == room):
            return principal
        if not principal.room_join:
            raise AuthError(403, "the token does not grant roomJoin")
        if principal.room != room:
            raise AuthError(403, f"the token is for room {principal.room!r}, not {room!r}")
        return principal

    def admin(self, token: str, room: str | None = None) -> Principal:
        """An admin token: roomAdmin, for `room` or for all rooms. A token whose roomAdmin is
        limited to one room (as livekit-api's RoomService sends) opens only that room's calls."""
        principal = self.verify(token)
        if not principal.room_admin:
            raise AuthError(403, "this call needs a token with roomAdmin")
        if principal.room and principal.room != room:
            where = f"room {room!r}" if room is not None else "calls that are not about one room"
            raise AuthError(403, f"the token's roomAdmin is limited to room {principal.room!r}, not {where}")
        return principal
