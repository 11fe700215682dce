"""The Hatchet token checked in the project's terms, and the engine a job command chooses."""

from __future__ import annotations

import base64
import json

import pytest
from fake_hatchet import make_token

from win_automation.config import load_config
from win_automation.config.hatchet_token import token_claims
from win_automation.engines.dispatch import engine_choice
from win_automation.errors import ConfigError, UsageError


def config_with(token: str | None) -> object:
    env = {"HATCHET_CLIENT_TOKEN": token} if token is not None else {}
    return load_config(environ=env).config


def jwt(claims: object) -> str:
    body = base64.urlsafe_b64encode(json.dumps(claims).encode()).decode().rstrip("=")
    return f"eyJhbGciOiJub25lIn0.{body}.sig"


def test_claims_of_a_hatchet_token() -> None:
    claims = token_claims(config_with(make_token("http://h:8888", "h:7077", tenant="t-1")))  # type: ignore[arg-type]
    assert (claims.tenant_id, claims.server_url, claims.grpc_broadcast_address) == (
        "t-1",
        "http://h:8888",
        "h:7077",
    )


@pytest.mark.parametrize(
    ("token", "problem"),
    [
        (None, "is not set"),
        ("not-a-jwt", "is not a JWT (expected three"),
        ("eyJ.!!!notbase64!!!.x", "is not a JWT: its claims are not base64 JSON"),
        (jwt(["a"]), "claims are not a JSON object"),
        (jwt({"sub": "t", "server_url": "http://h"}), "lack grpc_broadcast_address"),
        # nested past the JSON parser's recursion: was a RecursionError traceback
        (
            "eyJhbGciOiJub25lIn0." + base64.urlsafe_b64encode(b"[" * 5000 + b"]" * 5000).decode() + ".s",
            "base64 JSON",
        ),
    ],
)
def test_a_missing_or_malformed_token_is_a_one_line_config_error(token: str | None, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        token_claims(config_with(token))  # type: ignore[arg-type]
    message = str(caught.value)
    assert problem in message and "\n" not in message
    assert "HATCHET_CLIENT_TOKEN" in message
    if token:
        assert token not in message


@pytest.mark.parametrize("exp", [10**400, -1, 1e300, "soon", True])
def test_an_exp_claim_that_is_no_time_counts_as_none(exp: object) -> None:
    """`exp` of 10**400 was an OverflowError traceback from every Hatchet command."""
    claims = {"sub": "t", "server_url": "http://h", "grpc_broadcast_address": "h:7077", "exp": exp}
    assert token_claims(config_with(jwt(claims))).expires_at is None  # type: ignore[arg-type]


def test_engine_choice_defaults_to_hatchet_only_with_a_token() -> None:
    with_token, without = config_with(make_token("http://h", "h:1")), config_with(None)
    assert engine_choice(with_token, None) == "hatchet"  # type: ignore[arg-type]
    assert engine_choice(without, None) == "local"  # type: ignore[arg-type]
    assert engine_choice(with_token, "local") == "local"  # type: ignore[arg-type]
    assert engine_choice(without, "hatchet") == "hatchet"  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="--engine: must be one of local, hatchet, got 'remote'"):
        engine_choice(without, "remote")  # type: ignore[arg-type]
