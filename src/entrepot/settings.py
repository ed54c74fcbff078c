"""Settings: one typed object, loaded once from TOML, then ``ENTREPOT_*`` variables, then flags.

Nothing else in Entrepot reads ``os.environ``; unknown keys are an error, so a typo in a
config file is caught at start-up instead of being silently ignored.
"""

from __future__ import annotations

import dataclasses
import ssl
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, get_type_hints

MIB = 1024 * 1024


class SettingsError(ValueError):
    """A configuration value is unknown or of the wrong type."""


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything that can be configured. Field names are the TOML keys."""

    data_dir: Path = Path("entrepot-data")
    host: str = "127.0.0.1"
    port: int = 4880
    #: The URL clients reach this server at (behind a proxy); else the request's Host is used.
    public_url: str | None = None
    workers: int = 1
    #: ``sqlite:///path``; default ``sqlite:///DATA_DIR/entrepot.db``.
    database_url: str | None = None
    #: ``file:///path``; default ``file:///DATA_DIR/blobs``.
    blob_url: str | None = None
    #: Largest request body accepted (a publish carries the tarball base64-encoded).
    max_body_bytes: int = 256 * MIB
    #: Largest unpacked size of a published tarball (gzip bombs stop here).
    max_unpacked_bytes: int = 512 * MIB
    #: Seconds a registry request body may stall before the client is dropped (408).
    body_idle_timeout: int = 60
    #: Let ``npm adduser`` create accounts. Off: accounts come from ``entrepot user add``.
    allow_registration: bool = False
    #: Accept a user's password as Basic credentials on registry requests (legacy clients).
    allow_password_auth: bool = True
    log_level: str = "info"
    access_log: bool = False
    #: Seconds to wait for an upstream registry.
    upstream_timeout: int = 30
    #: A PEM file of CA certificates for upstream registries (else the system's).
    ca_bundle: str | None = None
    #: Upstream credentials by name (a ``[credentials]`` table), for connectors created with
    #: ``--token-env NAME`` / ``--basic-env NAME``; the environment variable NAME also works.
    credentials: Mapping[str, str] = dataclasses.field(default_factory=dict)

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite://{(self.data_dir / 'entrepot.db').resolve()}"

    @property
    def resolved_blob_url(self) -> str:
        return self.blob_url or f"file://{(self.data_dir / 'blobs').resolve()}"


_FIELDS = {f.name: f for f in dataclasses.fields(Settings)}
_TYPES: dict[str, Any] = get_type_hints(Settings)


def _coerce(key: str, value: Any, *, from_text: bool) -> Any:
    kind = _TYPES[key]
    if key == "credentials":
        if from_text or not isinstance(value, Mapping):
            raise SettingsError('credentials: expected a table of NAME = "secret"')
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
            raise SettingsError("credentials: every value must be a string")
        return dict(value)
    base = {int: int, bool: bool, str: str, Path: Path}
    for typ in (int, bool, str, Path):
        if kind == typ or kind == typ | None:
            if value is None and kind != typ:
                return None
            if from_text and typ is bool:
                text = str(value).strip().lower()
                if text in {"1", "true", "yes", "on"}:
                    return True
                if text in {"0", "false", "no", "off"}:
                    return False
                raise SettingsError(f"{key}: expected true or false, got {value!r}")
            if from_text and typ is int:
                try:
                    return int(str(value))
                except ValueError:
                    raise SettingsError(f"{key}: expected a whole number, got {value!r}") from None
            if typ is bool and not isinstance(value, bool):
                raise SettingsError(f"{key}: expected true or false, got {value!r}")
            if typ is int and (isinstance(value, bool) or not isinstance(value, int)):
                raise SettingsError(f"{key}: expected a whole number, got {value!r}")
            if typ in (str, Path) and not isinstance(value, str | Path):
                raise SettingsError(f"{key}: expected a string, got {value!r}")
            return base[typ](value)
    raise SettingsError(f"{key}: unsupported setting type")  # pragma: no cover


def load_settings(
    config_file: Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Build the settings: defaults < TOML file < ``ENTREPOT_*`` environment < ``overrides``.

    ``ENTREPOT_CONFIG`` names the TOML file when ``config_file`` is not given. Relative paths
    in the file are relative to the file's folder.
    """
    environ = environ if environ is not None else {}
    values: dict[str, Any] = {}
    if config_file is None and environ.get("ENTREPOT_CONFIG"):
        config_file = Path(environ["ENTREPOT_CONFIG"])
    if config_file is not None:
        try:
            data = tomllib.loads(config_file.read_text(encoding="utf-8"))
        except OSError as exc:
            raise SettingsError(f"cannot read config file {config_file}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise SettingsError(f"{config_file} is not valid TOML: {exc}") from None
        for key, value in data.items():
            if key not in _FIELDS:
                raise SettingsError(f"{config_file}: unknown setting {key!r}")
            values[key] = _coerce(key, value, from_text=False)
        if "data_dir" in values and not values["data_dir"].is_absolute():
            values["data_dir"] = config_file.parent / values["data_dir"]
        if "ca_bundle" in values and not Path(values["ca_bundle"]).is_absolute():
            values["ca_bundle"] = str(config_file.parent / values["ca_bundle"])
    for env_key, value in environ.items():
        if not env_key.startswith("ENTREPOT_") or env_key == "ENTREPOT_CONFIG":
            continue
        key = env_key.removeprefix("ENTREPOT_").lower()
        if key in _FIELDS and key != "credentials":
            values[key] = _coerce(key, value, from_text=True)
    for key, value in (overrides or {}).items():
        if key not in _FIELDS:
            raise SettingsError(f"unknown setting {key!r}")
        if value is not None:
            values[key] = _coerce(key, value, from_text=False)
    settings = Settings(**values)
    if settings.workers < 1:
        raise SettingsError("workers: must be at least 1")
    if settings.public_url is not None and not settings.public_url.startswith(
        ("http://", "https://")
    ):
        raise SettingsError("public_url: must start with http:// or https://")
    if settings.ca_bundle is not None:
        _check_ca_bundle(settings.ca_bundle)
    return settings


def load_ca_bundle(context: ssl.SSLContext, path: str) -> None:
    """Add the CAs of a ``ca_bundle`` to ``context``: a PEM file, or a folder of hashed
    certificates (read as each one is needed)."""
    if Path(path).is_dir():
        context.load_verify_locations(capath=path)
    else:
        context.load_verify_locations(cafile=path)


def _check_ca_bundle(path: str) -> None:
    """Refuse a ``ca_bundle`` the connectors could not load: at start, not at the first
    upstream request over TLS."""
    try:
        load_ca_bundle(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT), path)
    except ssl.SSLError:  # an OSError too: first
        raise SettingsError(f"ca_bundle: {path} holds no PEM certificate") from None
    except OSError as exc:
        raise SettingsError(f"ca_bundle: cannot read {path}: {exc.strerror or exc}") from None
