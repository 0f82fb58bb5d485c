"""Matching policy against Dovecot and the sandbox CRM: who counts, which records, normalisation, explanations."""

from __future__ import annotations

import subprocess
import sys
from email import message_from_bytes, policy as email_policy
from pathlib import Path

import pytest

from syncd.addrkey import address_key
from syncd.ledger import State
from syncd.match import counterparts, is_sent
from syncd.parse import parse_message
from syncd.sandbox import SandboxServer
from syncd.settings import MatchSettings
from tests.fixtures.dovecot import ImapUser
from tests.fixtures.sync import OWN, mail, sync, syncer  # noqa: F401 - sync is a fixture

DATA = Path(__file__).parent / "data" / "mail"


@pytest.fixture
def people(crm_server: SandboxServer) -> dict[str, str]:
    """Extra records: a form relay's person, a Bcc'd Lead, one person in both modules, an IDN domain, a duplicate."""
    contacts = crm_server.seed("Contacts", [
        {"Full_Name": "Rita Replyto", "Last_Name": "Replyto", "Email": "rita@client.example"},
        {"Full_Name": "Dora Both", "Last_Name": "Both", "Email": "dora@both.example"},
        {"Full_Name": "Uli Müller", "Last_Name": "Müller", "Email": "uli@müller.example"},
        {"Full_Name": "Ada Ascii", "Last_Name": "Ascii", "Email": "ada@xn--bcher-kva.example"},
        {"Full_Name": "Twin One", "Last_Name": "One", "Email": "twin@dup.example"},
        {"Full_Name": "Twin Two", "Last_Name": "Two", "Email": "TWIN@dup.example"},
    ])
    leads = crm_server.seed("Leads", [
        {"Full_Name": "Dora Lead", "Last_Name": "Lead", "Email": "Dora@Both.example"},
        {"Full_Name": "Bea Bcc", "Last_Name": "Bcc", "Email": "bea@hidden.example"},
    ])
    names = ["rita", "dora", "uli", "ada", "twin1", "twin2"]
    return {**dict(zip(names, contacts)), "dora_lead": leads[0], "bea": leads[1],
            "bob": crm_server.contact_ids[0], "lena": crm_server.lead_ids[0]}


def test_reply_to_counts_for_received_mail_when_enabled(sync, imap_user: ImapUser, people):
    """A web-form relay's mail reaches the From record and the differing Reply-To record; with reply_to off only From's."""
    imap_user.append("INBOX", mail("bob@example.com", OWN, message_id="<rt1@x>", Reply_To="Rita <rita@client.example>"))
    s = sync()
    s.run()
    assert sorted(s.received()["rt1@x"]) == sorted([("Contacts", people["bob"]), ("Contacts", people["rita"])])

    imap_user.append("INBOX", mail("bob@example.com", OWN, message_id="<rt2@x>", Reply_To="rita@client.example"))
    off = sync(reply_to=False)
    off.run()
    assert off.received()["rt2@x"] == [("Contacts", people["bob"])]


def test_bcc_of_sent_mail_counts_unless_disabled(sync, imap_user: ImapUser, people):
    """Sent mail reaches its Bcc recipient's record; with bcc off it does not."""
    imap_user.append("Sent", mail(OWN, "lena@prospect.example", message_id="<b1@x>", Bcc="bea@hidden.example"))
    s = sync()
    s.run()
    assert sorted(s.received()["b1@x"]) == sorted([("Leads", people["lena"]), ("Leads", people["bea"])])

    imap_user.append("Sent", mail(OWN, "lena@prospect.example", message_id="<b2@x>", Bcc="bea@hidden.example"))
    off = sync(bcc=False)
    off.run()
    assert off.received()["b2@x"] == [("Leads", people["lena"])]


