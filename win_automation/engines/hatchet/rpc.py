"""The engine's RPCs the CLI's job commands and the worker's start-up make themselves, with
`hatchet.request_timeout` as their deadline, and the translation of their failures, once:
UNAVAILABLE -> ConnectError, UNAUTHENTICATED -> AuthError, NOT_FOUND -> NotFoundError, a
deadline passed -> ConnectError, a refusal (a size or rate limit, a bad request) -> the error it
names.

It imports only the SDK's config, connection and gRPC contracts, never `hatchet_sdk` itself (see
win_automation.engines.hatchet: its package start-up is deferred), so a job command on Hatchet
(`run --engine hatchet`, `jobs list`, `jobs cancel`) does not pay for the SDK's REST client.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc
from hatchet_sdk.config import ClientConfig, ClientTLSConfig, TenacityConfig
from hatchet_sdk.connection import new_conn
from hatchet_sdk.contracts.dispatcher_pb2 import GetVersionRequest
from hatchet_sdk.contracts.dispatcher_pb2_grpc import DispatcherStub
from hatchet_sdk.contracts.v1.workflows_pb2_grpc import AdminServiceStub
from hatchet_sdk.utils.api_auth import create_authorization_header

from win_automation.config import Config
from win_automation.config.hatchet_token import token_claims
from win_automation.errors import AuthError, ConfigError, ConnectError, NotFoundError, WinAutomationError
from win_automation.versions import MIN_HATCHET_ENGINE

MIN_ENGINE_VERSION = MIN_HATCHET_ENGINE  # see win_automation.versions


def client_config(config: Config, cls: type[ClientConfig] = ClientConfig, **extra: Any) -> ClientConfig:
    """The SDK's config from ours (`cls` and `extra` let the worker use its subclass)."""
    token_claims(config)  # ConfigError before the SDK sees a bad token
    assert config.hatchet.token is not None
    host = config.hatchet.host_port.rpartition(":")[0]
    return cls(
        token=config.hatchet.token.get_secret_value().strip(),
        host_port=config.hatchet.host_port,
        namespace=config.hatchet.namespace,
        tls_config=ClientTLSConfig(strategy=config.hatchet.tls_strategy, server_name=host),
        tenacity=TenacityConfig(max_attempts=3),
        disable_log_capture=True,
        **extra,
    )


_REFUSALS = (
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.UNIMPLEMENTED,
)


def translate(exc: grpc.RpcError, what: str, config: Config) -> WinAutomationError:
    code = exc.code() if hasattr(exc, "code") else None
    detail = exc.details() if hasattr(exc, "details") else str(exc)
    where = f"Hatchet at {config.hatchet.host_port}"
    if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
        return AuthError(f"{what}: {where} refused the token ({code.name}: {detail})")
    if code == grpc.StatusCode.NOT_FOUND:
        return NotFoundError(f"{what}: {where}: {detail}")
    if code in _REFUSALS:  # it answered: no: a message over a size limit, a rate limit, a bad request
        return WinAutomationError(f"{what}: {where} refused it ({code.name}: {detail})")
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        timeout = config.hatchet.request_timeout
        return ConnectError(f"{what}: {where} gave no answer within {timeout:g}s (paused or overloaded?)")
    return ConnectError(f"{what}: {where} is not reachable ({code.name if code else 'error'}: {detail})")


def check_engine_version(config: Config) -> str:
    """The engine's version (Dispatcher/GetVersion); ConfigError when it is too old for the SDK,
    ConnectError/AuthError when the engine cannot be reached or refuses the token."""
    sdk_config = client_config(config)
    stub = DispatcherStub(new_conn(sdk_config, False))
    try:
        response = stub.GetVersion(  # type: ignore[attr-defined]
            GetVersionRequest(),
            metadata=create_authorization_header(sdk_config.token),
            timeout=config.hatchet.request_timeout,
        )
        version = str(response.version)
    except grpc.RpcError as exc:
        if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
            version = ""
        else:
            raise translate(exc, "checking the engine version", config) from exc
    parts = version.lstrip("v").split("-", 1)[0].split(".")
    numbers = tuple(int(p) for p in parts) if len(parts) == 3 and all(p.isdigit() for p in parts) else ()
    if numbers < MIN_ENGINE_VERSION:
        wanted = "v" + ".".join(map(str, MIN_ENGINE_VERSION))
        raise ConfigError(
            f"the Hatchet engine at {config.hatchet.host_port} is {version or 'older than v0.78'}; "
            f"hatchet-sdk 1.43 needs {wanted} or newer: upgrade hatchet-lite (README, Hatchet)"
        )
    return version


def register_workflows(config: Config, compiled: Sequence[Any]) -> None:
    """Register each compiled workflow (PutWorkflow), with `hatchet.request_timeout` as the
    deadline of each. The SDK's worker registers them again as it starts, the same versions (no
    change on the engine), but with no deadline: an engine that took the connection and then
    answered nothing held `win-automation worker` for good after "worker starting"."""
    sdk_config = client_config(config)
    channel = new_conn(sdk_config, False)
    stub = AdminServiceStub(channel)
    try:
        for workflow in compiled:
            try:
                stub.PutWorkflow(
                    workflow.to_proto(),
                    metadata=create_authorization_header(sdk_config.token),
                    timeout=config.hatchet.request_timeout,
                )
            except grpc.RpcError as exc:
                raise translate(exc, f"registering workflow {workflow.name}", config) from exc
    finally:
        channel.close()
