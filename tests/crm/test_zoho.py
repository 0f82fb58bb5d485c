"""ZohoCrm against the sandbox over real HTTP: tokens, calls, and the translation of every failure."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import structlog.testing

from syncd.crm import Upload
from syncd.crm.zoho import ZohoCrm
from syncd.errors import CrmError, CrmOrgError, CrmOutcomeUnknown, CrmRejected, CrmTransientError
from syncd.sandbox import SandboxServer
from syncd.settings import CrmSettings, Secret
from tests.fixtures.crm import settings_for, valid_entry as email

ASSOCIATE = r"/actions/associate_email$"


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def crm(crm_settings: CrmSettings, sleeps: list[float]) -> Iterator[ZohoCrm]:
    client = ZohoCrm(crm_settings, sleep=sleeps.append)
    yield client
    client.close()



def contact(server: SandboxServer) -> str:
    return server.contact_ids[0]  # type: ignore[attr-defined,no-any-return]


def test_check_refreshes_once_and_names_the_user(crm: ZohoCrm, crm_server: SandboxServer) -> None:
    """check() obtains a token and reads the current user; later calls reuse the token."""
    assert crm.check() == f"Zoho CRM at {crm_server.url} as admin@sandbox.example"
    crm.search_by_email("Contacts", "nobody@example.com")
    assert crm.calls["token"] == 1 and crm.calls["users"] == 1


def test_api_domain_comes_from_the_token_answer(crm_settings: CrmSettings, crm_server: SandboxServer) -> None:
    """Without a configured api_domain, calls go where the token response says."""
    with ZohoCrm(replace(crm_settings, api_domain=None)) as crm:
        assert crm.search_by_email("Leads", "lena@prospect.example")[0].name == "Lena Lead"


def test_expired_token_mid_run_refreshes_once_and_repeats(crm: ZohoCrm, crm_server: SandboxServer) -> None:
    """A 401 INVALID_TOKEN costs one refresh and one repeat, and the call succeeds."""
    crm.check()
    crm_server.expire_tokens()
    assert crm.associate_email("Contacts", contact(crm_server), email()).zoho_message_id
    assert crm.calls["token"] == 2 and crm.calls["associate_email"] == 2
    assert len(crm_server.received()) == 1


def test_concurrent_threads_share_one_refresh(crm: ZohoCrm, crm_server: SandboxServer) -> None:
    """Many threads needing a token at once cause a single refresh (no refresh storm)."""
    errors: list[BaseException] = []

    def work() -> None:
        try:
            crm.search_by_email("Contacts", "bob@example.com")
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and crm.calls["token"] == 1 and crm.calls["search"] == 8


@pytest.mark.parametrize(
    ("field", "value", "setting"),
    [("refresh_token", Secret("1000.wrong"), "crm.refresh_token"), ("client_id", "1000.OTHER", "crm.client_id")],
)
def test_refused_refresh_is_an_org_error_naming_the_setting(
    crm_settings: CrmSettings, field: str, value: object, setting: str
) -> None:
    """Zoho's HTTP 200 {"error": ...} token answers become CrmOrgError naming what to fix."""
    with ZohoCrm(replace(crm_settings, **{field: value})) as crm, pytest.raises(CrmOrgError) as caught:
        crm.check()
    assert setting in str(caught.value)


@pytest.mark.parametrize("key", ["refresh_token", "client_secret"])
def test_refused_refresh_is_held_until_its_secret_file_changes(crm_settings: CrmSettings, crm_server: SandboxServer,
                                                               tmp_path: Path, key: str) -> None:
    """A refused refresh is not asked again with the same credentials; a new value in the *_file lifts the hold at once."""
    path = tmp_path / key
    path.write_text("1000.revoked-or-wrong\n")
    good = getattr(crm_settings, key).reveal()
    with ZohoCrm(replace(crm_settings, **{key: Secret.from_file(path)})) as crm:
        for _ in range(2):
            with pytest.raises(CrmOrgError) as caught:
                crm.check()
        assert crm.calls["token"] == 1, "the second call repeats the held error without asking Zoho"
        assert caught.value.code == ("invalid_code" if key == "refresh_token" else "invalid_client")
        path.write_text(good + "\n")
        with structlog.testing.capture_logs() as logs:
            assert crm.check().startswith("Zoho CRM at")
    assert crm.calls["token"] == 2
    (changed,) = [e for e in logs if e["event"] == "crm_credentials_changed"]
    assert changed["log_level"] == "info" and changed["changed"] == [f"crm.{key}"] and good not in str(changed)


