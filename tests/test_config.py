"""Settings: file, environment, defaults; secrets only from the environment."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from digest.config import FeedSettings, load_settings
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


def test_link_secret_in_the_file_is_refused(tmp_path):
    path = tmp_path / "digest.toml"
    path.write_text("[web]\nsecret = 'a-secret-that-is-long-enough-0123456789'\n")
    with pytest.raises(ConfigError, match="DIGEST_SECRET") as caught:
        load_settings(path, env={})
    assert "a-secret" not in str(caught.value)


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


def _load(tmp_path: Path, text: str):
    path = tmp_path / "digest.toml"
    path.write_text(text, encoding="utf-8")
    return load_settings(path, env={})


@pytest.mark.parametrize(("address", "why"), [
    ("not an address", "must not contain spaces"),
    ("nobody", "'nobody' is not an email address"),
])
def test_a_from_address_that_is_not_one_is_refused(tmp_path, address, why):
    with pytest.raises(ConfigError, match=r"mail\.from_address: .*" + why):
        _load(tmp_path, f'[mail]\nfrom_address = "{address}"\n')


def test_a_reply_to_with_a_line_break_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"mail\.reply_to: .*line breaks"):
        _load(tmp_path, '[mail]\nreply_to = "ops@example.org\\nBcc: x@evil.example"\n')


@pytest.mark.parametrize(("text", "expected"), [
    ('smtp = "localhost"\n', r"smtp: expected a table \(\[smtp\]\)"),
    ("data_dir = 5\n", "data_dir: expected a string"),
])
def test_values_of_the_wrong_kind_are_refused(tmp_path, text, expected):
    with pytest.raises(ConfigError, match=expected) as caught:
        _load(tmp_path, text)
    assert str(caught.value).startswith(str(tmp_path / "digest.toml"))


def test_a_clear_text_login_is_refused_unless_the_server_is_on_this_machine(tmp_path):
    table = '[smtp]\nsecurity = "none"\nusername = "me"\nhost = "{}"\n'
    with pytest.raises(ConfigError, match=r"smtp: .*clear text.*use starttls or tls"):
        _load(tmp_path, table.format("mail.example.org"))
    local = _load(tmp_path, table.format("127.0.0.1"))
    assert (local.smtp.host, local.smtp.security, local.smtp.username) == (
        "127.0.0.1", "none", "me")


def test_feeds_may_be_urls_or_tables(tmp_path):
    settings = _load(tmp_path, 'feeds = ["https://example.org/rss", '
                               '{url = "https://example.org/atom", poll_s = 60}]\n')
    assert [(f.url, f.poll_s) for f in settings.feeds] == [
        ("https://example.org/rss", None), ("https://example.org/atom", 60)]
    assert all(isinstance(f, FeedSettings) for f in settings.feeds)


def test_a_feed_that_is_not_http_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"feeds\.0\.url"):
        _load(tmp_path, 'feeds = ["ftp://x"]\n')


def test_the_database_password_comes_from_the_environment_and_is_never_shown(tmp_path):
    path = tmp_path / "digest.toml"
    path.write_text('database_url = "postgresql+psycopg://digest@db.example/digest"\n')
    settings = load_settings(path, env={"DIGEST_DATABASE_PASSWORD": "p@ss/w:rd"})
    assert settings.db_url == "postgresql+psycopg://digest:p%40ss%2Fw%3Ard@db.example/digest"
    assert "p@ss" not in repr(settings) and "p@ss" not in str(settings.model_dump())
    # A whole URL in the environment may carry it; it is kept apart all the same.
    whole = load_settings(path, env={"DIGEST_DATABASE_URL": "postgresql+psycopg://u:s3cret@h/d"})
    assert whole.database_url == "postgresql+psycopg://u@h/d"
    assert whole.db_url == "postgresql+psycopg://u:s3cret@h/d"
    assert "s3cret" not in repr(whole)


@pytest.mark.parametrize("url", ["postgresql+psycopg://digest:hunter2@db/digest",
                                 "postgresql+psycopg://digest@db/digest?password=hunter2",
                                 "postgresql+psycopg://digest@db/digest?sslpassword=hunter2"])
def test_a_database_password_in_the_file_is_refused(tmp_path, url):
    path = tmp_path / "digest.toml"
    path.write_text(f'database_url = "{url}"\n')
    with pytest.raises(ConfigError, match="set DIGEST_DATABASE_PASSWORD") as caught:
        load_settings(path, env={})
    assert "hunter2" not in str(caught.value)


def test_every_kind_of_database_password_is_masked_when_shown():
    from digest.config import redact_url
    from digest.store.store import engine_name

    url = "postgresql+psycopg://u:one@h/d?sslmode=verify-full&sslpassword=two&password=three"
    for shown in (engine_name(url), redact_url(url)):
        assert not {"one", "two", "three"} & set(re.split(r"[:@=&?/]", shown)), shown
        assert "sslmode=verify-full" in shown
