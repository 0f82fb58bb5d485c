"""Lookup economy against the sandbox CRM over HTTP: cache, batching, fallback, counted calls."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from syncd.crm.zoho import READ_ATTEMPTS, ZohoCrm
from syncd.email import Address
from syncd.errors import CrmOrgError, CrmTransientError
from syncd.lookup import RecordLookup
from syncd.sandbox import SandboxServer
from syncd.settings import CrmSettings, MatchSettings

PEOPLE = [Address(f"P{i}", f"p{i}@customers.example") for i in range(120)]


@pytest.fixture
def crm(crm_server: SandboxServer, crm_settings: CrmSettings) -> Iterator[ZohoCrm]:
    crm_server.seed("Contacts", [{"Last_Name": f"C{i}", "Email": f"p{i}@customers.example"} for i in range(0, 120, 2)])
    crm_server.seed("Leads", [{"Last_Name": f"L{i}", "Email": f"P{i}@Customers.example"} for i in range(1, 120, 4)])
    with ZohoCrm(crm_settings) as client:
        yield client


def test_batched_lookup_of_many_addresses_costs_a_few_queries(crm: ZohoCrm, crm_server: SandboxServer):
    """120 addresses in two modules: one field-metadata call and 3 COQL queries per module, not 240 searches."""
    found = RecordLookup(crm).records(PEOPLE, MatchSettings())
    assert sum(1 for rs in found.values() if rs) == 90
    assert [r.module for r in found["p1@customers.example"]] == ["Leads"]
    calls = crm.calls
    assert calls.get("search", 0) == 0 and calls["fields"] == 2
    # 120 lower-case addresses, at most 50 values per `in`: 3 queries per module
    assert calls["coql"] == 6
    assert crm_server.violations == []


def test_unbatched_lookup_searches_each_spelling(crm: ZohoCrm):
    """With batch_lookups off, each address is searched in each module (the "before" of the benchmark)."""
    found = RecordLookup(crm).records(PEOPLE[:10], MatchSettings(batch_lookups=False))
    assert sum(1 for rs in found.values() if rs) == 8
    assert crm.calls["search"] == 2 * 10 and crm.calls.get("coql", 0) == 0


def test_answers_are_cached_until_they_expire(crm: ZohoCrm, crm_server: SandboxServer):
    """A second lookup within cache_ttl asks nothing; after it, asking again sees a record created meanwhile."""
    now = [0.0]
    lookup = RecordLookup(crm, clock=lambda: now[0])
    policy = MatchSettings(cache_ttl=60)
    stranger = [Address("", "late@customers.example")]
    assert lookup.records(stranger, policy) == {"late@customers.example": []}
    spent = dict(crm.calls)
    crm_server.seed("Leads", [{"Last_Name": "Late", "Email": "late@customers.example"}])
    assert lookup.records(stranger, policy) == {"late@customers.example": []}
    assert crm.calls == spent
    now[0] = 61.0
    assert [r.module for r in lookup.records(stranger, policy)["late@customers.example"]] == ["Leads"]


def test_refused_coql_falls_back_to_search(crm: ZohoCrm, crm_server: SandboxServer):
    """A module where COQL is refused (scope mismatch) is searched address by address from then on, and still matches."""
    crm_server.inject(r"/coql", status=401, body={"code": "OAUTH_SCOPE_MISMATCH", "details": {},
                                                 "message": "invalid oauth scope", "status": "error"})
    lookup = RecordLookup(crm)
    found = lookup.records(PEOPLE[:4], MatchSettings())
    assert [bool(found[a.addr]) for a in PEOPLE[:4]] == [True, True, True, False]
    assert crm.calls["coql"] == 2 and crm.calls["search"] == 4  # Contacts: refused, then 4 searches; Leads: COQL
    lookup.records(PEOPLE[4:8], MatchSettings())
    assert crm.calls["coql"] == 3 and crm.calls["search"] == 8


def test_transient_failures_reach_the_caller(crm_server: SandboxServer, crm_settings: CrmSettings):
    """A CRM answering 503 to every try raises CrmTransientError and caches nothing: the next lookup asks again."""
    crm_server.seed("Contacts", [{"Last_Name": "P0", "Email": "p0@customers.example"}])
    crm_server.inject(r"/coql", status=503, times=READ_ATTEMPTS)
    with ZohoCrm(crm_settings, sleep=lambda _: None) as client:
        lookup = RecordLookup(client)
        with pytest.raises(CrmTransientError):
            lookup.records(PEOPLE[:2], MatchSettings())
        found = lookup.records(PEOPLE[:2], MatchSettings())
    assert found["p0@customers.example"] and not found["p1@customers.example"]


def test_strip_plus_tags_keys_share_one_record(crm: ZohoCrm):
    """With strip_plus_tags, p0+news@ and p0@ are one key whose record is found by the untagged spelling."""
    policy = replace(MatchSettings(), strip_plus_tags=True)
    found = RecordLookup(crm).records([Address("", "p0+news@customers.example")], policy)
    assert [r.email for r in found["p0@customers.example"]] == ["p0@customers.example"]


def test_unknown_module_is_a_clear_configuration_error(crm: ZohoCrm):
    """A misspelt module pauses lookups with CrmOrgError naming it and the setting, batched or not."""
    for batch in (True, False):
        with pytest.raises(CrmOrgError, match=r"Zoho has no module 'Contact': check match.modules"):
            RecordLookup(crm).records(PEOPLE[:1], MatchSettings(modules=("Contact",), batch_lookups=batch))


def test_check_says_how_each_module_is_looked_up(crm: ZohoCrm, crm_server: SandboxServer):
    """`check` finds a misspelt module, and says when COQL is refused and searches stand in."""
    lookup = RecordLookup(crm)
    assert lookup.check("Contacts") == (True, "record lookups batched (COQL)")
    good, detail = lookup.check("Contact")
    assert not good and "Zoho has no module 'Contact'" in detail
    crm_server.inject(r"/coql", status=401, body={"code": "OAUTH_SCOPE_MISMATCH", "details": {},
                                                 "message": "invalid oauth scope", "status": "error"})
    good, detail = lookup.check("Leads")
    assert good and "COQL refused (OAUTH_SCOPE_MISMATCH)" in detail and "ZohoCRM.coql.READ" in detail


def test_syncd_check_lists_the_lookup_of_every_configured_module(tmp_path: Path, crm_server: SandboxServer):
    """`syncd check` prints one line per configured module and fails on one Zoho does not have."""
    client_id, client_secret, refresh_token = crm_server.credentials()
    (tmp_path / "m").mkdir()
    config = tmp_path / "syncd.toml"
    config.write_text(f'[crm]\nclient_id = "{client_id}"\nclient_secret = "{client_secret}"\n'
                      f'refresh_token = "{refresh_token}"\napi_domain = "{crm_server.url}"\n'
                      f'accounts_url = "{crm_server.url}"\n[ledger]\npath = "l.sqlite3"\n'
                      '[match]\nmodules = ["Contacts", "Leeds"]\n[[mailbox]]\nname = "m"\nmbox = "m/box.mbox"\n')
    (tmp_path / "m" / "box.mbox").write_bytes(b"")
    done = subprocess.run([sys.executable, "-m", "syncd", "check", "-c", str(config)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 1
    assert re.search(r"ok\s+crm module Contacts: record lookups batched", done.stdout)
    assert re.search(r"FAIL\s+crm module Leeds: Zoho has no module 'Leeds'", done.stdout)
