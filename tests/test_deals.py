"""Deal prediction (the Kaizen rules) end to end: Dovecot → `syncd once` → linked_record on the sandbox CRM."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from syncd.crm import Deal
from syncd.deals import predict
from syncd.sandbox import SandboxServer
from syncd.sandbox.state import MODULE_IDS
from tests.fixtures.dovecot import ImapUser
from tests.test_pipeline import OWN, config_file, mail, syncd  # noqa: F401 - config_file is a fixture

FORECASTS = {"Qualification": "Open", "Negotiation/Review": "Open", "Closed Won": "Closed Won",
             "Closed Lost": "Closed Lost", "Closed-Lost to Competition": "Closed Lost"}


def deal(id_: str, stage: str, month: int | None) -> Deal:
    return Deal(id_, f"Deal {id_}", stage, datetime(2024, month, 1, tzinfo=UTC) if month else None)


def test_one_open_deal_is_linked_whatever_closed_ones_say():
    """A Contact's single open deal wins over more recently modified closed-won and closed-lost ones."""
    assert predict([deal("1", "Closed Won", 9), deal("2", "Qualification", 1), deal("3", "Closed Lost", 12)],
                   FORECASTS).id == "2"


def test_several_open_deals_give_the_most_recently_modified():
    """With several open deals, the most recently modified one is linked (custom closed-lost names never are)."""
    deals = [deal("1", "Qualification", 3), deal("2", "Negotiation/Review", 7), deal("3", "Closed-Lost to Competition", 11)]
    assert predict(deals, FORECASTS).id == "2"


def test_no_open_deal_means_no_link():
    """Only closed deals (won or lost, custom names included), unknown stages or no deals: no link."""
    assert predict([deal("1", "Closed Won", 1), deal("2", "Closed-Lost to Competition", 2)], FORECASTS) is None
    assert predict([deal("1", "Renamed since", 1)], FORECASTS) is None
    assert predict([], FORECASTS) is None


def test_stage_names_do_not_decide_forecast_types_do():
    """A stage named like a closed one but marked Open in the metadata counts as open."""
    assert predict([deal("1", "Closed Lost (reopened)", 1)], {"Closed Lost (reopened)": "Open"}).id == "1"


def test_missing_modified_time_loses_to_a_known_one():
    """An open deal without Modified_Time ranks below one that has it."""
    assert predict([deal("9", "Qualification", None), deal("2", "Qualification", 1)], FORECASTS).id == "2"


def seed_deals(server: SandboxServer, contact: str, *deals: tuple[str, str, str]) -> list[str]:
    """(name, stage, Modified_Time) Deals whose Contact_Name points at ``contact``."""
    return server.seed("Deals", [{"Deal_Name": name, "Stage": stage, "Modified_Time": modified,
                                  "Contact_Name": {"id": contact}} for name, stage, modified in deals])


def received(server: SandboxServer) -> dict[tuple[str, str], object]:
    return {(e.module, e.original_message_id): e for e in server.received()}


def test_mail_for_a_contact_is_linked_to_its_predicted_deal(config_file: Path, imap_user: ImapUser,
                                                            crm_server: SandboxServer):
    """Received and sent mail on a Contact carries linked_record = the latest open deal; a Lead's copy carries none."""
    bob = crm_server.contact_ids[0]
    _, latest, _ = seed_deals(crm_server, bob, ("Old", "Qualification", "2024-01-05T10:00:00+01:00"),
                              ("Latest", "Negotiation/Review", "2024-06-01T10:00:00+00:00"),
                              ("Lost lately", "Closed-Lost to Competition", "2024-12-01T10:00:00+00:00"))
    imap_user.append("INBOX", bytes(mail("bob@example.com", OWN, "Question", message_id="<q1@x>")))
    imap_user.append("Sent", bytes(mail(OWN, "bob@example.com, lena@prospect.example", "Answer", message_id="<a1@x>")))

    done = syncd("once", "-c", str(config_file))
    assert done.returncode == 0, done.stderr
    assert crm_server.violations == []
    got = received(crm_server)
    expected = {"module": {"api_name": "Deals", "id": MODULE_IDS["Deals"]}, "id": latest, "name": "Latest"}
    assert got[("Contacts", "q1@x")].payload["linked_record"] == expected
    assert got[("Contacts", "a1@x")].payload["linked_record"] == expected
    assert got[("Contacts", "q1@x")].linked_record == expected
    assert "linked_record" not in got[("Leads", "a1@x")].payload
    shown = syncd("ledger", "show", "q1@x", "-c", str(config_file)).stdout
    assert f"deal {latest} (Latest): predicted" in shown


def test_contact_without_open_deal_gets_no_link(config_file: Path, imap_user: ImapUser, crm_server: SandboxServer):
    """A Contact whose deals are all closed gets the email without linked_record."""
    seed_deals(crm_server, crm_server.contact_ids[0], ("Won", "Closed Won", "2024-06-01T10:00:00+00:00"))
    imap_user.append("INBOX", bytes(mail("bob@example.com", OWN, "Thanks", message_id="<t1@x>")))
    assert syncd("once", "-c", str(config_file)).returncode == 0
    (email,) = crm_server.received()
    assert "linked_record" not in email.payload


