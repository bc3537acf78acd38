"""Who may join which room: HS256 JWTs with ``sub``, ``rooms`` and ``exp`` (and ``nbf`` and
``aud`` when they carry them). Pure, no I/O."""

from __future__ import annotations

import time
from dataclasses import dataclass

import jwt

from app.protocol import is_encodable

ALGORITHM = "HS256"


class AuthError(Exception):
    """A token was refused; ``reason`` is the metric label and the handshake's error code."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# Tokens expire before the year 10000 (the range JWT libraries and datetimes handle).
EXP_LIMIT = 253_402_300_800
# How far ahead of this server's clock a token's ``nbf`` may be: the issuer's clock may run
# ahead of ours (PyJWT's default of none refused a token minted a second fast).
NBF_LEEWAY = 60.0


@dataclass(frozen=True)
class Identity:
    """A verified token's subject, the rooms it may join (``None``: every room) and when it
    expires (unix seconds): a connection it opened is closed then (PROTOCOL.md, 4001)."""

    sub: str
    rooms: frozenset[str] | None
    exp: float = float("inf")

    def may_join(self, room: str) -> bool:
        return self.rooms is None or room in self.rooms


def verify(token: str | None, secret: str, now: float | None = None, audience: str = "") -> Identity:
    """Check signature, expiry and claims; raise AuthError naming what is wrong.

    ``audience`` (``CHAT_JWT_AUDIENCE``): the ``aud`` a token must name. Without one, a
    token that names any audience is refused, as RFC 7519 (4.1.3) says of a recipient that
    is not among them: it was issued for another service."""
    if not token:
        raise AuthError("missing_token")
    required = ["exp", "sub", "aud"] if audience else ["exp", "sub"]
    try:
        # Expiry and nbf are checked below against ``now`` so tests can pin the clock.
        claims = jwt.decode(
            token,
            secret,
            algorithms=[ALGORITHM],
            audience=audience or None,
            options={"require": required, "verify_exp": False, "verify_iat": False, "verify_nbf": False},
        )
    except jwt.InvalidSignatureError:
        raise AuthError("bad_signature") from None
    except jwt.MissingRequiredClaimError as exc:
        raise AuthError("wrong_audience" if exc.claim == "aud" else "invalid_claims") from None
    except jwt.InvalidAudienceError:
        raise AuthError("wrong_audience") from None
    except jwt.InvalidTokenError:
        raise AuthError("malformed_token") from None
    now = time.time() if now is None else now
    exp = _seconds(claims["exp"])
    if exp <= now:
        raise AuthError("expired_token")
    if "nbf" in claims and _seconds(claims["nbf"]) > now + NBF_LEEWAY:
        raise AuthError("token_not_yet_valid")
    sub, rooms = claims.get("sub"), claims.get("rooms")
    # ``sub`` is put on every message the token sends: it must be sendable (UTF-8) too.
    if not isinstance(sub, str) or not 0 < len(sub) <= 64 or not is_encodable(sub):
        raise AuthError("invalid_claims")
    if rooms == "*":
        return Identity(sub=sub, rooms=None, exp=exp)
    if not isinstance(rooms, list) or not all(isinstance(r, str) for r in rooms):
        raise AuthError("invalid_claims")
    return Identity(sub=sub, rooms=frozenset(rooms), exp=exp)


def _seconds(value: object) -> float:
    """A time claim as a number of seconds the server can schedule a close at, else
    AuthError ``invalid_claims``: PyJWT passes NaN, Infinity and integers of any size (a
    400-digit ``exp`` overflowed a float at the connection's timer, after the handshake: a
    traceback and a dropped socket), and True is an int to Python."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < EXP_LIMIT:
        raise AuthError("invalid_claims")
    return float(value)


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, else None."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def authorize(token: str | None, room: str, secret: str, now: float | None = None,
              audience: str = "") -> Identity:
    """``verify`` plus the room check."""
    identity = verify(token, secret, now, audience)
    if not identity.may_join(room):
        raise AuthError("room_not_allowed")
    return identity


def mint(sub: str, rooms: list[str] | str, ttl: int, secret: str, now: float | None = None,
         audience: str = "") -> str:
    """A token any backend could produce: HS256 over ``sub``, ``rooms``, ``iat``, ``exp``
    (and ``aud``, given an ``audience``)."""
    issued = int(now if now is not None else time.time())
    claims: dict[str, object] = {"sub": sub, "rooms": rooms, "iat": issued, "exp": issued + ttl}
    if audience:
        claims["aud"] = audience
    return jwt.encode(claims, secret, algorithm=ALGORITHM)