def test_refresh_rate_limit_is_transient_and_not_hammered() -> None:
    """"Access Denied / too many requests" is CrmTransientError, remembered instead of retried at once."""
    with SandboxServer(refresh_limit=1) as server:
        with ZohoCrm(settings_for(server), sleep=lambda _s: None) as crm:
            crm.check()
            server.expire_tokens()
            with pytest.raises(CrmTransientError) as caught:
                crm.check()
            assert caught.value.code == "TOKEN_RATE_LIMIT"
            assert crm.calls["token"] == 2


def test_search_no_match_is_204_empty(crm: ZohoCrm) -> None:
    """Zoho's 204 with an empty body means no records."""
    assert crm.search_by_email("Contacts", "nobody@example.com") == []


def test_search_keeps_exact_case_insensitive_matches_only(crm: ZohoCrm, crm_server: SandboxServer) -> None:
    """Loose candidates (bob@example.com.au) are dropped; Bob@Example.com matches bob@example.com."""
    found = crm.search_by_email("Contacts", "bob@example.com")
    assert [(r.id, r.name, r.email) for r in found] == [(contact(crm_server), "Bob Buyer", "Bob@Example.com")]


def test_search_matches_secondary_email(crm: ZohoCrm) -> None:
    """Any email field counts, e.g. Secondary_Email."""
    assert [r.name for r in crm.search_by_email("Contacts", "bob@example.com.au")] == ["Jacob Other"]


def test_search_follows_pages(crm: ZohoCrm, crm_server: SandboxServer) -> None:
    """more_records leads to the next page."""
    crm_server.seed("Leads", [{"Last_Name": f"L{i}", "Email": "same@example.com"} for i in range(205)])
    assert len(crm.search_by_email("Leads", "same@example.com")) == 205
    assert crm.calls["search"] == 2


def test_reads_retry_transient_faults_with_backoff(crm: ZohoCrm, crm_server: SandboxServer, sleeps: list[float]) -> None:
    """500 then 429 on a search are retried (sleep injected), honouring Retry-After."""
    crm_server.inject(r"/search$", status=500)
    crm_server.inject(r"/search$", status=429, headers={"Retry-After": "7"})
    # The rate gate's clock stands still (sleeps are injected): its wait is the whole Retry-After, not
    # 7 s less however long this thread was descheduled between the 429 and the retry.
    crm._gate._clock = lambda: 1000.0  # noqa: SLF001
    assert crm.search_by_email("Leads", "lena@prospect.example")
    assert crm.calls["search"] == 3 and len(sleeps) == 2 and 6.5 <= sleeps[1] <= 7  # the rate gate waits it out


def test_reads_give_up_after_a_few_attempts(crm: ZohoCrm, crm_server: SandboxServer) -> None:
    """A search that keeps failing raises CrmTransientError with the status."""
    crm_server.inject(r"/search$", status=503, times=10)
    with pytest.raises(CrmTransientError) as caught:
        crm.search_by_email("Leads", "x@example.com")
    assert caught.value.status == 503 and crm.calls["search"] == 4


def test_upload_chunks_by_ten_in_order(crm: ZohoCrm, crm_server: SandboxServer) -> None:
    """23 files take 3 requests and come back as 23 distinct ids, in order."""
    files = [Upload(f"f{i}.txt", f"{i}".encode()) for i in range(23)]
    ids = crm.upload_files(files)
    assert len(set(ids)) == 23 and crm.calls["files"] == 3
    assert [crm_server.org.files[i].name for i in ids] == [f.filename for f in files]


def test_inline_upload_sends_type_inline(crm: ZohoCrm, crm_server: SandboxServer) -> None:
    """inline=True marks the files as inline images."""
    (file_id,) = crm.upload_files([Upload("logo.png", b"\x89PNG", "image/png")], inline=True)
    assert crm_server.org.files[file_id].inline


def test_associate_stores_and_returns_zoho_id(crm: ZohoCrm, crm_server: SandboxServer) -> None:
    """201 SUCCESS gives Zoho's message id; the sandbox got exactly our entry, spec-valid."""
    (file_id,) = crm.upload_files([Upload("a.pdf", b"%PDF")])
    entry = email(attachments=[{"id": file_id, "name": "a.pdf"}])
    result = crm.associate_email("Contacts", contact(crm_server), entry)
    (stored,) = crm_server.received()
    assert result.zoho_message_id == stored.message_id and not result.duplicate
    assert stored.payload == entry and crm_server.violations == []
    assert crm.email_available("Contacts", contact(crm_server), "m1@example.com")
    assert not crm.email_available("Contacts", contact(crm_server), "other@example.com")