def test_prediction_can_be_switched_off(config_file: Path, imap_user: ImapUser, crm_server: SandboxServer):
    """With predict_deals = false no deal is read and no linked_record sent."""
    seed_deals(crm_server, crm_server.contact_ids[0], ("Open", "Qualification", "2024-06-01T10:00:00+00:00"))
    config_file.write_text(config_file.read_text() + "predict_deals = false\n")
    imap_user.append("INBOX", bytes(mail("bob@example.com", OWN, "Hi", message_id="<off@x>")))
    assert syncd("once", "-c", str(config_file)).returncode == 0
    (email,) = crm_server.received()
    assert "linked_record" not in email.payload
    assert not any(p.endswith("/Deals") or "settings/modules" in p for _, p in crm_server.requests)


def test_deals_are_read_once_per_contact_per_pass(config_file: Path, imap_user: ImapUser, crm_server: SandboxServer):
    """Five mails from one Contact cost one read of its Deals and one of the Deals module id."""
    seed_deals(crm_server, crm_server.contact_ids[0], ("Open", "Qualification", "2024-06-01T10:00:00+00:00"))
    imap_user.append_many("INBOX", [bytes(mail("bob@example.com", OWN, f"Mail {i}", message_id=f"<n{i}@x>"))
                                    for i in range(5)])
    assert syncd("once", "-c", str(config_file)).returncode == 0
    assert len(crm_server.received()) == 5
    assert all("linked_record" in e.payload for e in crm_server.received())
    paths = [p for _, p in crm_server.requests]
    assert (sum(p.endswith(f"/Contacts/{crm_server.contact_ids[0]}/Deals") for p in paths),
            sum("settings/modules" in p for p in paths)) == (1, 1)


def test_refused_deal_lookup_costs_the_link_not_the_email(config_file: Path, imap_user: ImapUser,
                                                          crm_server: SandboxServer):
    """When Zoho refuses the Deals read (no permission on Deals), the email still arrives, unlinked."""
    seed_deals(crm_server, crm_server.contact_ids[0], ("Open", "Qualification", "2024-06-01T10:00:00+00:00"))
    crm_server.inject(r"/Contacts/\d+/Deals$", status=400,
                      body={"code": "INVALID_MODULE", "details": {}, "message": "the related list is not accessible",
                            "status": "error"})
    imap_user.append("INBOX", bytes(mail("bob@example.com", OWN, "Hi", message_id="<r1@x>")))
    assert syncd("once", "-c", str(config_file)).returncode == 0
    (email,) = crm_server.received()
    assert "linked_record" not in email.payload


def test_refused_module_metadata_costs_the_link_not_the_email(config_file: Path, imap_user: ImapUser,
                                                               crm_server: SandboxServer):
    """When Zoho refuses the Deals module read (needed for linked_record), the email still arrives, unlinked."""
    seed_deals(crm_server, crm_server.contact_ids[0], ("Open", "Qualification", "2024-06-01T10:00:00+00:00"))
    crm_server.inject(r"/settings/modules/Deals$", status=400,
                      body={"code": "INVALID_MODULE", "details": {}, "message": "no such module", "status": "error"})
    imap_user.append("INBOX", bytes(mail("bob@example.com", OWN, "Hi", message_id="<m1@x>")))
    assert syncd("once", "-c", str(config_file)).returncode == 0
    (email,) = crm_server.received()
    assert "linked_record" not in email.payload


def test_deal_lookup_outage_retries_then_links_once(config_file: Path, imap_user: ImapUser, crm_server: SandboxServer):
    """A Deals read failing with 503 every time leaves the mail for retry; the next pass delivers it linked, once."""
    (open_deal,) = seed_deals(crm_server, crm_server.contact_ids[0], ("Open", "Qualification", "2024-06-01T10:00:00+00:00"))
    crm_server.inject(r"/Contacts/\d+/Deals$", status=503, times=4)
    imap_user.append("INBOX", bytes(mail("bob@example.com", OWN, "Hi", message_id="<o1@x>")))
    assert syncd("once", "-c", str(config_file)).returncode == 1
    assert crm_server.received() == []
    assert not any("/files" in p or "associate" in p for _, p in crm_server.requests)
    assert syncd("ledger", "retry", "o1@x", "-c", str(config_file)).returncode == 0
    assert syncd("once", "-c", str(config_file)).returncode == 0
    (email,) = crm_server.received()
    assert email.payload["linked_record"]["id"] == open_deal


@pytest.mark.parametrize("stage", ["Closed Lost", "Closed-Lost to Competition"])
def test_recent_closed_lost_deal_never_beats_an_older_open_one(stage: str, config_file: Path, imap_user: ImapUser,
                                                               crm_server: SandboxServer):
    """Against the sandbox's Stage metadata: a newer closed-lost deal (any name) loses to an older open deal."""
    older, _ = seed_deals(crm_server, crm_server.contact_ids[0], ("Older open", "Qualification", "2023-01-01T00:00:00Z"),
                          ("Newer lost", stage, "2025-01-01T00:00:00Z"))
    imap_user.append("INBOX", bytes(mail("bob@example.com", OWN, "Hi", message_id="<c1@x>")))
    assert syncd("once", "-c", str(config_file)).returncode == 0
    assert crm_server.received()[0].payload["linked_record"]["id"] == older
