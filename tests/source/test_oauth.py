"""XOAUTH2 / OAUTHBEARER IMAP logins against a Dovecot whose oauth2 passdb asks a token-introspection endpoint."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from syncd import config, log
from syncd.errors import ConfigError, SourceAuthError, SourceError
from syncd.sandbox import SandboxServer
from syncd.settings import Secret
from syncd.source import open_source
from syncd.source.oauth import AccessTokens
from tests.test_settings import SyncdLog
from tests.fixtures.oauth import OAuthProvider, OAuthUser, oauth_dovecot, oauth_provider, oauth_user  # noqa: F401
from tests.test_pipeline import config_file  # noqa: F401 - a fixture: the end-to-end config

MESSAGE = b"From: bob@example.com\r\nTo: me@example.com\r\nSubject: via oauth\r\nMessage-ID: <oa1@x>\r\n\r\nHello.\r\n"


def read_inbox(settings) -> list[bytes]:
    with open_source(settings) as source:
        source.select("INBOX")
        return [m.data for m in source.fetch(source.uids_after(0))]


@pytest.mark.parametrize("auth", ["xoauth2", "oauthbearer"])
def test_login_with_an_access_token_reads_the_mailbox(oauth_user: OAuthUser, auth: str):
    """Both SASL mechanisms log in with an access token got from the refresh token, and the folder reads."""
    oauth_user.imap.append("INBOX", MESSAGE)
    assert read_inbox(oauth_user.settings(auth)) == [MESSAGE]


def test_token_is_reused_until_shortly_before_it_expires(oauth_user: OAuthUser, oauth_provider: OAuthProvider):
    """Later connections reuse the token; one refresh happens a little before expiry, while the old token still works."""
    now = [1000.0]
    tokens = AccessTokens("m", oauth_user.settings().oauth, clock=lambda: now[0])
    before = oauth_provider.refreshes
    first = tokens.token()
    now[0] += 3600 - 301  # the provider's tokens live 3600 s; a refresh is due 300 s before the end
    assert tokens.token() == first and oauth_provider.refreshes == before + 1
    now[0] += 2
    second = tokens.token()
    assert second != first and oauth_provider.refreshes == before + 2
    assert oauth_provider.introspect(first)["active"], "the old token must still be valid when it is replaced"


def test_connections_share_one_token(oauth_user: OAuthUser, oauth_provider: OAuthProvider):
    """Two polls of one mailbox cost one refresh, not two."""
    settings = oauth_user.settings()
    before = oauth_provider.refreshes
    read_inbox(settings)
    read_inbox(settings)
    assert oauth_provider.refreshes == before + 1


def test_revoked_token_is_replaced_on_the_same_login(oauth_user: OAuthUser, oauth_provider: OAuthProvider):
    """When the server refuses a cached token, syncd gets a fresh one and logs in without failing the poll."""
    settings = oauth_user.settings("oauthbearer")
    oauth_user.imap.append("INBOX", MESSAGE)
    read_inbox(settings)
    oauth_provider.revoke_access_tokens()
    before = oauth_provider.refreshes
    assert read_inbox(settings) == [MESSAGE]
    assert oauth_provider.refreshes == before + 1


def write_token(path: Path, token: str) -> None:
    """Replace the file by renaming a new one over it: a new inode, so even a same-length token a moment later shows."""
    tmp = path.with_name(path.name + ".new")
    tmp.write_text(token + "\n")
    os.replace(tmp, path)


def with_token_file(settings, path: Path, token: str):
    """``settings`` whose OAuth refresh token comes from ``path`` (holding ``token``), as ``oauth_refresh_token_file`` gives it."""
    write_token(path, token)
    return replace(settings, oauth=replace(settings.oauth, refresh_token=Secret.from_file(path)))


def test_revoked_refresh_token_replaced_in_its_file_logs_in_at_the_next_poll(oauth_user: OAuthUser,
                                                                            oauth_provider: OAuthProvider, tmp_path: Path):
    """The file's refresh token revoked: the poll fails with invalid_grant; a new token written into the file logs in next poll."""
    oauth_user.imap.append("INBOX", MESSAGE)
    path = tmp_path / "gmail.oauth_refresh_token"
    settings = with_token_file(oauth_user.settings(), path, oauth_user.grant.refresh_token)
    assert read_inbox(settings) == [MESSAGE]
    oauth_provider.revoke_refresh_token(oauth_user.grant.refresh_token)
    oauth_provider.revoke_access_tokens()
    with pytest.raises(SourceAuthError, match="invalid_grant"):
        read_inbox(settings)
    fresh = oauth_provider.reissue(oauth_user.grant)
    write_token(path, fresh)
    assert read_inbox(settings) == [MESSAGE]
    assert oauth_provider.used[-1] == fresh


