"""IMAP going wrong under syncd: Dovecot restarted or the user kicked mid-run, a server that never answers,
folders deleted or renamed, messages expunged between SEARCH and FETCH, messages over the size cap,
UIDVALIDITY resets. Nothing is lost, nothing is sent twice, the other folders and mailboxes go on."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from pathlib import Path

from syncd.ledger.sqlite import SqliteLedger
from syncd.sandbox import SandboxServer
from syncd.source.imap import ImapSource
from tests.faults.conftest import SOAK
from tests.faults.daemon import all_final, copies, daemon, write_config
from tests.fixtures.crm import Hold
from tests.fixtures.dovecot import Dovecot, ImapUser
from tests.fixtures.wait import wait_until
from tests.test_pipeline import OWN, mail, syncd



def _mails(prefix: str, n: int, *, sender: str = "bob@example.com") -> list[bytes]:
    return [bytes(mail(sender, OWN, f"{prefix} {i}", f"body {i}", message_id=f"<{prefix}{i}@imap.example>"))
            for i in range(n)]


def _ids(server: SandboxServer) -> list[str]:
    return sorted(e.original_message_id for e in server.received())


def _writes(server: SandboxServer) -> int:
    return sum(1 for method, path in server.requests if method == "POST" and "associate_email" in path)


def _events(stderr: str, name: str) -> list[dict]:
    return [e for e in (json.loads(line) for line in stderr.splitlines() if line.startswith("{")) if e.get("event") == name]


# -- the server goes away -----------------------------------------------------------------------------

def test_dovecot_restart_and_kick_mid_run_lose_and_duplicate_nothing(tmp_path: Path, dovecot: Dovecot,
                                                                     imap_user: ImapUser, crm_server: SandboxServer):
    """`syncd run` fetching in batches of 2 survives a Dovecot restart and a kick of its user: every message lands once."""
    config = write_config(tmp_path / "syncd.toml", crm_server, {"sales": imap_user}, timeout=60,
                          extra="batch_size = 2\n")
    imap_user.append_many("INBOX", _mails("r", 30))
    # The 7th and the 15th sends are held while Dovecot restarts and while the user is kicked, so both land
    # mid-run, with batches left to FETCH (unheld, 30 small messages can all be in before the test looks).
    restart_at = Hold(crm_server, r"associate_email", nth=7)
    kick_at = Hold(crm_server, r"associate_email", nth=15)
    with daemon(config) as d:
        wait_until(restart_at.arrived.is_set, "6 messages in and the 7th held", proc=d.proc)
        dovecot.restart()
        restart_at.release()
        wait_until(kick_at.arrived.is_set, "14 messages in and the 15th held", proc=d.proc)
        dovecot.kick(imap_user.username)
        kick_at.release()
        wait_until(lambda: len(crm_server.received()) == 30 and all_final(config, 30), "30 messages final", proc=d.proc)
    assert max(copies(crm_server).values()) == 1
    assert _ids(crm_server) == sorted(f"r{i}@imap.example" for i in range(30))
    lost = [e for e in d.events if e.get("event") == "pass_failed"]
    assert len(lost) >= 2, "the restart and the kick must each have cut a pass short"
    print(f"\nIMAP faults: 1 Dovecot restart + 1 kick, {len(lost)} pass(es) cut short, "
          f"30/30 delivered, {_writes(crm_server) - 30} resends")


def test_server_that_never_answers_times_out_and_the_other_mailbox_goes_on(tmp_path: Path, imap_user: ImapUser,
                                                                            crm_server: SandboxServer):
    """A mailbox whose server accepts but never greets fails after its timeout, naming itself; the other is synced."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # the kernel completes the handshakes; nobody ever speaks
    try:
        config = write_config(tmp_path / "syncd.toml", crm_server, {"sales": imap_user})
        config.write_text(config.read_text() + f"""
[[mailbox]]
name = "silent"
host = "127.0.0.1"
port = {silent.getsockname()[1]}
security = "none"
username = "nobody"
password = "x"
timeout = 1
""")
        imap_user.append_many("INBOX", _mails("t", 2))
        done = syncd("once", "-c", str(config), timeout=30)
    finally:
        silent.close()
    assert done.returncode == 1
    assert "silent" in done.stdout and "timed out" in (done.stdout + done.stderr)
    assert _ids(crm_server) == ["t0@imap.example", "t1@imap.example"]


