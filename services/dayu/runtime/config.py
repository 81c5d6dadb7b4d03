"""Component configuration: a YAML file, overridden by DAYU_* environment variables, overridden by
command-line flags. Nested keys use a double underscore in the environment:

    server:
      shutdown_grace_s: 30        # DAYU_SERVER__SHUTDOWN_GRACE_S=5 overrides it
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, TypeVar

import pydantic
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from dayu.runtime.auth import AuthSettings
from dayu.runtime.errors import InvalidArgument, from_validation_error
from dayu.runtime.tls import TlsSettings
from dayu.runtime.tracing import TracingSettings

MIB = 1024 * 1024


class StrictModel(pydantic.BaseModel):
    """A configuration section: unknown keys are errors, not silently ignored."""

    model_config = pydantic.ConfigDict(extra="forbid")


class ServerSettings(StrictModel):
    listen: str = pydantic.Field("127.0.0.1:0", description="HOST:PORT to listen on; port 0 picks a free one")
    max_message_bytes: int = pydantic.Field(64 * MIB, gt=0, description="largest message sent or received")
    shutdown_grace_s: float = pydantic.Field(30.0, ge=0, description="how long SIGTERM waits for in-flight calls")
    health_listen: str = pydantic.Field(
        "", description="HOST:PORT of a plaintext server of grpc.health.v1 only (kubelet probes); empty: none"
    )


class MetricsSettings(StrictModel):
    listen: str = pydantic.Field(
        "",
        pattern=r"^$|^\S+:\d+$",
        description="HOST:PORT of a plaintext HTTP server of Prometheus metrics at /metrics "
        "(dayu.runtime.metrics); port 0 picks a free one; empty: none",
    )


class LogSettings(StrictModel):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["json", "console"] = "json"


class ComponentSettings(BaseSettings):
    """What every component reads; each component adds its own section."""

    model_config = SettingsConfigDict(
        env_prefix="DAYU_", env_nested_delimiter="__", extra="forbid", nested_model_default_partial_update=True
    )

    node: str = pydantic.Field("cloud", min_length=1, description="logical node this component runs on")
    server: ServerSettings = ServerSettings()
    log: LogSettings = LogSettings()
    metrics: MetricsSettings = MetricsSettings()
    tracing: TracingSettings = TracingSettings()
    tls: TlsSettings = TlsSettings()
    auth: AuthSettings = AuthSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Flags (init) beat the environment, which beats the YAML file.
        return (init_settings, env_settings, YamlConfigSettingsSource(settings_cls))


S = TypeVar("S", bound=ComponentSettings)


def load_settings(settings_cls: type[S], path: Path | None = None, **flags: Any) -> S:
    """Loads `settings_cls` from the YAML file at `path` (optional), the environment and `flags`.

    Raises InvalidArgument naming the offending key."""
    if path is not None and not path.is_file():
        raise InvalidArgument("--config", f"an existing YAML file, got {str(path)!r}")
    # pydantic-settings reads the YAML path from the class configuration, so bind it to a subclass.
    bound = type(settings_cls.__name__, (settings_cls,), {"model_config": SettingsConfigDict(yaml_file=path)})
    try:
        return bound(**flags)  # type: ignore[no-any-return]
    except pydantic.ValidationError as error:
        raise from_validation_error(error, "config") from None
