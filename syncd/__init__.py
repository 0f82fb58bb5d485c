"""syncd: IMAP mailboxes into Zoho CRM's email history, each message once."""

__version__ = "0.1.0"