def test_duplicate_is_reported_not_raised(crm: ZohoCrm, crm_server: SandboxServer) -> None:
    """DUPLICATE_DATA (400) is Associated(None, duplicate=True)."""
    crm.associate_email("Contacts", contact(crm_server), email())
    assert crm.associate_email("Contacts", contact(crm_server), email()).duplicate


def test_reused_file_id_is_rejected(crm: ZohoCrm, crm_server: SandboxServer) -> None:
    """File ids are single-use: the second association using one is INVALID_DATA."""
    (file_id,) = crm.upload_files([Upload("a.pdf", b"%PDF")])
    attachments = [{"id": file_id, "name": "a.pdf"}]
    crm.associate_email("Contacts", contact(crm_server), email("a@x", attachments=attachments))
    with pytest.raises(CrmRejected) as caught:
        crm.associate_email("Contacts", contact(crm_server), email("b@x", attachments=attachments))
    assert caught.value.code == "INVALID_DATA" and "file id is improper" in str(caught.value)


def test_spec_violation_is_rejected_with_zoho_code(crm: ZohoCrm, crm_server: SandboxServer) -> None:
    """A body missing a mandatory key is CrmRejected MANDATORY_NOT_FOUND (wrapped envelope)."""
    entry = email()
    del entry["subject"]
    with pytest.raises(CrmRejected) as caught:
        crm.associate_email("Contacts", contact(crm_server), entry)
    assert caught.value.code == "MANDATORY_NOT_FOUND" and caught.value.status == 400
    assert len(crm_server.violations) == 1


def test_attachments_over_10mb_are_rejected(crm: ZohoCrm, crm_server: SandboxServer) -> None:
    """FILE_SIZE_EXCEEDS is this message's problem: CrmRejected."""
    ids = crm.upload_files([Upload("a.bin", b"x" * (6 * 1024 * 1024)), Upload("b.bin", b"x" * (5 * 1024 * 1024))])
    with pytest.raises(CrmRejected) as caught:
        crm.associate_email("Contacts", contact(crm_server), email(attachments=[{"id": i, "name": "f"} for i in ids]))
    assert caught.value.code == "FILE_SIZE_EXCEEDS"


def test_owner_without_admin_is_an_org_error() -> None:
    """NO_PERMISSION (403) for owner when the configured user is no admin: CrmOrgError."""
    with SandboxServer(admin=False) as server:
        (record_id,) = server.seed("Contacts", [{"Last_Name": "X", "Email": "x@example.com"}])
        with ZohoCrm(settings_for(server)) as crm, pytest.raises(CrmOrgError) as caught:
            crm.associate_email("Contacts", record_id, email(owner={"id": server.org.users[1]["id"]}))
    assert caught.value.code == "NO_PERMISSION" and caught.value.status == 403


@pytest.mark.parametrize(
    ("status", "body", "error", "code"),
    [
        (401, {"code": "OAUTH_SCOPE_MISMATCH", "details": {}, "message": "invalid oauth scope", "status": "error"}, CrmOrgError, "OAUTH_SCOPE_MISMATCH"),
        (400, {"Emails": [{"code": "STORAGE_SPACE_EXCEEDS", "details": {}, "message": "storage space exceeds", "status": "error"}]}, CrmOrgError, "STORAGE_SPACE_EXCEEDS"),
        (400, {"code": "INVALID_MODULE", "details": {}, "message": "permission denied to access the api", "status": "error"}, CrmRejected, "INVALID_MODULE"),
        (400, {"Emails": [{"code": "INVALID_DATA", "details": {"api_name": "owner"}, "message": "Provide a Proper owner id", "status": "error"}]}, CrmRejected, "INVALID_DATA"),
        (400, "<html>Bad Request</html>", CrmRejected, ""),
        (500, None, CrmTransientError, "INTERNAL_ERROR"),
        (429, None, CrmTransientError, "TOO_MANY_REQUESTS"),
        (502, "<html>Bad Gateway</html>", CrmTransientError, ""),
    ],
)
def test_error_answers_map_to_error_classes(
    crm: ZohoCrm, crm_server: SandboxServer, status: int, body: object, error: type[CrmError], code: str
) -> None:
    """Both envelopes and non-JSON bodies map by status and code; associate is never retried."""
    crm_server.inject(ASSOCIATE, status=status, body=body)
    with pytest.raises(error) as caught:
        crm.associate_email("Contacts", contact(crm_server), email())
    assert type(caught.value) is error and caught.value.code == code and caught.value.status == status
    assert crm.calls["associate_email"] == 1 and crm_server.received() == []