def test_rotated_refresh_token_is_used_until_the_file_changes(oauth_user: OAuthUser, oauth_provider: OAuthProvider,
                                                              tmp_path: Path):
    """A refresh token the provider rotated (Microsoft) is used for the next refresh; a new one in the file wins over it."""
    grant = oauth_provider.grant(oauth_user.imap.username, rotate=True)
    base = oauth_user.settings()
    oauth = replace(base.oauth, client_id=grant.client_id, client_secret=Secret(grant.client_secret))
    path = tmp_path / "refresh"
    settings = with_token_file(replace(base, oauth=oauth), path, grant.refresh_token)
    now = [1000.0]
    tokens = AccessTokens("m", settings.oauth, clock=lambda: now[0])
    tokens.token()
    assert oauth_provider.used[-1] == grant.refresh_token
    rotated = oauth_provider.refresh_tokens[-1]
    now[0] += 3600
    tokens.token()
    assert oauth_provider.used[-1] == rotated, "the file did not change: the rotated token is the one to use"
    fresh = oauth_provider.reissue(grant)
    write_token(path, fresh)
    now[0] += 3600
    token = tokens.token()
    assert oauth_provider.used[-1] == fresh and oauth_provider.introspect(token)["active"]


def test_refused_refresh_token_is_an_auth_error_naming_the_key(oauth_user: OAuthUser):
    """A wrong refresh token or client secret fails the login with the key to fix, and no secret in the text."""
    base = oauth_user.settings()
    wrong_token = replace(base, oauth=replace(base.oauth, refresh_token=Secret("1//not-a-real-refresh-token")))
    with pytest.raises(SourceAuthError, match="invalid_grant.*oauth_refresh_token") as caught:
        read_inbox(wrong_token)
    assert "not-a-real-refresh-token" not in str(caught.value)
    wrong_client = replace(base, oauth=replace(base.oauth, client_secret=Secret("not-the-client-secret")))
    with pytest.raises(SourceAuthError, match="invalid_client.*oauth_client_secret") as caught:
        read_inbox(wrong_client)
    assert "not-the-client-secret" not in str(caught.value)


def test_unreachable_token_endpoint_is_a_transient_source_error(oauth_user: OAuthUser):
    """With the token endpoint down the poll fails as a connection problem (retried next poll), not as bad credentials."""
    base = oauth_user.settings()
    down = replace(base, name="down", oauth=replace(base.oauth, token_url="http://127.0.0.1:9/token"))
    with pytest.raises(SourceError, match="cannot reach the OAuth token endpoint") as caught:
        read_inbox(down)
    assert not isinstance(caught.value, SourceAuthError)


def oauth_config(config_file: Path, user: OAuthUser, *, secret_line: str) -> Path:
    """The end-to-end config plus a mailboxes.d file for the OAuth mailbox; returns the main file."""
    (config_file.parent / "mailboxes.d").mkdir()
    (config_file.parent / "mailboxes.d" / "gmail.toml").write_text(f"""
[mailbox]
name = "gmail"
host = "{user.imap.host}"
port = {user.imap.port}
security = "none"
username = "{user.imap.username}"
auth = "xoauth2"
oauth_token_url = "{user.provider.url}/token"
oauth_client_id = "{user.grant.client_id}"
oauth_refresh_token_file = "refresh"
{secret_line}
addresses = ["me@example.com"]
""")
    (config_file.parent / "refresh").write_text(user.grant.refresh_token + "\n")
    return config_file


