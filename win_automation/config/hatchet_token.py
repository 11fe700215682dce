"""The Hatchet token, checked in the project's terms before the SDK ever sees it.

A Hatchet API token is a JWT whose claims carry `sub` (the tenant id), `server_url` (REST API) and
`grpc_broadcast_address` (the engine's gRPC address). The SDK raises a pydantic traceback for a
missing or malformed one; `token_claims` turns each problem into a one-line ConfigError (exit 2)
that never shows the token itself.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Literal

from win_automation import jsontext
from win_automation.config.schema import Config
from win_automation.errors import ConfigError

Engine = Literal["local", "hatchet"]
TOKEN_SOURCE = "hatchet.token (environment HATCHET_CLIENT_TOKEN)"
_CLAIMS = ("sub", "server_url", "grpc_broadcast_address")
_YEAR_10000 = 253402300800  # an `exp` at or past it (or negative) is not a time: ignored, as none


@dataclass(frozen=True)
class TokenClaims:
    tenant_id: str
    server_url: str
    grpc_broadcast_address: str
    expires_at: float | None = None  # the `exp` claim (seconds since the epoch), when present


def token_claims(config: Config) -> TokenClaims:
    """The claims of the configured token; ConfigError naming the problem when there is none or
    it is not a Hatchet JWT."""
    secret = config.hatchet.token
    if secret is None or not secret.get_secret_value().strip():
        raise ConfigError(
            f"{TOKEN_SOURCE} is not set: create one with `hatchet-admin token create` (see the README's"
            " Hatchet section); job commands run on the local engine without it"
        )
    token = secret.get_secret_value().strip()
    parts = token.split(".")
    if len(parts) != 3 or not token.startswith("ey"):
        raise ConfigError(f"{TOKEN_SOURCE} is not a JWT (expected three dot-separated base64 parts)")
    try:
        payload = base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4))
        claims = jsontext.loads(payload.decode("utf-8"))  # deep nesting: a ValueError too
    except (binascii.Error, ValueError):
        raise ConfigError(f"{TOKEN_SOURCE} is not a JWT: its claims are not base64 JSON") from None
    if not isinstance(claims, dict):
        raise ConfigError(f"{TOKEN_SOURCE} is not a Hatchet token: its claims are not a JSON object")
    missing = [name for name in _CLAIMS if not isinstance(claims.get(name), str) or not claims[name]]
    if missing:
        raise ConfigError(f"{TOKEN_SOURCE} is not a Hatchet token: its claims lack {', '.join(missing)}")
    exp = claims.get("exp")
    expires = (
        float(exp)
        if isinstance(exp, int | float) and not isinstance(exp, bool) and 0 <= exp < _YEAR_10000
        else None
    )
    return TokenClaims(claims["sub"], claims["server_url"], claims["grpc_broadcast_address"], expires)