def test_reset_before_processing_is_outcome_unknown_and_nothing_stored(crm: ZohoCrm, crm_server: SandboxServer) -> None:
    """A dropped connection after sending is CrmOutcomeUnknown, even if Zoho did not apply it."""
    crm_server.inject(ASSOCIATE, reset_before=True)
    with pytest.raises(CrmOutcomeUnknown):
        crm.associate_email("Contacts", contact(crm_server), email())
    assert crm_server.received() == [] and crm.calls["associate_email"] == 1


def test_reset_after_processing_is_outcome_unknown_and_resend_is_duplicate(crm: ZohoCrm, crm_server: SandboxServer) -> None:
    """Zoho applied it but the answer was lost: unknown outcome; a resend proves it via DUPLICATE_DATA."""
    crm_server.inject(ASSOCIATE, reset_after=True)
    with pytest.raises(CrmOutcomeUnknown):
        crm.associate_email("Contacts", contact(crm_server), email())
    assert len(crm_server.received()) == 1
    assert crm.associate_email("Contacts", contact(crm_server), email()).duplicate


def test_slow_answer_is_outcome_unknown(crm_settings: CrmSettings, crm_server: SandboxServer) -> None:
    """A read timeout after sending is CrmOutcomeUnknown."""
    # 2 s for check()'s token refresh and read to succeed on a loaded machine; the held answer comes
    # only when the sandbox stops, long after the client has given up.
    with ZohoCrm(replace(crm_settings, timeout=2.0)) as crm:
        crm.check()
        crm_server.inject(ASSOCIATE, delay=60.0)
        with pytest.raises(CrmOutcomeUnknown):
            crm.associate_email("Contacts", contact(crm_server), email())


def test_unreachable_server_is_transient(crm_settings: CrmSettings) -> None:
    """Connection refused means nothing was sent: plain CrmTransientError, not an unknown outcome."""
    with SandboxServer() as server:
        dead = server.url
    with ZohoCrm(replace(crm_settings, api_domain=dead, accounts_url=dead), sleep=lambda _s: None) as crm:
        with pytest.raises(CrmTransientError) as caught:
            crm.check()
    assert not isinstance(caught.value, CrmOutcomeUnknown)


def test_secrets_never_appear_in_errors_or_reprs(crm_settings: CrmSettings, crm_server: SandboxServer) -> None:
    """Neither client secret nor refresh token nor access token leaks into exception text or repr."""
    _, secret, refresh = crm_server.credentials()
    texts = [repr(crm_settings)]
    with ZohoCrm(crm_settings) as crm:
        crm.check()
        texts += [repr(crm), repr(crm._tokens)]
        access = crm._tokens.token()
    for bad in (replace(crm_settings, refresh_token=Secret(refresh + "x")), replace(crm_settings, client_secret=Secret("s3cr3t"))):
        with ZohoCrm(bad) as crm, pytest.raises(CrmError) as caught:
            crm.check()
        texts += [str(caught.value), repr(caught.value)]
    crm_server.inject(ASSOCIATE, reset_after=True)
    with ZohoCrm(crm_settings) as crm, pytest.raises(CrmError) as caught:
        crm.associate_email("Contacts", contact(crm_server), email())
    texts += [str(caught.value), repr(caught.value)]
    for text in texts:
        for secret_value in (secret, refresh, access, "s3cr3t"):
            assert secret_value not in text


def test_find_by_emails_quotes_and_matches_every_email_field(crm: ZohoCrm, crm_server: SandboxServer):
    """COQL lookups escape quotes, match any email field exactly (case aside) and keep near-misses out."""
    (obrien,) = crm_server.seed("Leads", [{"Last_Name": "O'Brien", "Full_Name": "Ann O'Brien", "Email": "ann.o'brien@x.example"}])
    found = crm.find_by_emails("Leads", ["Ann.O'Brien@x.example", "lena@prospect.example"])
    assert sorted((r.id, r.name) for r in found) == sorted([(obrien, "Ann O'Brien"), (crm_server.lead_ids[0], "Lena Lead")])
    near = crm.find_by_emails("Contacts", ["bob@example.com.au"])
    assert [(r.id, r.email) for r in near] == [(crm_server.contact_ids[1], "BOB@example.com.au")]
    assert crm_server.violations == []


def test_find_by_emails_skips_modules_without_email_fields(crm: ZohoCrm):
    """Accounts have no email field: no query is made and nothing is found."""
    assert crm.find_by_emails("Accounts", ["bob@example.com"]) == []
    assert crm.calls.get("coql", 0) == 0 and crm.calls["fields"] == 1