def test_config_reads_oauth_secrets_from_file_env_and_credentials(config_file: Path, oauth_user: OAuthUser):  # noqa: F811
    """oauth_client_secret comes from the key, the environment or a systemd credential; the refresh token from a file."""
    path = oauth_config(config_file, oauth_user, secret_line="")
    secret = oauth_user.grant.client_secret
    by_env = config.load(path, env={"SYNCD_MAILBOX_GMAIL_OAUTH_CLIENT_SECRET": secret}).mailboxes[1]
    assert by_env.auth == "xoauth2" and by_env.oauth.client_secret.reveal() == secret
    assert by_env.oauth.refresh_token.reveal() == oauth_user.grant.refresh_token
    creds = config_file.parent / "creds"
    creds.mkdir()
    (creds / "gmail.oauth_client_secret").write_text(secret)
    by_cred = config.load(path, env={"CREDENTIALS_DIRECTORY": str(creds)}).mailboxes[1]
    assert by_cred.oauth.client_secret.reveal() == secret
    with pytest.raises(ConfigError) as missing:
        config.load(path, env={})
    assert "gmail.toml: mailbox.oauth_client_secret: no value given" in str(missing.value)


def test_config_refuses_oauth_without_token_url_or_over_plain_http(config_file: Path, oauth_user: OAuthUser):  # noqa: F811
    """auth = xoauth2 needs a token URL, and one that is https unless it is on this machine."""
    path = oauth_config(config_file, oauth_user, secret_line='oauth_client_secret = "x"')
    box = path.parent / "mailboxes.d" / "gmail.toml"
    text = box.read_text()
    box.write_text(text.replace(f'oauth_token_url = "{oauth_user.provider.url}/token"\n', ""))
    with pytest.raises(ConfigError, match="oauth_token_url: no value given"):
        config.load(path, env={})
    box.write_text(text.replace(oauth_user.provider.url, "http://oauth.example.com"))
    with pytest.raises(ConfigError, match="plain http would expose the refresh token"):
        config.load(path, env={})