class StallingProxy:
    """A TCP relay to Dovecot whose open connections can be frozen: no byte lost, none delivered, no close
    (a dead NAT entry or a hung server). Connections opened afterwards work again."""

    def __init__(self, port: int):
        self._upstream = ("127.0.0.1", port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._generation = 0
        self._frozen = -1
        self._closed = threading.Event()
        self.holding = threading.Event()
        """Set once a frozen connection has bytes to relay: its peer now waits for an answer that never comes."""
        threading.Thread(target=self._accept, daemon=True).start()

    def freeze(self) -> None:
        """Every connection open now stops relaying for good."""
        self._frozen = self._generation

    def close(self) -> None:
        self._closed.set()
        self._listener.close()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self._generation += 1
            upstream = socket.create_connection(self._upstream)
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst, self._generation), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, generation: int) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                if generation <= self._frozen:
                    self.holding.set()
                    self._closed.wait()  # hold the bytes: the peer waits until its own timeout
                    return
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)


def test_sigterm_does_not_wait_for_a_hung_server(tmp_path: Path, imap_user: ImapUser, crm_server: SandboxServer):
    """SIGTERM while the IMAP connection hangs mid-run exits 0 without waiting out the 600 s IMAP timeout
    (the pass blocked in IMAP has nothing half-sent); the next start delivers the rest, each message once."""
    proxy = StallingProxy(imap_user.port)
    try:
        config = write_config(tmp_path / "syncd.toml", crm_server, {"sales": imap_user}, timeout=60,
                              extra="batch_size = 2\n")
        config.write_text(config.read_text().replace(f"port = {imap_user.port}", f"port = {proxy.port}")
                          .replace("timeout = 5\n", "timeout = 600\n"))  # the mailbox's (the CRM's is 60)
        imap_user.append_many("INBOX", _mails("s", 12))
        first = Hold(crm_server, r"associate_email")  # the freeze lands while batches remain to FETCH
        with daemon(config) as d:  # its stop waits 60 s at most for exit 0
            wait_until(first.arrived.is_set, "the first send to be held", proc=d.proc)
            proxy.freeze()
            first.release()
            wait_until(lambda: len(crm_server.received()) >= 2, "the first batch in", proc=d.proc)
            wait_until(proxy.holding.is_set, "the pass to hang on its next FETCH", proc=d.proc)
        assert any(e.get("event") == "left_reading" and e.get("mailboxes") == ["sales"] for e in d.events)
        done = syncd("once", "-c", str(config))
    finally:
        proxy.close()
    assert done.returncode == 0, done.stdout + done.stderr
    assert len(crm_server.received()) == 12 and max(copies(crm_server).values()) == 1


def test_connection_that_hangs_mid_run_times_out_and_the_next_poll_goes_on(tmp_path: Path, imap_user: ImapUser,
                                                                            crm_server: SandboxServer):
    """An IMAP connection frozen mid-run (no answer, no close) times out after the mailbox's timeout; the next poll reconnects and every message lands once."""
    proxy = StallingProxy(imap_user.port)
    try:
        config = write_config(tmp_path / "syncd.toml", crm_server, {"sales": imap_user}, timeout=60,
                              extra="batch_size = 2\n")
        config.write_text(config.read_text().replace(f"port = {imap_user.port}", f"port = {proxy.port}")
                          .replace("timeout = 5\n", "timeout = 2\n"))  # the mailbox's (the CRM's is 60)
        imap_user.append_many("INBOX", _mails("h", 12))
        # The first send is held until the freeze: it lands while the pass still has batches to FETCH
        # (unheld, 12 small messages can all be in before the test looks).
        first = Hold(crm_server, r"associate_email")
        with daemon(config) as d:
            wait_until(first.arrived.is_set, "the first send to be held", proc=d.proc)
            proxy.freeze()
            first.release()
            wait_until(lambda: len(crm_server.received()) == 12 and all_final(config, 12), "12 messages final",
                       proc=d.proc)
    finally:
        proxy.close()
    assert max(copies(crm_server).values()) == 1
    failed = [e for e in d.events if e.get("event") == "pass_failed"]
    assert failed and "timed out" in failed[0]["error"]


# -- folders and messages that disappear --------------------------------------------------------------