def test_own_alias_in_inbox_is_sent_mail_and_never_a_counterpart(tmp_path: Path, imap_user: ImapUser,
                                                               crm_server: SandboxServer, people):
    """Mail from an alias sitting in INBOX is sent (sent=true, To is the counterpart); aliases on Cc get nothing."""
    imap_user.append("INBOX", mail("Sales <sales@ourco.example>", "bob@example.com", message_id="<al@x>",
                                   Cc="me@ourco.example"))
    s = syncer(tmp_path, imap_user, crm_server, addresses=(OWN, "sales@ourco.example"))
    try:
        s.run()
    finally:
        s.close()
    (entry,) = crm_server.received()
    assert (entry.module, entry.record_id, entry.payload["sent"]) == ("Contacts", people["bob"], True)


@pytest.mark.parametrize(("multiple", "expected", "state"), [
    ("all", ["dora", "dora_lead"], State.DONE),
    ("first", ["dora"], State.DONE),
    ("none-if-ambiguous", [], State.UNMATCHED),
])
def test_multiple_match_policy(sync, imap_user: ImapUser, people, multiple, expected, state):
    """One address in Contacts and Leads: `all` takes both, `first` the first module's, `none-if-ambiguous` neither."""
    imap_user.append("INBOX", mail("dora@both.example", OWN, message_id="<mm@x>"))
    s = sync(multiple=multiple)
    s.run()
    want = [("Contacts" if k == "dora" else "Leads", people[k]) for k in expected]
    assert sorted(s.received().get("mm@x", [])) == sorted(want)
    row = s.row("mm@x")
    assert row.state == state
    if multiple == "none-if-ambiguous":
        assert "ambiguous: dora@both.example" in row.reason and people["dora_lead"] in row.reason


def test_first_takes_the_oldest_of_duplicates_and_module_order_is_configurable(sync, imap_user: ImapUser, people):
    """`first` with two Contacts for one address picks the older; modules = [Leads, Contacts] makes Leads win."""
    imap_user.append("INBOX", mail("twin@dup.example", OWN, message_id="<tw@x>"))
    imap_user.append("INBOX", mail("dora@both.example", OWN, message_id="<lf@x>"))
    s = sync(multiple="first", modules=("Leads", "Contacts"))
    s.run()
    assert s.received()["tw@x"] == [("Contacts", people["twin1"])]
    assert s.received()["lf@x"] == [("Leads", people["dora_lead"])]


def test_addresses_match_whatever_their_case_or_idn_form(sync, imap_user: ImapUser, people):
    """Upper-case addresses, a punycode sender for a Unicode record and a Unicode sender for a punycode record all match."""
    imap_user.append("INBOX", mail("BOB@EXAMPLE.COM", OWN, message_id="<c1@x>"))
    imap_user.append("INBOX", mail("uli@xn--mller-kva.example", OWN, message_id="<c2@x>"))
    imap_user.append("INBOX", f"From: Ada <ada@bücher.example>\r\nTo: {OWN}\r\nSubject: utf-8 header\r\n"
                              "Message-ID: <c3@x>\r\n\r\nHello.\r\n".encode())
    s = sync()
    s.run()
    assert s.received()["c1@x"] == [("Contacts", people["bob"])]
    assert s.received()["c2@x"] == [("Contacts", people["uli"])]
    assert s.received()["c3@x"] == [("Contacts", people["ada"])]


def test_plus_tags_are_stripped_only_when_asked(sync, imap_user: ImapUser, people):
    """bob+news@example.com is Bob with strip_plus_tags on, and nobody with it off."""
    imap_user.append("INBOX", mail("bob+news@example.com", OWN, message_id="<p1@x>"))
    off = sync()
    off.run()
    assert off.row("p1@x").state == State.UNMATCHED
    on = sync(strip_plus_tags=True)
    on.app.ledger.retry(states=[State.UNMATCHED])
    on.run()
    assert on.received()["p1@x"] == [("Contacts", people["bob"])]


