"""Token rules, without sockets."""

from __future__ import annotations

import jwt
import pytest

from app.chat.auth import AuthError, authorize, mint, verify

pytestmark = pytest.mark.unit

SECRET = "test-secret-" + "x" * 60
NOW = 1_800_000_000


def test_minted_token_verifies() -> None:
    token = mint("alice", ["lobby", "ops"], 60, SECRET, now=NOW)
    identity = authorize(token, "ops", SECRET, now=NOW + 30)
    assert identity.sub == "alice" and identity.may_join("lobby") and not identity.may_join("x")


def test_star_means_every_room() -> None:
    token = mint("bot", "*", 60, SECRET, now=NOW)
    assert authorize(token, "anything", SECRET, now=NOW).sub == "bot"


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        (None, "missing_token"),
        ("", "missing_token"),
        ("not.a.jwt", "malformed_token"),
        (mint("a", ["lobby"], 60, "another-secret-" + "y" * 60, now=NOW), "bad_signature"),
        (mint("a", ["lobby"], 60, SECRET, now=NOW - 120), "expired_token"),
        (mint("a", ["kitchen"], 60, SECRET, now=NOW), "room_not_allowed"),
        (jwt.encode({"sub": "a", "rooms": ["lobby"]}, SECRET, algorithm="HS256"), "invalid_claims"),
        (jwt.encode({"sub": "a", "rooms": "lobby", "exp": NOW + 60}, SECRET, algorithm="HS256"),
         "invalid_claims"),
        (jwt.encode({"sub": 7, "rooms": ["lobby"], "exp": NOW + 60}, SECRET, algorithm="HS256"),
         "malformed_token"),
        (jwt.encode({"sub": "a", "rooms": ["lobby"], "exp": NOW + 60}, SECRET, algorithm="HS512"),
         "malformed_token"),
        (jwt.encode({"sub": "a", "rooms": ["lobby"], "exp": NOW + 60}, None, algorithm="none"),
         "malformed_token"),
        # Validly signed, but no time a close can be scheduled at (or no number at all).
        *[(jwt.encode({"sub": "a", "rooms": ["lobby"], "exp": exp}, SECRET, "HS256"), "invalid_claims")
          for exp in (float("nan"), float("inf"), 10**400, 253_402_300_800, True, -1, "2030")],
    ],
)
def test_refusals_name_their_reason(token: str | None, reason: str) -> None:
    with pytest.raises(AuthError) as info:
        authorize(token, "lobby", SECRET, now=NOW)
    assert info.value.reason == reason


def claims(**extra: object) -> dict[str, object]:
    return {"sub": "a", "rooms": ["lobby"], "exp": NOW + 600, **extra}


def test_nbf_is_honoured_with_a_minute_of_leeway_for_the_issuers_clock() -> None:
    # PyJWT's default (no leeway) refused a token minted a second fast as malformed_token.
    assert verify(jwt.encode(claims(nbf=NOW + 2), SECRET, "HS256"), SECRET, now=NOW).sub == "a"
    assert verify(jwt.encode(claims(nbf=NOW - 600), SECRET, "HS256"), SECRET, now=NOW).sub == "a"
    with pytest.raises(AuthError, match="token_not_yet_valid"):
        verify(jwt.encode(claims(nbf=NOW + 61), SECRET, "HS256"), SECRET, now=NOW)
    for nbf in (float("nan"), "soon", True, 10**400):
        with pytest.raises(AuthError, match="invalid_claims"):
            verify(jwt.encode(claims(nbf=nbf), SECRET, "HS256"), SECRET, now=NOW)


def test_aud_must_name_the_configured_audience() -> None:
    for aud in ("parley", ["other", "parley"]):
        token = jwt.encode(claims(aud=aud), SECRET, "HS256")
        assert verify(token, SECRET, now=NOW, audience="parley").sub == "a"
    for token in (jwt.encode(claims(aud="other"), SECRET, "HS256"), jwt.encode(claims(), SECRET, "HS256")):
        with pytest.raises(AuthError, match="wrong_audience"):
            verify(token, SECRET, now=NOW, audience="parley")
    # Minted here with the audience: accepted there.
    minted = mint("a", ["lobby"], 60, SECRET, now=NOW, audience="parley")
    assert authorize(minted, "lobby", SECRET, now=NOW, audience="parley").sub == "a"


def test_a_token_for_some_audience_is_refused_where_none_is_configured() -> None:
    # RFC 7519, 4.1.3: a recipient that is not among the token's audiences must refuse it.
    with pytest.raises(AuthError, match="wrong_audience"):
        verify(jwt.encode(claims(aud="billing"), SECRET, "HS256"), SECRET, now=NOW)


def test_a_fractional_exp_far_ahead_is_an_expiry_time() -> None:
    token = jwt.encode({"sub": "a", "rooms": "*", "exp": NOW + 0.5}, SECRET, algorithm="HS256")
    assert verify(token, SECRET, now=NOW).exp == NOW + 0.5
    token = jwt.encode({"sub": "a", "rooms": "*", "exp": 253_402_300_799}, SECRET, algorithm="HS256")
    assert verify(token, SECRET, now=NOW).exp == 253_402_300_799.0


def test_verify_uses_the_real_clock_by_default() -> None:
    with pytest.raises(AuthError, match="expired_token"):
        verify(mint("a", "*", 1, SECRET, now=1_000_000_000), SECRET)
