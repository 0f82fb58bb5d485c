"""A Zoho CRM test server: real HTTP on loopback, Zoho's envelopes and status codes.

Shipped with syncd so users can try it without an org (``syncd sandbox``) and so tests
drive the real client over real sockets. It keeps an in-memory org (``state``), checks
every request against Zoho's OpenAPI specs (``validate``) and can be told to misbehave
(``SandboxServer.inject``): 5xx, 429, connection resets, slow answers.
"""

from syncd.sandbox.server import SandboxServer, serve
from syncd.sandbox.state import StoredEmail
from syncd.sandbox.validate import Violation

__all__ = ["SandboxServer", "StoredEmail", "Violation", "serve"]
