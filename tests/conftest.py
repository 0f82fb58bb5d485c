"""Shared fixtures: a real Dovecot (tests.fixtures.dovecot) and the Zoho CRM test server (tests.fixtures.crm)."""
