"""Settings: file, environment, defaults; secrets only from the environment."""

from __future__ import annotations

from pathlib import Path

import pytest

from digest.config import load_settings
from digest.errors import ConfigError


def test_defaults_without_a_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = load_settings(env={"XDG_DATA_HOME": str(tmp_path / "xdg")})
    assert settings.data_dir == tmp_path / "xdg" / "digest"
    assert settings.db_url == f"sqlite:///{tmp_path / 'xdg' / 'digest' / 'digest.sqlite3'}"
    assert settings.smtp.security == "starttls" and settings.smtp.validate_certs


def test_paths_are_relative_to_the_file_and_data_dir_option_wins(tmp_path):
    path = tmp_path / "conf" / "digest.toml"
    path.parent.mkdir()
    path.write_text('data_dir = "d"\nprofiles_dir = "p"\n[smtp]\nport = 2525\n')
    settings = load_settings(path, env={})
    assert settings.data_dir == tmp_path / "conf" / "d"
    assert settings.profiles_dir == tmp_path / "conf" / "p"
    assert settings.smtp.port == 2525
    assert load_settings(path, data_dir=Path("/x"), env={}).data_dir == Path("/x")


def test_password_comes_from_the_environment_and_is_never_shown(tmp_path):
    path = tmp_path / "digest.toml"
    path.write_text("[smtp]\nusername = 'me'\n")
    settings = load_settings(path, env={"DIGEST_SMTP_PASSWORD": "hunter2"})
    assert settings.smtp.password.get_secret_value() == "hunter2"
    assert "hunter2" not in repr(settings) and "hunter2" not in str(settings.model_dump())


def test_password_in_the_file_is_refused(tmp_path):
    path = tmp_path / "digest.toml"
    path.write_text("[smtp]\npassword = 'hunter2'\n")
    with pytest.raises(ConfigError, match="DIGEST_SMTP_PASSWORD") as caught:
        load_settings(path, env={})
    assert "hunter2" not in str(caught.value)


@pytest.mark.parametrize(("text", "expected"), [
    ("[smtp\n", "not valid TOML"),
    ("[smtp]\nport = 'x'\n", "smtp.port: Input should be a valid integer"),
    ("[smtp]\nsecurity = 'ssl'\n", "smtp.security"),
    ("colour = 'red'\n", "colour: Extra inputs are not permitted"),
])
def test_bad_config_names_the_key(tmp_path, text, expected):
    path = tmp_path / "digest.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=expected):
        load_settings(path, env={})