def test_ledger_show_says_which_address_matched_which_record(tmp_path: Path, imap_user: ImapUser,
                                                              crm_server: SandboxServer, people):
    """`syncd ledger show` names the address that found each record, and the one that found none."""
    imap_user.append("Sent", mail(OWN, "Bob <bob@example.com>", message_id="<why@x>", Cc="nobody@nowhere.example"))
    s = syncer(tmp_path, imap_user, crm_server)
    try:
        s.run()
    finally:
        s.close()
    config = tmp_path / "syncd.toml"
    config.write_text(f'[crm]\nclient_id = "x"\nclient_secret = "x"\nrefresh_token = "x"\n'
                      f'[ledger]\npath = "{tmp_path / "ledger.sqlite3"}"\n[[mailbox]]\nname = "m"\nmbox = "none.mbox"\n')
    shown = subprocess.run([sys.executable, "-m", "syncd", "ledger", "show", "why@x", "-c", str(config)],
                           capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert f"bob@example.com → Contacts/{people['bob']} (Bob Buyer)" in shown.stdout
    assert "no CRM record for nobody@nowhere.example" in shown.stdout


def test_counterparts_agree_with_the_stdlib_parser_on_sample_mail():
    """For every sample message, syncd's counterparts are what Python's own email parser finds in the same headers."""
    policy = MatchSettings()
    checked = 0
    for path in sorted(DATA.glob("*.eml")):
        data = path.read_bytes()
        email = parse_message(data)
        independent = message_from_bytes(data, policy=email_policy.default)
        for sent in (False, True):
            names = ("To", "Cc", "Bcc") if sent else ("From", "Reply-To")
            found = [a.addr_spec for n in names for h in independent.get_all(n) or [] for a in h.addresses]
            # raw UTF-8 headers (RFC 6532) come back from the stdlib as surrogate escapes
            utf8 = [a.encode("utf-8", "surrogateescape").decode("utf-8", "replace") for a in found]
            expected = {address_key(a) for a in utf8 if "@" in a} - {None}
            got = {address_key(a.addr) for a in counterparts(email, sent=sent, own=(), policy=policy)}
            assert got == expected, (path.name, sent)
            checked += bool(expected)
    assert checked >= 10


def test_direction_follows_own_addresses_whatever_their_case():
    """A From that is an own address in another case still makes the message sent."""
    email = parse_message(mail("ME@OurCo.Example", "bob@example.com", message_id="<d@x>"))
    assert is_sent(email, sent_folder=False, own=(OWN,))
    assert not is_sent(email, sent_folder=False, own=("other@ourco.example",))


def test_failed_lookup_leaves_the_message_for_retry(sync, imap_user: ImapUser, crm_server: SandboxServer, people):
    """When record lookups keep failing (503), the message waits in retry, nothing is sent; once the CRM is back it goes once."""
    imap_user.append("INBOX", mail("bob@example.com", OWN, message_id="<lk@x>"))
    crm_server.inject(r"/coql", status=503, times=100)
    s = sync()
    s.run()
    assert s.row("lk@x").state == State.RETRY and "record lookup failed" in s.row("lk@x").reason
    assert crm_server.received() == []
    crm_server.clear_faults()
    s.app.ledger.retry(message_id="lk@x")
    s.run()
    assert s.received() == {"lk@x": [("Contacts", people["bob"])]}


def test_custom_modules_are_matched_and_modules_without_email_fields_are_harmless(sync, imap_user: ImapUser,
                                                                                   crm_server: SandboxServer):
    """A custom module with an email field gets the email; Accounts (no email field in Zoho) are asked nothing."""
    (vendor,) = crm_server.seed("Vendors_X", [{"Name": "Acme Supplies", "Vendor_Email": "orders@supplier.example"}])
    imap_user.append("INBOX", mail("orders@supplier.example", OWN, message_id="<cm@x>"))
    s = sync(modules=("Accounts", "Vendors_X"))
    s.run()
    assert s.received() == {"cm@x": [("Vendors_X", vendor)]}
    assert "orders@supplier.example → Vendors_X/" in s.row("cm@x").reason and "(Acme Supplies)" in s.row("cm@x").reason
    assert s.app.crm.calls.get("search", 0) == 0 and crm_server.violations == []


@pytest.mark.parametrize("folder", ["INBOX", "Sent"])
def test_sample_mail_reaches_exactly_the_records_the_stdlib_parser_names(tmp_path: Path, imap_user: ImapUser,
                                                                         crm_server: SandboxServer, folder: str):
    """Every sample message, received or sent through Dovecot, reaches the records of the counterparts Python's own parser finds."""
    samples = sorted(DATA.glob("*.eml"))
    names = ("To", "Cc", "Bcc") if folder == "Sent" else ("From", "Reply-To")
    expected: dict[str, set[str]] = {}
    for path in samples:
        parsed = message_from_bytes(path.read_bytes(), policy=email_policy.default)
        found = [a.addr_spec.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
                 for n in names for h in parsed.get_all(n) or [] for a in h.addresses]
        expected[path.name] = {k for k in map(address_key, found) if k}
    everyone = sorted(set().union(*expected.values()))
    crm_server.seed("Contacts", [{"Last_Name": f"P{i}", "Email": k} for i, k in enumerate(everyone)])
    ids: dict[str, set[str]] = {}  # the fixture's own records count too (Bob, Lena are in samples)
    for record in (crm_server.org.rows("Contacts") or []) + (crm_server.org.rows("Leads") or []):
        for field in ("Email", "Secondary_Email"):
            if record.get(field):
                ids.setdefault(address_key(record[field]) or "", set()).add(record["id"])
    uids = dict(zip(imap_user.append_many(folder, [p.read_bytes() for p in samples]), (p.name for p in samples)))
    s = syncer(tmp_path, imap_user, crm_server, folders=("INBOX",), addresses=("nobody-of-ours@ourco.example",),
               skip_auto_replies=False, skip_bounces=False, skip_lists=False)
    try:
        s.run()
        rows = {r.key.uid: r for r in s.app.ledger.messages() if r.key.folder == folder}
        got: dict[str, set[str]] = {}
        for e in crm_server.received():
            got.setdefault(e.original_message_id, set()).add(e.record_id)
    finally:
        s.close()
    for uid, name in uids.items():
        row = rows[uid]
        want = set().union(*(ids[k] for k in expected[name]))
        assert got.get(row.message_id, set()) == want, (name, row.state, row.reason)
        assert row.state == (State.DONE if want else State.UNMATCHED), (name, row.reason)


def test_misspelt_module_pauses_the_mailbox_and_loses_nothing(sync, imap_user: ImapUser, crm_server: SandboxServer,
                                                            people):
    """modules = ["Contact"] stops the pass with an error naming it and sends nothing; fixed, the mail is delivered."""
    imap_user.append("INBOX", mail("bob@example.com", OWN, message_id="<typo@x>"))
    bad = sync(modules=("Contact",))
    (report,) = bad.app.once()
    assert any("Zoho has no module 'Contact'" in e for e in report.errors)
    assert crm_server.received() == [] and not report.complete
    good = sync()
    good.run()
    assert good.received() == {"typo@x": [("Contacts", people["bob"])]}


def test_plus_tagged_own_address_is_ours_when_tags_are_stripped():
    """With strip_plus_tags, mail From sales+crm@ is sent mail of sales@, and the tagged own address is no counterpart."""
    email = parse_message(mail("sales+crm@ourco.example", "bob@example.com", message_id="<pt@x>",
                               Cc="sales+cc@ourco.example"))
    policy = MatchSettings(strip_plus_tags=True)
    assert is_sent(email, sent_folder=False, own=("sales@ourco.example",), policy=policy)
    assert not is_sent(email, sent_folder=False, own=("sales@ourco.example",))
    people = counterparts(email, sent=True, own=("sales@ourco.example",), policy=policy)
    assert [a.addr for a in people] == ["bob@example.com"]
