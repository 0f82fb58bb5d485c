"""The units in a booted systemd container: they start, reach READY, sync, are restarted by the watchdog, stop cleanly.

Slow (SYNCD_SLOW_TESTS=1). A Debian tree with systemd is debootstrapped once (cached, see
tests.deploy.images) and booted with `systemd-nspawn --boot --volatile=overlay`, so every run
starts from the same pristine tree. syncd is installed from wheels built outside the container,
the unit files are bind-mounted from deploy/systemd, the secrets sit in /etc/credstore. The
container shares the host's network, so it reaches the test's Dovecot and sandbox CRM on loopback.
"""

from __future__ import annotations

import secrets
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from syncd.sandbox import SandboxServer
from tests.deploy.conftest import deployment, imap_of, slow
from tests.deploy.images import SYSTEMD, debian_tree, need
from tests.fixtures.dovecot import ImapUser
from tests.fixtures.wait import wait_until
from tests.test_pipeline import OWN, mail

REPO = Path(__file__).parents[2]
NSPAWN = ["systemd-nspawn", "--quiet", "--register=no", "--keep-unit", "--volatile=overlay"]


def install_syncd(tree: Path, tmp: Path) -> Path:
    """A venv at /opt/syncd for the tree's own Python, from wheels built on the host."""
    wheels, venv = tmp / "wheels", tmp / "opt-syncd"
    venv.mkdir()
    subprocess.run([str(REPO / "deploy/container/build"), "--wheelhouse", str(wheels)], check=True, capture_output=True)
    subprocess.run([*NSPAWN, "-D", str(tree), f"--bind={venv}:/opt/syncd", f"--bind-ro={wheels}:/wheels",
                    "sh", "-c", "python3 -m venv /opt/syncd && /opt/syncd/bin/pip install --quiet --no-index "
                                "--find-links=/wheels --requirement=/wheels/requirements.txt"],
                   check=True, capture_output=True)
    return venv


class Machine:
    """A booted container; ``run`` executes a command inside it (nsenter into its PID 1)."""

    def __init__(self, proc: subprocess.Popen, console: Path):
        self.proc = proc
        self.console = console

    @property
    def leader(self) -> int | None:
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        pids = children.read_text().split() if children.exists() else []
        return int(pids[0]) if pids else None

    def run(self, *cmd: str) -> subprocess.CompletedProcess:
        return subprocess.run(["nsenter", "-t", str(self.leader), "-a", *cmd], capture_output=True, text=True)

    def show(self, unit: str, prop: str) -> str:
        return self.run("systemctl", "show", "--value", "-p", prop, unit).stdout.strip()

    def booted(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"the container exited: {self.console.read_text()[-2000:]}")
        return self.leader is not None and self.run("systemctl", "is-system-running").stdout.strip() in ("running", "degraded")


