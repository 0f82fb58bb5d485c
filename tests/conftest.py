"""Shared fixtures: a real Dovecot (tests.fixtures.dovecot) and the Zoho CRM test server (tests.fixtures.crm)."""
from tests.fixtures.dovecot import dovecot, imap_user  # noqa: F401
from tests.fixtures.crm import crm_server, crm_settings  # noqa: F401
