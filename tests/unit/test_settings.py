"""Tests for entrepot.settings: defaults < TOML < ENTREPOT_* environment < overrides."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.e2e.cluster import make_certificate

from entrepot.settings import Settings, SettingsError, load_settings


def write_config(folder: Path, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "entrepot.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults() -> None:
    assert load_settings() == Settings()
    assert load_settings(environ={}) == Settings()


def test_toml_values_are_loaded(tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        'host = "0.0.0.0"\nport = 5000\nallow_registration = true\n'
        'public_url = "https://npm.example.test"\nmax_body_bytes = 1024\n',
    )
    settings = load_settings(config)
    assert settings.host == "0.0.0.0"
    assert settings.port == 5000
    assert settings.allow_registration is True
    assert settings.public_url == "https://npm.example.test"
    assert settings.max_body_bytes == 1024
    assert settings.workers == Settings().workers


def test_environment_beats_toml_and_overrides_beat_both(tmp_path: Path) -> None:
    config = write_config(tmp_path, "port = 1000\nworkers = 2\nhost = 'toml-host'\n")
    env = {"ENTREPOT_PORT": "2000", "ENTREPOT_WORKERS": "3"}
    assert load_settings(config).port == 1000
    both = load_settings(config, env)
    assert (both.port, both.workers, both.host) == (2000, 3, "toml-host")
    final = load_settings(config, env, {"port": 3000})
    assert (final.port, final.workers, final.host) == (3000, 3, "toml-host")


def test_an_override_of_none_keeps_the_lower_layer(tmp_path: Path) -> None:
    config = write_config(tmp_path, "port = 1000\n")
    assert load_settings(config, {}, {"port": None, "public_url": None}).port == 1000


def test_entrepot_config_names_the_file(tmp_path: Path) -> None:
    config = write_config(tmp_path, "port = 1234\n")
    assert load_settings(environ={"ENTREPOT_CONFIG": str(config)}).port == 1234


def test_an_explicit_config_file_wins_over_entrepot_config(tmp_path: Path) -> None:
    named = write_config(tmp_path / "a", "port = 1111\n")
    given = write_config(tmp_path / "b", "port = 2222\n")
    assert load_settings(given, {"ENTREPOT_CONFIG": str(named)}).port == 2222


def test_other_environment_variables_are_not_read() -> None:
    assert load_settings(environ={"PORT": "9", "HOST": "x", "DATA_DIR": "/nowhere"}) == Settings()


def test_unknown_toml_key_is_an_error(tmp_path: Path) -> None:
    config = write_config(tmp_path, "port = 4880\nmax_body_byte = 5\n")
    with pytest.raises(SettingsError, match="unknown setting 'max_body_byte'"):
        load_settings(config)


def test_toml_table_is_an_unknown_key(tmp_path: Path) -> None:
    config = write_config(tmp_path, "[server]\nport = 4880\n")
    with pytest.raises(SettingsError, match="unknown setting 'server'"):
        load_settings(config)


def test_unknown_override_is_an_error() -> None:
    with pytest.raises(SettingsError, match="unknown setting 'prot'"):
        load_settings(overrides={"prot": 1})


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('port = "4880"', "port: expected a whole number"),
        ("port = true", "port: expected a whole number"),
        ("port = 4880.5", "port: expected a whole number"),
        ('allow_registration = "yes"', "allow_registration: expected true or false"),
        ("allow_registration = 1", "allow_registration: expected true or false"),
        ("host = 5", "host: expected a string"),
        ("data_dir = ['a']", "data_dir: expected a string"),
        ("public_url = false", "public_url: expected a string"),
        ("max_body_bytes = {}", "max_body_bytes: expected a whole number"),
    ],
)
def test_bad_types_in_toml(tmp_path: Path, line: str, message: str) -> None:
    config = write_config(tmp_path, line + "\n")
    with pytest.raises(SettingsError, match=message):
        load_settings(config)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1", True),
        ("true", True),
        ("YES", True),
        (" on ", True),
        ("0", False),
        ("false", False),
        ("No", False),
        ("off", False),
    ],
)
def test_booleans_from_the_environment(text: str, value: bool) -> None:
    assert load_settings(environ={"ENTREPOT_ALLOW_REGISTRATION": text}).allow_registration is value


@pytest.mark.parametrize(
    ("key", "text", "message"),
    [
        ("ENTREPOT_ALLOW_REGISTRATION", "maybe", "expected true or false"),
        ("ENTREPOT_ALLOW_PASSWORD_AUTH", "", "expected true or false"),
        ("ENTREPOT_PORT", "eighty", "expected a whole number"),
        ("ENTREPOT_PORT", "80.0", "expected a whole number"),
        ("ENTREPOT_MAX_BODY_BYTES", "1e6", "expected a whole number"),
    ],
)
def test_bad_values_in_the_environment(key: str, text: str, message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        load_settings(environ={key: text})


def test_environment_values_are_converted(tmp_path: Path) -> None:
    settings = load_settings(
        environ={"ENTREPOT_PORT": "0", "ENTREPOT_DATA_DIR": str(tmp_path), "ENTREPOT_HOST": "::1"}
    )
    assert settings.port == 0
    assert settings.data_dir == tmp_path
    assert isinstance(settings.data_dir, Path)
    assert settings.host == "::1"


@pytest.mark.parametrize(("key", "value"), [("port", "5000"), ("allow_registration", 1)])
def test_bad_types_in_overrides(key: str, value: object) -> None:
    with pytest.raises(SettingsError, match=key):
        load_settings(overrides={key: value})


def test_relative_data_dir_is_relative_to_the_config_file(tmp_path: Path) -> None:
    config = write_config(tmp_path / "etc" / "entrepot", 'data_dir = "data"\n')
    assert load_settings(config).data_dir == tmp_path / "etc" / "entrepot" / "data"


def test_relative_data_dir_with_dot_dot_is_relative_to_the_config_file(tmp_path: Path) -> None:
    config = write_config(tmp_path / "etc", 'data_dir = "../var/entrepot"\n')
    resolved = load_settings(config).data_dir.resolve()
    assert resolved == (tmp_path / "var" / "entrepot").resolve()


def test_absolute_data_dir_is_kept(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    config = write_config(tmp_path / "etc", f'data_dir = "{target}"\n')
    assert load_settings(config).data_dir == target


def test_data_dir_from_the_environment_is_not_rebased(tmp_path: Path) -> None:
    config = write_config(tmp_path / "etc", 'data_dir = "data"\n')
    settings = load_settings(config, {"ENTREPOT_DATA_DIR": "relative"})
    assert settings.data_dir == Path("relative")


def test_default_store_urls_follow_the_data_dir(tmp_path: Path) -> None:
    settings = load_settings(overrides={"data_dir": tmp_path})
    assert settings.resolved_database_url == f"sqlite://{tmp_path.resolve()}/entrepot.db"
    assert settings.resolved_blob_url == f"file://{tmp_path.resolve()}/blobs"
    explicit = load_settings(overrides={"database_url": "sqlite:///x.db", "blob_url": "file:///b"})
    assert explicit.resolved_database_url == "sqlite:///x.db"
    assert explicit.resolved_blob_url == "file:///b"


def test_invalid_toml(tmp_path: Path) -> None:
    config = write_config(tmp_path, "port = \n")
    with pytest.raises(SettingsError, match="not valid TOML"):
        load_settings(config)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="cannot read config file"):
        load_settings(tmp_path / "missing.toml")


@pytest.mark.parametrize("url", ["npm.example.test", "ftp://npm.example.test", "//x"])
def test_public_url_must_be_http(url: str) -> None:
    with pytest.raises(SettingsError, match="public_url"):
        load_settings(overrides={"public_url": url})


def test_workers_must_be_at_least_one() -> None:
    with pytest.raises(SettingsError, match="workers"):
        load_settings(environ={"ENTREPOT_WORKERS": "0"})


def test_a_ca_bundle_in_the_config_file_is_relative_to_it_and_checked_at_load(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "etc" / "entrepot"
    cert, _ = make_certificate(tmp_path)
    folder.mkdir(parents=True)
    (folder / "corporate.pem").write_bytes(cert.read_bytes())
    config = write_config(folder, 'ca_bundle = "corporate.pem"\n')
    assert load_settings(config).ca_bundle == str(folder / "corporate.pem")
    assert load_settings(overrides={"ca_bundle": str(tmp_path)}).ca_bundle == str(tmp_path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, r"ca_bundle: cannot read .*missing\.pem: No such file or directory"),
        (b"not a certificate\n", r"ca_bundle: .*bundle\.pem holds no PEM certificate"),
        (b"", r"ca_bundle: .*bundle\.pem holds no PEM certificate"),
    ],
)
def test_a_ca_bundle_the_connectors_could_not_load_is_refused_at_start(
    tmp_path: Path, content: bytes | None, message: str
) -> None:
    path = tmp_path / ("missing.pem" if content is None else "bundle.pem")
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(SettingsError, match=message):
        load_settings(overrides={"ca_bundle": str(path)})
    with pytest.raises(SettingsError, match=message):
        load_settings(environ={"ENTREPOT_CA_BUNDLE": str(path)})