@pytest.fixture
def machine(tmp_path: Path) -> Iterator:
    need("systemd-nspawn", "nsenter")
    tree = debian_tree("bookworm-systemd", SYSTEMD)
    venv = install_syncd(tree, tmp_path)
    booted: list[Machine] = []

    def boot(*binds: str) -> Machine:
        console = tmp_path / "console.log"
        with console.open("w") as out:
            proc = subprocess.Popen([*NSPAWN, "--boot", "--console=read-only", "-D", str(tree),
                                     f"--machine=syncd-test-{secrets.token_hex(3)}", f"--bind-ro={venv}:/opt/syncd", *binds],
                                    stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        booted.append(Machine(proc, console))
        wait_until(booted[-1].booted, "the container to boot", timeout=60)
        return booted[-1]

    yield boot
    for m in booted:
        if m.proc.poll() is None:
            m.proc.terminate()  # nspawn asks the container's systemd to power off
            try:
                m.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                m.proc.kill()


def dropin(tmp: Path, name: str, text: str) -> Path:
    folder = tmp / name
    folder.mkdir()
    (folder / "test.conf").write_text(f"[Service]\n{text}")
    return folder


def started_ready(m: Machine, unit: str) -> None:
    """`systemctl start` of a Type=notify unit returns once syncd sent READY=1."""
    start = m.run("systemctl", "start", unit)
    assert start.returncode == 0, start.stderr + m.run("journalctl", "-u", unit, "--no-pager").stdout
    assert m.show(unit, "SubState") == "running"


def stopped_cleanly(m: Machine, unit: str, secrets_: tuple[str, ...]) -> None:
    """`systemctl stop`: SIGTERM, syncd exits 0 by itself, its log ends with "stopped" and holds no secret."""
    assert m.run("systemctl", "stop", unit).returncode == 0
    assert (m.show(unit, "ActiveState"), m.show(unit, "Result"), m.show(unit, "ExecMainStatus")) == ("inactive", "success", "0")
    journal = m.run("journalctl", "-u", unit, "--no-pager", "-o", "cat").stdout
    assert '"event": "stopped"' in journal
    assert not any(secret in journal for secret in secrets_)


def user_of(m: Machine, unit: str) -> str:
    return m.run("stat", "-c", "%U", f"/proc/{m.show(unit, 'MainPID')}").stdout.strip()


@slow
@pytest.mark.timeout(900)
def test_units_in_a_booted_container(machine, tmp_path: Path, imap_user: ImapUser, crm_server: SandboxServer, tarpit: int):
    """syncd@sales: READY, syncs as its own user, stops cleanly; syncd@stuck (hung IMAP) is restarted by the watchdog;
    syncd.service too, and a config error fails it without restarts."""
    started = time.monotonic()
    imap_user.append("INBOX", bytes(mail("bob@example.com", OWN, "From a unit", message_id="<unit@x>")))
    hung = ("127.0.0.1", tarpit, "u", secrets.token_hex(8))
    dep = deployment(tmp_path, crm_server, {"sales": imap_of(imap_user), "stuck": hung}, timeout=600)
    for path in [dep.etc, *dep.etc.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)  # the config is public; the secrets stay root's
    units = "/etc/systemd/system"
    # A short watchdog for the hung instance (its stop does not wait for the hung server).
    stuck = dropin(tmp_path, "stuck", "WatchdogSec=3s\nRestartSec=1s\n")
    everything = dropin(tmp_path, "all", "LoadCredential=sales\n")
    m = machine(f"--bind-ro={dep.etc}:/etc/syncd", f"--bind-ro={dep.credstore}:/etc/credstore",
                *(f"--bind-ro={REPO / 'deploy/systemd' / unit}:{units}/{unit}" for unit in ("syncd@.service", "syncd.service")),
                f"--bind-ro={stuck}:{units}/syncd@stuck.service.d", f"--bind-ro={everything}:{units}/syncd.service.d")
    print(f"\nbooted in {time.monotonic() - started:.1f} s")

    started_ready(m, "syncd@sales")
    wait_until(lambda: crm_server.received(), "syncd@sales to associate the message")
    assert [e.original_message_id for e in crm_server.received()] == ["unit@x"]
    wait_until(lambda: "sales: last pass" in m.show("syncd@sales", "StatusText"), "a STATUS= after the pass")
    assert user_of(m, "syncd@sales") == "syncd-sales"
    assert m.run("test", "-s", "/var/lib/private/syncd-sales/ledger.sqlite3").returncode == 0

    started_ready(m, "syncd@stuck")
    assert user_of(m, "syncd@stuck") == "syncd-stuck"
    wait_until(lambda: int(m.show("syncd@stuck", "NRestarts") or 0) >= 1, "the watchdog to restart syncd@stuck")
    journal = m.run("journalctl", "-u", "syncd@stuck", "--no-pager").stdout
    assert "Watchdog timeout" in journal and "pass_stalled" in journal
    wait_until(lambda: m.show("syncd@stuck", "SubState") == "running", "syncd@stuck to be running again")
    stopped_cleanly(m, "syncd@stuck", dep.secrets)
    stopped_cleanly(m, "syncd@sales", dep.secrets)

    # Every mailbox in one process: the hung one goes, so that this unit can stop cleanly too.
    (dep.etc / "mailboxes.d" / "stuck.toml").unlink()
    started_ready(m, "syncd.service")
    assert user_of(m, "syncd.service") == "syncd"
    wait_until(lambda: "sales: last pass" in m.show("syncd.service", "StatusText"), "syncd.service's first pass")
    assert [e.original_message_id for e in crm_server.received()] == ["unit@x"], "sent twice"
    stopped_cleanly(m, "syncd.service", dep.secrets)

    # A configuration error (exit 2) fails the unit for good: a restart could not fix it.
    config = dep.etc / "syncd.toml"
    config.write_text(config.read_text().replace("[crm]\n", "[crm]\nmisspelt_key = 1\n", 1))
    assert m.run("systemctl", "start", "syncd.service").returncode != 0
    assert (m.show("syncd.service", "ActiveState"), m.show("syncd.service", "Result"),
            m.show("syncd.service", "ExecMainStatus")) == ("failed", "exit-code", "2")
    journal = m.run("journalctl", "-u", "syncd.service", "--no-pager", "-o", "cat").stdout
    assert "crm.misspelt_key" in journal
    print(f"nspawn test body: {time.monotonic() - started:.1f} s")