def test_renamed_folder_keeps_its_checkpoint_and_the_others_go_on(tmp_path: Path, imap_user: ImapUser,
                                                                  crm_server: SandboxServer):
    """A configured folder renamed away: exit 1 naming it, INBOX still synced, its checkpoint kept; back again, nothing resent."""
    imap_user.create_folder("Projects")
    config = write_config(tmp_path / "syncd.toml", crm_server, {"sales": imap_user},
                          extra='folders = ["INBOX", "Projects"]\n')
    imap_user.append_many("Projects", _mails("p", 3))
    assert syncd("once", "-c", str(config)).returncode == 0
    imap_user.rename_folder("Projects", "Projects-old")
    imap_user.append_many("INBOX", _mails("i", 2))
    gone = syncd("once", "-c", str(config))
    assert gone.returncode == 1 and "'Projects' does not exist" in gone.stdout
    assert _ids(crm_server) == sorted(["i0@imap.example", "i1@imap.example", "p0@imap.example", "p1@imap.example",
                                       "p2@imap.example"])
    led = SqliteLedger(tmp_path / "ledger.sqlite3")
    try:
        assert led.checkpoint("sales", "Projects") is not None
    finally:
        led.close()
    imap_user.rename_folder("Projects-old", "Projects")
    imap_user.append("Projects", _mails("q", 1)[0])
    writes = _writes(crm_server)
    assert syncd("once", "-c", str(config)).returncode == 0
    assert _writes(crm_server) == writes + 1 and "q0@imap.example" in _ids(crm_server)
    assert max(copies(crm_server).values()) == 1


def test_message_expunged_between_search_and_fetch_is_not_waited_for(tmp_path: Path, imap_user: ImapUser,
                                                                     crm_server: SandboxServer):
    """A message expunged after the SEARCH (while an earlier one is in the CRM) is passed over; the pass completes."""
    config = write_config(tmp_path / "syncd.toml", crm_server, {"sales": imap_user}, timeout=60,
                          extra="batch_size = 1\n")
    uids = imap_user.append_many("INBOX", _mails("x", 4))
    first = Hold(crm_server, r"associate_email")  # holds the pass at the first message until the expunge is done

    def expunge_while_held() -> None:
        try:
            if first.arrived.wait(60):
                imap_user.expunge("INBOX", uids[2])
        finally:
            first.release()

    expunged = threading.Thread(target=expunge_while_held)
    expunged.start()
    done = syncd("once", "-c", str(config))
    expunged.join()
    assert done.returncode == 0, done.stdout + done.stderr
    assert _ids(crm_server) == ["x0@imap.example", "x1@imap.example", "x3@imap.example"]
    verify = syncd("ledger", "verify", "-c", str(config))
    assert verify.returncode == 0 and f"checkpoint uid {uids[3]}, none missing" in verify.stdout


# -- over the size cap ----------------------------------------------------------------------------------

def test_message_over_the_cap_is_recorded_by_header_and_brought_in_after_raising_it(tmp_path: Path, imap_user: ImapUser,
                                                                                   crm_server: SandboxServer):
    """Over max_message_size: only its header is fetched, it is quarantined under its Message-ID; raised cap + retry delivers it."""
    config = write_config(tmp_path / "syncd.toml", crm_server, {"sales": imap_user}, extra="max_message_size = 4096\n")
    big = mail("bob@example.com", OWN, "Big one", "see attachment", message_id="<big@imap.example>")
    big.add_attachment(b"%PDF-1.4 " + b"x" * 20000, maintype="application", subtype="pdf", filename="big.pdf")
    uid = imap_user.append("INBOX", bytes(big))
    imap_user.append("INBOX", _mails("small", 1)[0])

    with ImapSource(imap_user.settings()) as source:
        source.select("INBOX")
        (raw, _) = source.fetch([uid, uid + 1], max_size=4096)
    assert raw.data is None and raw.size > 20000 and b"big@imap.example" in raw.header and len(raw.header) < 1000

    assert syncd("once", "-c", str(config)).returncode == 0
    assert _ids(crm_server) == ["small0@imap.example"]
    shown = syncd("ledger", "show", "big@imap.example", "-c", str(config)).stdout
    assert "quarantined" in shown and "max_message_size 4096" in shown and "Big one" in shown

    config.write_text(config.read_text().replace("max_message_size = 4096", "max_message_size = 1048576"))
    assert syncd("ledger", "retry", "big@imap.example", "-c", str(config)).returncode == 0
    assert syncd("once", "-c", str(config)).returncode == 0
    assert _ids(crm_server) == ["big@imap.example", "small0@imap.example"]
    (got,) = [e for e in crm_server.received() if e.original_message_id == "big@imap.example"]
    assert [a["name"] for a in got.payload["attachments"]] == ["big.pdf"]


