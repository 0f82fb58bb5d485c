"""Configuration: the contract's keys, secrets from files/env/credentials, every problem named with its fix."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from syncd import config
from syncd.errors import ConfigError

GOOD = """
[crm]
data_center = "eu"
client_id = "1000.ABC"
client_secret_file = "secrets/client_secret"
refresh_token = "1000.refresh.token"

[ledger]
path = "state/ledger.sqlite3"

[[mailbox]]
name = "sales"
host = "127.0.0.1"
security = "none"
username = "sales@example.com"
password_file = "secrets/sales"
sent_folders = ["Sent"]
poll_interval = 30
"""


def write(tmp_path: Path, text: str, name: str = "syncd.toml") -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture
def secrets(tmp_path: Path) -> Path:
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "client_secret").write_text("s3cr3t-client\n")
    (tmp_path / "secrets" / "sales").write_text("imap-pass\n")
    return tmp_path


def problems(path: Path, env: dict | None = None) -> list:
    with pytest.raises(ConfigError) as info:
        config.load(path, env=env or {})
    return info.value.problems


def test_contract_example_loads(secrets: Path):
    """The design's example keys load: data centre URLs, secrets from files, relative paths beside the file."""
    s = config.load(write(secrets, GOOD), env={})
    assert s.crm.client_id == "1000.ABC"
    assert s.crm.client_secret.reveal() == "s3cr3t-client"
    assert s.crm.refresh_token.reveal() == "1000.refresh.token"
    assert s.crm.accounts_url == "https://accounts.zoho.eu"
    assert s.crm.api_domain is None
    assert s.ledger.path == secrets / "state" / "ledger.sqlite3"
    (m,) = s.mailboxes
    assert (m.name, m.port, m.security, m.folders, m.sent_folders) == ("sales", 143, "none", ("INBOX",), ("Sent",))
    assert m.password.reveal() == "imap-pass"
    assert m.addresses == ("sales@example.com",)
    assert "imap-pass" not in repr(m) and "s3cr3t" not in repr(s.crm)


def test_mailboxes_d_adds_one_mailbox_per_file(secrets: Path):
    """Each mailboxes.d/*.toml holds one [mailbox] table and adds that mailbox."""
    main = write(secrets, GOOD)
    write(secrets, '[mailbox]\nname = "support"\nhost = "127.0.0.1"\nsecurity = "none"\nusername = "s"\npassword = "p"\n',
          "mailboxes.d/support.toml")
    s = config.load(main, env={})
    assert [m.name for m in s.mailboxes] == ["sales", "support"]
    assert s.mailboxes[1].source_file.endswith("mailboxes.d/support.toml")


def test_secrets_from_environment_and_credentials(tmp_path: Path):
    """Secrets absent from the file come from a systemd credential or SYNCD_* environment variables."""
    text = GOOD.replace('client_secret_file = "secrets/client_secret"\n', "").replace(
        'refresh_token = "1000.refresh.token"\n', "").replace('password_file = "secrets/sales"\n', "")
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "refresh_token").write_text("from-credential")
    env = {"SYNCD_CRM_CLIENT_SECRET": "from-env", "SYNCD_MAILBOX_SALES_PASSWORD": "pw-env",
           "CREDENTIALS_DIRECTORY": str(creds)}
    s = config.load(write(tmp_path, text), env=env)
    assert s.crm.client_secret.reveal() == "from-env"
    assert s.crm.refresh_token.reveal() == "from-credential"
    assert s.mailboxes[0].password.reveal() == "pw-env"


def test_file_and_credential_secrets_follow_their_files(secrets: Path):
    """*_file keys and systemd credentials give secrets that re-read a replaced file; inline and env ones stay put."""
    creds = secrets / "creds"
    creds.mkdir()
    (creds / "refresh_token").write_text("1000.from-credential")
    text = GOOD.replace('refresh_token = "1000.refresh.token"\n', "")
    s = config.load(write(secrets, text), env={"CREDENTIALS_DIRECTORY": str(creds)})
    assert s.crm.client_secret.path == secrets / "secrets" / "client_secret"
    assert s.crm.refresh_token.path == creds / "refresh_token"
    (secrets / "secrets" / "client_secret").write_text("new-client-secret\n")
    (secrets / "secrets" / "sales").write_text("new-imap-password\n")
    (creds / "refresh_token").write_text("1000.operator-wrote-a-new-one\n")
    assert s.crm.client_secret.reveal() == "new-client-secret"
    assert s.crm.refresh_token.reveal() == "1000.operator-wrote-a-new-one"
    assert s.mailboxes[0].password.reveal() == "new-imap-password"
    inline = config.load(write(secrets, GOOD), env={}).crm.refresh_token
    assert inline.path is None and inline.reveal() == "1000.refresh.token"


