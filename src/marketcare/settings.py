"""One Settings object, validated at start: environment (MARKETCARE_*) over config/marketcare.toml."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BeforeValidator, Field, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)
from sqlalchemy.engine import make_url

from .errors import SettingsError
from .schedules import check_timezone
from .timespec import parse_duration

CONFIG_FILE = Path("config/marketcare.toml")


def _duration(value: object) -> timedelta:
    if isinstance(value, timedelta):
        return value
    return parse_duration(value)


class Settings(BaseSettings):
    """Everything an operator can set. Paths are relative to the working directory."""

    model_config = SettingsConfigDict(env_prefix="MARKETCARE_", extra="forbid")

    database_url: str = "sqlite:///var/marketcare.db"
    schedules_dir: Path = Path("schedules")
    exports_dir: Path = Path("exports")
    timezone: str = "Asia/Shanghai"
    horizon: Annotated[timedelta, BeforeValidator(_duration)] = timedelta(days=2)
    sweep_interval_seconds: float = Field(default=10.0, gt=0, le=3600)
    materialise_interval_seconds: float = Field(default=60.0, gt=0, le=86400)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["text", "json"] = "text"

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        return check_timezone(value)

    @field_validator("horizon")
    @classmethod
    def _horizon(cls, value: timedelta) -> timedelta:
        if value < timedelta(hours=1) or value > timedelta(days=366):
            raise ValueError("horizon must be between 1h and 366d")
        return value

    @field_validator("database_url")
    @classmethod
    def _url(cls, value: str) -> str:
        try:
            url = make_url(value)
        except Exception:
            raise ValueError(
                f"{value!r} is not a database URL (e.g. sqlite:///var/marketcare.db or "
                "postgresql+psycopg://user@host/marketcare)"
            ) from None
        if url.get_backend_name() not in {"sqlite", "postgresql"}:
            raise ValueError(
                f"unsupported database {url.get_backend_name()!r}: use sqlite or postgresql"
            )
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        path = Path(os.environ.get("MARKETCARE_CONFIG", CONFIG_FILE))
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if path.is_file():
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)

    @property
    def sqlite_path(self) -> Path | None:
        url = make_url(self.database_url)
        if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
            return Path(url.database)
        return None


def load_settings(**overrides: object) -> Settings:
    """Build the settings or fail with a message that names each wrong setting."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        lines = []
        for err in exc.errors(include_url=False):
            name = ".".join(str(p) for p in err["loc"]) or "settings"
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown setting"
            lines.append(
                f"setting {name!r} (MARKETCARE_{name.upper()} or {name} in {CONFIG_FILE}): {msg}"
            )
        raise SettingsError("\n".join(lines)) from None
    except Exception as exc:  # a malformed TOML file
        raise SettingsError(f"cannot read settings: {exc}") from None