def test_once_syncs_an_oauth_mailbox_without_printing_tokens(config_file: Path, oauth_user: OAuthUser,  # noqa: F811
                                                             oauth_provider: OAuthProvider, crm_server: SandboxServer):
    """`syncd once` (at debug level) on an XOAUTH2 mailbox delivers the mail; no secret or access token is printed."""
    path = oauth_config(config_file, oauth_user, secret_line=f'oauth_client_secret = "{oauth_user.grant.client_secret}"')
    oauth_user.imap.append("INBOX", MESSAGE)
    issued_before = len(oauth_provider.issued)
    done = subprocess.run([sys.executable, "-m", "syncd", "--log-level", "debug", "once", "-c", str(path)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert [e.original_message_id for e in crm_server.received()] == ["oa1@x"]
    new_tokens = oauth_provider.issued[issued_before:]
    assert len(new_tokens) == 1
    for secret in (*new_tokens, oauth_user.grant.client_secret, oauth_user.grant.refresh_token, oauth_user.imap.password):
        assert secret not in done.stdout + done.stderr


# Rotated refresh tokens kept across restarts (syncd/source/oauth.py, OAuthSettings.state_file). A new
# AccessTokens is what a restart gives (tokens_for makes one per process); the subprocess test restarts for real.

def rotating(user: OAuthUser, tmp_path: Path, token_file: Path | None = None, state: Path | None = None):
    """``user``'s settings, its provider now rotating refresh tokens (Microsoft), kept in a state file beside a ledger."""
    user.grant.rotate = True  # the provider holds this very Grant: its refreshes now answer a new refresh token too
    settings = user.settings()
    if token_file is not None:
        settings = with_token_file(settings, token_file, user.grant.refresh_token)
    state = state or tmp_path / f"ledger.sqlite3-{settings.name}.oauth.json"
    return replace(settings, oauth=replace(settings.oauth, state_file=state))


def restart(settings) -> str:
    """An access token from a fresh holder: what a new syncd process does at its first login."""
    return AccessTokens(settings.name, settings.oauth).token()


def stored(settings) -> dict:
    return json.loads(settings.oauth.state_file.read_text())


def test_config_keeps_the_rotated_token_beside_the_ledger(config_file: Path, oauth_user: OAuthUser,  # noqa: F811
                                                           tmp_path: Path):
    """The state file is LEDGER-MAILBOX.oauth.json beside [ledger] path, or beside the default ledger in $STATE_DIRECTORY."""
    path = oauth_config(config_file, oauth_user, secret_line='oauth_client_secret = "x"')
    box = config.load(path, env={}).mailboxes[1]
    assert box.oauth.state_file == config_file.parent / "ledger.sqlite3-gmail.oauth.json"
    config_file.write_text(config_file.read_text().replace('path = "ledger.sqlite3"\n', ""))
    box = config.load(path, env={"STATE_DIRECTORY": str(tmp_path / "state")}).mailboxes[1]
    assert box.oauth.state_file == tmp_path / "state" / "ledger.sqlite3-gmail.oauth.json"


def test_restart_logs_in_with_the_stored_rotated_token(config_file: Path, oauth_user: OAuthUser,  # noqa: F811
                                                       oauth_provider: OAuthProvider, crm_server: SandboxServer):
    """The provider rotates, then the configured token expires: the next `syncd once` process logs in with the stored rotation."""
    oauth_user.grant.rotate = True
    path = oauth_config(config_file, oauth_user, secret_line=f'oauth_client_secret = "{oauth_user.grant.client_secret}"')
    state = config_file.parent / "ledger.sqlite3-gmail.oauth.json"
    once = [sys.executable, "-m", "syncd", "--log-level", "debug", "once", "-c", str(path)]
    oauth_user.imap.append("INBOX", MESSAGE)
    first = subprocess.run(once, capture_output=True, text=True, timeout=60)
    assert first.returncode == 0, first.stderr
    assert oauth_provider.used[-1] == oauth_user.grant.refresh_token
    rotated = oauth_provider.refresh_tokens[-1]
    assert json.loads(state.read_text())["refresh_token"] == rotated
    oauth_provider.revoke_refresh_token(oauth_user.grant.refresh_token)  # the token the operator pasted has expired
    oauth_user.imap.append("INBOX", MESSAGE.replace(b"<oa1@x>", b"<oa2@x>"))
    second = subprocess.run(once, capture_output=True, text=True, timeout=60)
    assert second.returncode == 0, second.stderr
    assert oauth_provider.used[-1] == rotated
    assert [e.original_message_id for e in crm_server.received()] == ["oa1@x", "oa2@x"]
    assert "oauth_refresh_token_restored" in second.stdout + second.stderr
    assert json.loads(state.read_text())["refresh_token"] == oauth_provider.refresh_tokens[-1] != rotated


def test_new_configured_token_voids_the_stored_one(oauth_user: OAuthUser, oauth_provider: OAuthProvider, tmp_path: Path):
    """An operator's new refresh token wins over the stored rotation at the next start, and replaces it in the state file."""
    token_file = tmp_path / "refresh"
    settings = rotating(oauth_user, tmp_path, token_file)
    restart(settings)
    old = stored(settings)
    fresh = oauth_provider.reissue(oauth_user.grant)
    write_token(token_file, fresh)
    with SyncdLog() as logged:
        restart(settings)
    assert oauth_provider.used[-1] == fresh
    assert logged.events("oauth_state_outdated") and not logged.events("oauth_refresh_token_restored")
    new = stored(settings)
    assert new["refresh_token"] == oauth_provider.refresh_tokens[-1] != old["refresh_token"]
    assert new["configured_sha256"] == hashlib.sha256(fresh.encode()).hexdigest() != old["configured_sha256"]


@pytest.mark.parametrize("damage", ["cut short", "not UTF-8", "no token", "a directory"])
def test_unusable_state_file_warns_and_uses_the_configured_token(oauth_user: OAuthUser, oauth_provider: OAuthProvider,
                                                                tmp_path: Path, damage: str):
    """A corrupt or unreadable state file: a warning naming its path, and the configured token logs in."""
    settings = rotating(oauth_user, tmp_path)
    state = settings.oauth.state_file
    if damage == "a directory":
        state.mkdir()
    else:
        state.write_bytes({"cut short": b'{"refresh_token": "1//abc', "not UTF-8": b"\xff\xfe{}",
                           "no token": b'{"configured_sha256": "00"}'}[damage])
    with SyncdLog() as logged:
        token = restart(settings)
    assert oauth_provider.used[-1] == oauth_user.grant.refresh_token and oauth_provider.introspect(token)["active"]
    (warning,) = logged.events("oauth_state_unusable")
    assert warning["level"] == "warning" and warning["path"] == str(state)
    if damage != "a directory":  # replaced by the rotation that refresh brought
        assert stored(settings)["refresh_token"] == oauth_provider.refresh_tokens[-1]


def test_state_file_is_private_and_its_token_is_never_logged(oauth_user: OAuthUser, oauth_provider: OAuthProvider,
                                                             tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The state file is mode 0600 with no temporary file left beside it; the token read back is redacted, and no log line holds a token."""
    settings = rotating(oauth_user, tmp_path)
    with SyncdLog() as logged:
        restart(settings)
        state = settings.oauth.state_file
        assert stat.S_IMODE(state.stat().st_mode) == 0o600
        assert [p.name for p in tmp_path.iterdir()] == [state.name]
        kept = stored(settings)["refresh_token"]
        redacted: list[str] = []
        real = log.redact
        monkeypatch.setattr(log, "redact", lambda *values: (redacted.extend(values), real(*values)))
        restart(settings)
    assert oauth_provider.used[-1] == kept and kept in redacted
    assert logged.events("oauth_refresh_token_restored")
    for secret in (*oauth_provider.refresh_tokens[-3:], *oauth_provider.issued[-2:], oauth_user.grant.client_secret):
        assert secret not in logged.text


def test_refused_stored_token_falls_back_to_the_configured_one(oauth_user: OAuthUser, oauth_provider: OAuthProvider,
                                                               tmp_path: Path):
    """A stored rotation the provider refuses (invalid_grant): one more try with the configured token; both refused: invalid_grant."""
    settings = rotating(oauth_user, tmp_path)
    restart(settings)
    oauth_provider.revoke_refresh_token(stored(settings)["refresh_token"])
    with SyncdLog() as logged:
        token = restart(settings)
    assert oauth_provider.used[-1] == oauth_user.grant.refresh_token and oauth_provider.introspect(token)["active"]
    (refused,) = logged.events("oauth_refresh_token_refused")
    assert refused["level"] == "warning" and refused["token"] == "stored"
    assert [e["token"] for e in logged.events("oauth_refresh_token_used")] == ["configured"]
    assert stored(settings)["refresh_token"] == oauth_provider.refresh_tokens[-1]
    oauth_provider.revoke_refresh_token(stored(settings)["refresh_token"])
    oauth_provider.revoke_refresh_token(oauth_user.grant.refresh_token)
    refreshes = oauth_provider.refreshes
    with pytest.raises(SourceAuthError, match="invalid_grant.*oauth_refresh_token"):
        restart(settings)
    assert oauth_provider.refreshes == refreshes


def test_unwritable_state_file_warns_once_and_keeps_the_rotation_in_memory(oauth_user: OAuthUser,
                                                                          oauth_provider: OAuthProvider, tmp_path: Path):
    """The state file cannot be written (its directory is gone): one warning naming it; the rotated token is still used."""
    settings = rotating(oauth_user, tmp_path, state=tmp_path / "gone" / "ledger.sqlite3-m.oauth.json")
    now = [1000.0]
    tokens = AccessTokens("m", settings.oauth, clock=lambda: now[0])
    with SyncdLog() as logged:
        tokens.token()
        rotated = oauth_provider.refresh_tokens[-1]
        now[0] += 3600
        tokens.token()
    assert oauth_provider.used[-1] == rotated
    (warning,) = logged.events("oauth_state_unwritable")
    assert warning["level"] == "warning" and warning["path"] == str(settings.oauth.state_file)
