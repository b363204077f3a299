"""One Settings object, validated at start: environment (MARKETCARE_*) over config/marketcare.toml."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    BeforeValidator,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)
from sqlalchemy.engine import make_url

from marketcare.domain.inputs import is_email
from marketcare.domain.schedules import check_timezone
from marketcare.domain.timespec import parse_duration
from marketcare.errors import SettingsError

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
    evidence_dir: Path = Path("var/evidence")
    timezone: str = "Asia/Shanghai"
    horizon: Annotated[timedelta, BeforeValidator(_duration)] = timedelta(days=2)
    sweep_interval_seconds: float = Field(default=10.0, gt=0, le=3600)
    materialise_interval_seconds: float = Field(default=60.0, gt=0, le=86400)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["text", "json"] = "text"
    language: Literal["zh_CN", "en"] = "zh_CN"

    smtp_host: str = "localhost"
    smtp_port: int = Field(default=25, ge=1, le=65535)
    smtp_security: Literal["starttls", "tls", "none"] = "starttls"
    smtp_user: str | None = None
    smtp_password: SecretStr | None = None
    smtp_sender: str = "marketcare@localhost"
    smtp_timeout_seconds: float = Field(default=30.0, gt=0, le=600)
    report_interval_seconds: float = Field(default=30.0, gt=0, le=3600)
    outbox_interval_seconds: float = Field(default=10.0, gt=0, le=3600)
    notify_interval_seconds: float = Field(default=30.0, gt=0, le=3600)
    #: the longest the daemon lets a child process check an edited schedule
    reload_timeout_seconds: float = Field(default=120.0, gt=0, le=3600)
    #: how long the schedule files must stay unchanged before the daemon reads an edit
    reload_settle_seconds: float = Field(default=1.0, ge=0, le=60)

    #: the web app and JSON API that ``marketcare run`` serves
    web_enabled: bool = True
    web_host: str = "127.0.0.1"
    web_port: int = Field(default=8000, ge=0, le=65535)
    #: set when the site is reached over HTTPS (behind a proxy): cookies get ``Secure``
    web_secure_cookies: bool = False
    #: a session ends after this long without use (each use renews it) …
    web_session_days: float = Field(default=14.0, gt=0, le=365)
    #: … and, however much it is used, this long after sign-in
    web_session_max_days: float = Field(default=30.0, gt=0, le=365)
    #: Swagger UI at /api/docs (served from the installed package, never a CDN)
    web_api_docs: bool = True
    #: /metrics off the public listener: a separate "host:port" that serves only metrics …
    metrics_listen: str | None = None
    #: … and/or a bearer token /metrics asks for on the main listener (neither: no /metrics)
    metrics_token: SecretStr | None = None
    #: the largest photo accepted with a completion or a rectification
    upload_max_bytes: int = Field(default=10_000_000, ge=10_000, le=100_000_000)
    #: the largest multipart form in all (an inspection's photos together): its parts are
    #: spooled to disk, so without a bound one request could fill the disk
    upload_form_max_bytes: int = Field(default=100_000_000, ge=1_000_000, le=2_000_000_000)
    #: managers see the ranking of every market (红黑榜) and the bulletin, not only their own
    managers_see_ranking: bool = False
    #: how far a phone's clock is trusted for a checklist sent from the offline queue
    #: (docs/web.md, "The phone's clock"): it counts at the phone's time only when it
    #: arrives within this many hours ...
    phone_time_max_delay_hours: float = Field(default=12.0, ge=0, le=168)
    #: ... and the phone's clock is within this many minutes of the server's when it sends
    phone_clock_max_skew_minutes: float = Field(default=10.0, ge=0, le=1440)

    #: an RFC 3161 time-stamping authority (``http(s)://…``): the daemon has it witness
    #: the audit chain's head daily and with each report (docs/design.md, The audit log)
    tsa_url: str | None = None
    #: the authority's certificate (or its CA's), PEM: answers and stored tokens are
    #: checked against it
    tsa_certificates: Path | None = None
    tsa_timeout_seconds: float = Field(default=30.0, gt=0, le=600)

    @field_validator("smtp_sender")
    @classmethod
    def _sender(cls, value: str) -> str:
        if not is_email(value, local_domain=True):
            raise ValueError(f"{value!r} is not an email address")
        return value

    @model_validator(mode="after")
    def _no_cleartext_password(self) -> Settings:
        if (
            self.smtp_password is not None
            and self.smtp_security == "none"
            and self.smtp_host not in {"localhost", "127.0.0.1", "::1"}
        ):
            raise ValueError(
                "smtp_security is 'none' but a password is set for a remote server; "
                "use starttls or tls so the password is not sent in clear text"
            )
        return self

    @model_validator(mode="after")
    def _form_holds_a_photo(self) -> Settings:
        if self.upload_form_max_bytes <= self.upload_max_bytes:
            raise ValueError(
                f"upload_form_max_bytes ({self.upload_form_max_bytes}) must be larger than "
                f"upload_max_bytes ({self.upload_max_bytes}): a form carries its photo and "
                "its fields"
            )
        return self

    @field_validator("web_host")
    @classmethod
    def _web_host(cls, value: str) -> str:
        # an empty host is every address to the server: a blank line in an environment
        # file would put the app, without TLS, on every network the machine is on
        if not value.strip():
            raise ValueError(
                "empty; write 127.0.0.1 (this machine only, the default) or 0.0.0.0 "
                "(every address, behind a firewall and a TLS proxy)"
            )
        return value.strip()

    @field_validator("metrics_listen")
    @classmethod
    def _listen(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{value!r} is not host:port (e.g. 127.0.0.1:9108)")
        return value

    @field_validator("metrics_token")
    @classmethod
    def _metrics_token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 16:
            raise ValueError("a metrics token needs at least 16 characters")
        return value

    @model_validator(mode="after")
    def _tsa(self) -> Settings:
        if self.tsa_url is not None:
            if not self.tsa_url.startswith(("http://", "https://")):
                raise ValueError(f"tsa_url {self.tsa_url!r} must be an http:// or https:// URL")
            if self.tsa_certificates is None:
                raise ValueError(
                    "tsa_url is set but tsa_certificates is not: name the PEM file of the "
                    "authority's certificate, so its answers can be checked"
                )
        return self

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
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        path = config_file()
        if path is None:  # MARKETCARE_CONFIG set empty: no settings file
            return tuple(sources)
        if path.is_file():
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        elif "MARKETCARE_CONFIG" in os.environ:
            # a file named on purpose and not there (a typo, a volume not mounted) would
            # otherwise leave every setting at its default: another database, say
            raise SettingsError(
                f"setting MARKETCARE_CONFIG names {path}, which is not a file; "
                "fix the path, or set it empty to use no settings file"
            )
        return tuple(sources)

    @property
    def metrics_address(self) -> tuple[str, int] | None:
        """The separate listener of /metrics, if one is set."""
        if self.metrics_listen is None:
            return None
        host, _, port = self.metrics_listen.rpartition(":")
        return host.strip("[]"), int(port)

    @property
    def sqlite_path(self) -> Path | None:
        url = make_url(self.database_url)
        if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
            return Path(url.database)
        return None


def config_file() -> Path | None:
    """The settings file: ``config/marketcare.toml`` (optional), or the one
    ``MARKETCARE_CONFIG`` names (it must exist); None when ``MARKETCARE_CONFIG`` is set
    empty, for no settings file at all."""
    named = os.environ.get("MARKETCARE_CONFIG")
    if named is None:
        return CONFIG_FILE
    return Path(named) if named else None


def load_settings(**overrides: object) -> Settings:
    """Build the settings or fail with a message that names each wrong setting."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except SettingsError:
        raise
    except ValidationError as exc:
        path = config_file()
        lines = []
        for err in exc.errors(include_url=False):
            name = ".".join(str(p) for p in err["loc"]) or "settings"
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown setting"
            where = f" or {name} in {path}" if path is not None else ""
            lines.append(f"setting {name!r} (MARKETCARE_{name.upper()}{where}): {msg}")
        raise SettingsError("\n".join(lines)) from None
    except Exception as exc:  # a malformed TOML file (bad syntax, not UTF-8)
        raise SettingsError(f"cannot read the settings file {config_file()}: {exc}") from None
