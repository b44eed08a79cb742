"""The local backend's optional JWT auth (docs/protocol.md §1.3), for testing SDKs' JWT mode.

With ``ServerConfig(pjwt_auth_enabled=True)``, ``POST /api/v1/client/config`` says so,
``POST /api/v1/auth/token`` trades an accepted ``tml-`` key for a JWT, and every other
authenticated route accepts only such a JWT. Tokens are HS256 (HMAC-SHA256) with a random
secret made when the server starts, so they die with the server; `JwtSigner.rotate`
invalidates every issued token at once (clients then get 401 with
``WWW-Authenticate: Bearer error="invalid_token"`` and exchange again).

This makes the protocol testable end to end; it is not an identity system. Claims:
``iss`` ``tinkex-local``, ``sub`` the key's owner (`key_owner`:
``tml:user:local-<32 hex digits of the key's SHA-256>``), ``org_id`` ``local``, ``email``
empty, ``iat``, ``exp`` and a random ``jti``. What a JWT's holder creates belongs to its
``sub``, so a key and the JWTs minted from it own the same things.

Example:
    >>> signer = JwtSigner(lifetime_s=600.0, clock=lambda: 1000.0)
    >>> token = signer.mint("tml-local")
    >>> claims = signer.verify(token)
    >>> claims["exp"] - claims["iat"], claims["org_id"], claims["sub"].startswith("tml:user:")
    (600, 'local', True)
    >>> signer.rotate(); signer.verify(token) is None
    True
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable
from typing import Any

__all__ = ["ISSUER", "JwtSigner", "key_owner"]

ISSUER = "tinkex-local"
_HEADER = {"alg": "HS256", "typ": "JWT"}


def key_owner(key: str) -> str:
    """The owner name of an API key: a hash of it (never the key), stored with what the key
    creates and used as the ``sub`` of the JWTs minted for it.

    Example:
        >>> owner = key_owner("tml-local")
        >>> owner.startswith("tml:user:local-"), len(owner), "tml-local" in owner
        (True, 47, False)
    """
    return "tml:user:local-" + hashlib.sha256(key.encode("utf-8", "replace")).hexdigest()[:32]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class JwtSigner:
    """Mints and verifies the local server's JWTs (HS256, per-process secret).

    Args:
        lifetime_s: Seconds from ``iat`` to ``exp``.
        clock: Unix time (tests pass a fixed one).
    """

    def __init__(self, lifetime_s: float, *, clock: Callable[[], float] = time.time) -> None:
        self.lifetime_s = lifetime_s
        self._clock = clock
        # truly random on purpose (not from the engine's injectable Effects): a predictable
        # secret would let anyone mint tokens
        self._secret = secrets.token_bytes(32)
        self.minted = 0

    def __repr__(self) -> str:
        return f"JwtSigner(lifetime_s={self.lifetime_s}, secret=<redacted>)"

    def rotate(self) -> None:
        """Use a new secret: every token issued so far stops verifying."""
        self._secret = secrets.token_bytes(32)

    def _sign(self, signing_input: str) -> str:
        return _b64(hmac.new(self._secret, signing_input.encode("ascii"),
                             hashlib.sha256).digest())

    def mint(self, credential: str) -> str:
        """A JWT for the holder of `credential` (an accepted key, or a JWT of ours)."""
        claims = self.verify(credential) if credential.startswith("eyJ") else None
        subject = (claims or {}).get("sub") or key_owner(credential)
        now = int(self._clock())
        payload = {"iss": ISSUER, "sub": subject, "org_id": "local", "email": "", "iat": now,
                   "exp": now + max(1, int(self.lifetime_s)), "jti": secrets.token_hex(8)}
        signing_input = (_b64(json.dumps(_HEADER, separators=(",", ":")).encode()) + "."
                         + _b64(json.dumps(payload, separators=(",", ":")).encode()))
        self.minted += 1
        return f"{signing_input}.{self._sign(signing_input)}"

    def verify(self, token: str) -> dict[str, Any] | None:
        """The claims of a token this signer issued and that has not expired; else None."""
        parts = token.split(".")
        if len(parts) != 3:
            return None
        try:
            expected = self._sign(f"{parts[0]}.{parts[1]}").encode("ascii")
            if not hmac.compare_digest(expected, parts[2].encode("utf-8")):
                return None
            claims = json.loads(_unb64(parts[1]))
        except ValueError:  # non-ASCII segments, bad base64, bad JSON
            return None
        if not isinstance(claims, dict):
            return None
        exp = claims.get("exp")
        if not isinstance(exp, int | float) or exp <= self._clock():
            return None
        return claims