def test_unreadable_or_undecodable_secret_file_is_a_problem(secrets: Path):
    """A *_file that is a directory or not UTF-8 is refused at load, naming the key."""
    (secrets / "secrets" / "sales").write_bytes(b"\xffpass")
    (secrets / "secrets" / "client_secret").unlink()
    (secrets / "secrets" / "client_secret").mkdir()
    found = {p.key: p for p in problems(write(secrets, GOOD))}
    assert "cannot read" in found["crm.client_secret_file"].message
    assert "not UTF-8" in found["mailbox[0].password_file"].message


def test_every_problem_reported_at_once_with_file_key_and_fix(secrets: Path):
    """Several mistakes give one error listing each, naming the file, the key and the fix."""
    text = GOOD.replace('data_center = "eu"', 'data_center = "mars"').replace(
        "poll_interval = 30", "poll_interval = 30\npolling = 5").replace('name = "sales"', 'name = "sales"\nport = 0')
    path = write(secrets, text)
    found = problems(path)
    by_key = {p.key: p for p in found}
    assert set(by_key) >= {"crm.data_center", "mailbox[0].polling", "mailbox[0].port"}
    assert all(p.file == str(path) and p.fix for p in found)
    assert "'com'" in by_key["crm.data_center"].fix
    assert "spelling" in by_key["mailbox[0].polling"].fix


def test_missing_secrets_say_every_way_to_give_them(tmp_path: Path):
    """A secret given nowhere names the key, the *_file key, the credential and the variable."""
    text = GOOD.replace('client_secret_file = "secrets/client_secret"\n', "")
    found = problems(write(tmp_path, text))
    keys = {p.key: p for p in found}
    assert "SYNCD_CRM_CLIENT_SECRET" in keys["crm.client_secret"].fix
    assert "cannot read" in keys["mailbox[0].password_file"].message


def test_plaintext_imap_refused_off_loopback(secrets: Path):
    """security = "none" to a remote host is refused unless allow_insecure is set."""
    text = GOOD.replace('host = "127.0.0.1"', 'host = "192.0.2.10"')
    (p,) = [p for p in problems(write(secrets, text)) if p.key == "mailbox[0].security"]
    assert "allow_insecure" in p.fix
    allowed = text.replace('security = "none"', 'security = "none"\nallow_insecure = true')
    assert config.load(write(secrets, allowed), env={}).mailboxes[0].allow_insecure


def test_duplicate_mailbox_names_refused(secrets: Path):
    """Two mailboxes with one name are refused, naming both files."""
    main = write(secrets, GOOD)
    write(secrets, '[mailbox]\nname = "sales"\nhost = "127.0.0.1"\nsecurity = "none"\nusername = "s"\npassword = "p"\n',
          "mailboxes.d/again.toml")
    (p,) = problems(main)
    assert p.file.endswith("again.toml") and str(main) in p.message


@pytest.mark.parametrize(
    "text, needle",
    [
        ("[crm\nclient_id=1", "not valid TOML"),
        ('[crm]\nclient_id = "x"\n', "no mailbox configured"),
        ('unknown = 1\n[[mailbox]]\nname = "a"\nmaildir = "m"\n', "extra inputs"),
        ('[[mailbox]]\nname = "bad name!"\nmaildir = "m"\n', "should match pattern"),
    ],
)
def test_malformed_files_are_refused_clearly(tmp_path: Path, text: str, needle: str):
    """Broken TOML, missing mailboxes, unknown keys and bad names are each reported."""
    assert any(needle in p.message for p in problems(write(tmp_path, text)))


def test_mailboxes_d_file_with_other_tables_refused(secrets: Path):
    """A mailboxes.d file must hold exactly one [mailbox] table."""
    main = write(secrets, GOOD)
    write(secrets, '[crm]\nclient_id = "x"\n', "mailboxes.d/wrong.toml")
    (p,) = problems(main)
    assert "exactly one [mailbox]" in p.message


def test_missing_explicit_file_is_an_error(tmp_path: Path):
    """-c naming a file that does not exist says so and how to fix it."""
    (p,) = problems(tmp_path / "nope.toml")
    assert p.message == "file not found" and "-c" in p.fix


