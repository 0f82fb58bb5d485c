"""Shared fixtures: a real Dovecot (tests.fixtures.dovecot) and the Zoho CRM test server (tests.fixtures.crm)."""
from tests.fixtures.dovecot import dovecot, imap_user  # noqa: F401
from tests.fixtures.crm import crm_server, crm_settings  # noqa: F401
from tests.fixtures.lock import lock_holder  # noqa: F401

# Every test's captured output is scanned for the secrets its fixtures hold (see the module).
pytest_plugins = ["tests.fixtures.secret_scan"]