# -- UIDVALIDITY ------------------------------------------------------------------------------------------

def _uidvalidity(user: ImapUser, folder: str) -> int:
    with user.client() as c:
        return c.select_folder(folder, readonly=True)[b"UIDVALIDITY"]


def test_uidvalidity_resets_rescan_and_resend_nothing(tmp_path: Path, dovecot: Dovecot, imap_user: ImapUser,
                                                      crm_server: SandboxServer):
    """Forced UIDVALIDITY changes (3, SYNCD_SOAK=N: 3N): each pass rescans, new mail still arrives, no associate call is repeated."""
    config = write_config(tmp_path / "syncd.toml", crm_server, {"sales": imap_user})
    imap_user.append_many("INBOX", _mails("u", 8))
    assert syncd("once", "-c", str(config)).returncode == 0
    resets = 3 * SOAK
    for k in range(resets):
        before = _uidvalidity(imap_user, "INBOX")
        dovecot.doveadm("mailbox", "update", "-u", imap_user.username, "--uid-validity", str(before + 1000), "INBOX")
        assert _uidvalidity(imap_user, "INBOX") == before + 1000
        imap_user.append("INBOX", _mails(f"n{k}-", 1)[0])
        done = syncd("once", "-c", str(config))
        assert done.returncode == 0, done.stderr
        assert _events(done.stderr, "uidvalidity_changed")
    resends = _writes(crm_server) - (8 + resets)
    print(f"\nUIDVALIDITY resets {resets}, resends {resends}")
    assert resends == 0 and len(crm_server.received()) == 8 + resets


def test_message_waiting_for_retry_across_a_reset_is_delivered_once_under_its_new_uid(
        tmp_path: Path, dovecot: Dovecot, imap_user: ImapUser, crm_server: SandboxServer):
    """A message in retry when UIDVALIDITY changes: its old row is settled as superseded, it lands once, no retry row is left."""
    config = write_config(tmp_path / "syncd.toml", crm_server, {"sales": imap_user})
    imap_user.append_many("INBOX", _mails("s", 2))
    crm_server.inject(r"associate_email", status=503)
    assert syncd("once", "-c", str(config)).returncode == 1
    before = _uidvalidity(imap_user, "INBOX")
    dovecot.doveadm("mailbox", "update", "-u", imap_user.username, "--uid-validity", str(before + 7), "INBOX")
    done = syncd("once", "-c", str(config))
    assert done.returncode == 0, done.stderr
    assert _events(done.stderr, "uidvalidity_changed")[0]["superseded"] >= 1
    assert _ids(crm_server) == ["s0@imap.example", "s1@imap.example"]
    assert "no messages" in syncd("ledger", "list", "--state", "retry", "-c", str(config)).stdout
    assert "superseded" in syncd("ledger", "show", "s0@imap.example", "-c", str(config)).stdout


def test_folder_replaced_with_fewer_messages_warns_and_resends_nothing(tmp_path: Path, imap_user: ImapUser,
                                                                       crm_server: SandboxServer):
    """A folder deleted and recreated (new UIDVALIDITY, new UIDs) with half its mail: a warning, old mail not resent, new mail sent."""
    imap_user.create_folder("Projects")
    config = write_config(tmp_path / "syncd.toml", crm_server, {"sales": imap_user},
                          extra='folders = ["Projects"]\n')
    mails = _mails("v", 10)
    imap_user.append_many("Projects", mails)
    assert syncd("once", "-c", str(config)).returncode == 0
    imap_user.delete_folder("Projects")
    imap_user.create_folder("Projects")
    imap_user.append_many("Projects", list(reversed(mails[:5])) + _mails("w", 1))
    done = syncd("once", "-c", str(config))
    assert done.returncode == 0, done.stderr
    (warning,) = _events(done.stderr, "known_messages_vanished")
    assert (warning["missing"], warning["known"]) == (4, 10)
    assert _writes(crm_server) == 11 and max(copies(crm_server).values()) == 1