def test_only_loads_the_named_mailboxes_and_needs_no_other_secrets(secrets: Path):
    """load(only=...) (syncd run --mailbox, one syncd@ instance) leaves the other mailboxes unread, secrets and all."""
    main = write(secrets, GOOD)
    write(secrets, '[mailbox]\nname = "support"\nhost = "127.0.0.1"\nsecurity = "none"\nusername = "s"\n',
          "mailboxes.d/support.toml")
    assert [p.key for p in problems(main)] == ["mailbox.password"]
    assert [m.name for m in config.load(main, env={}, only=["sales"]).mailboxes] == ["sales"]
    with pytest.raises(ConfigError) as info:
        config.load(main, env={}, only=["nosuch"])
    assert [(p.key, p.fix) for p in info.value.problems] == [
        ("mailbox", "add mailboxes.d/nosuch.toml holding a [mailbox] table with name = 'nosuch'")]


def test_ledger_defaults_to_systemd_state_directory(secrets: Path):
    """Without [ledger] path the ledger goes to $STATE_DIRECTORY (systemd's StateDirectory=), else /var/lib/syncd."""
    text = GOOD.replace('[ledger]\npath = "state/ledger.sqlite3"\n', "")
    assert config.load(write(secrets, text), env={}).ledger.path == config.DEFAULT_LEDGER
    under_systemd = config.load(write(secrets, text), env={"STATE_DIRECTORY": "/var/lib/syncd-sales"})
    assert under_systemd.ledger.path == Path("/var/lib/syncd-sales/ledger.sqlite3")
    explicit = config.load(write(secrets, GOOD), env={"STATE_DIRECTORY": "/var/lib/syncd-sales"})
    assert explicit.ledger.path == secrets / "state/ledger.sqlite3"


def test_locate_prefers_option_then_environment():
    """-c wins over $SYNCD_CONFIG, which wins over /etc/syncd/syncd.toml."""
    assert config.locate("a.toml", {"SYNCD_CONFIG": "b.toml"}) == (Path("a.toml"), True)
    assert config.locate(None, {"SYNCD_CONFIG": "b.toml"}) == (Path("b.toml"), True)
    assert config.locate(None, {}) == (config.DEFAULT_PATH, False)



MATCH = GOOD.replace("[ledger]", """modules = ["Leads", "Contacts", "Accounts"]

[match]
multiple = "first"
internal_domains = ["OurCo.Example", "xn--bcher-kva.example"]
block_addresses = ["NoReply@Shop.example"]
skip_lists = false

[ledger]""") + """
[mailbox.match]
multiple = "all"
modules = ["Contacts"]
"""


def test_match_table_sets_defaults_and_a_mailbox_overrides_them(secrets: Path):
    """[match] applies to every mailbox (modules default to crm.modules); [mailbox.match] overrides key by key."""
    write(secrets, '[mailbox]\nname = "other"\nmaildir = "m"\n', "mailboxes.d/other.toml")
    sales, other = config.load(write(secrets, MATCH), env={}).mailboxes
    assert sales.match.multiple == "all" and sales.match.modules == ("Contacts",)
    assert other.match.multiple == "first" and other.match.modules == ("Leads", "Contacts", "Accounts")
    assert other.match.internal_domains == ("ourco.example", "bücher.example")
    assert other.match.block_addresses == ("noreply@shop.example",)
    assert other.match.skip_lists is False and other.match.skip_bounces is True


def test_bad_match_keys_are_problems_with_their_fix(secrets: Path):
    """A wrong policy name, a typo, a domain given as an address and an address without @ each name key and fix."""
    typos = MATCH.replace('multiple = "first"', 'multiple = "most"').replace('modules = ["Contacts"]', 'bc = true')
    found = {p.key: p for p in problems(write(secrets, typos))}
    assert set(found) == {"match.multiple", "mailbox[0].match.bc"}
    assert "'none-if-ambiguous'" in found["match.multiple"].fix
    lists = MATCH.replace('multiple = "first"', 'block_domains = ["x@y.example"]').replace('"NoReply@Shop.example"', '"noreply"')
    found = {p.key: p for p in problems(write(secrets, lists))}
    assert set(found) == {"match.block_domains[0]", "match.block_addresses[0]"}
    assert "domain" in found["match.block_domains[0]"].fix and "address" in found["match.block_addresses[0]"].fix
