"""Benchmark: how long `syncd run` takes to exit after SIGTERM, idle and in the middle of a pass.

    .venv/bin/python -m bench.stop_time [--runs 10] [--messages 300] [--image localhost/syncd:latest]

Each run starts the daemon on a Maildir of N messages into the sandbox CRM (a fresh ledger, so the
first pass has work), sends SIGTERM either as soon as the first message is associated (busy:
syncd finishes that message and exits), after the first pass (idle), or after the first pass while
a second mailbox hangs on an IMAP server that never answers (hung: its 600 s timeout is not waited
out), and prints the time
from the signal to the exit, as a host process and, with --image, as PID 1 of that image
under podman (signal to `podman wait` returning; the image is built by deploy/container/build).
"""

from __future__ import annotations

import argparse
import mailbox
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from syncd.sandbox import SandboxServer
from tests.deploy.images import podman_env

CONFIG = """
[crm]
client_id = "{client_id}"
client_secret = "{client_secret}"
refresh_token = "{refresh_token}"
api_domain = "{url}"
accounts_url = "{url}"

[ledger]
path = "{ledger}"

[[mailbox]]
name = "bench"
maildir = "{maildir}"
addresses = ["me@ourco.example"]
poll_interval = 3600
"""

HUNG = """
[[mailbox]]
name = "hung"
host = "127.0.0.1"
port = {port}
security = "none"
username = "u"
password = "p"
timeout = 600
poll_interval = 3600
"""


def until(condition: Callable[[], bool], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit("timed out waiting for the daemon")
        time.sleep(0.01)


def one_run(root: Path, mode: str, image: str | None, env: dict[str, str]) -> float:
    """Seconds from SIGTERM to exit for one daemon started on a fresh ledger and a fresh sandbox CRM."""
    for old in root.glob("ledger.sqlite3*"):
        old.unlink()
    with SandboxServer() as crm, socket.create_server(("127.0.0.1", 0), backlog=16) as tarpit:
        crm.seed("Contacts", [{"Last_Name": "Buyer", "Full_Name": "Bob Buyer", "Email": "bob@example.com"}])
        client_id, client_secret, refresh_token = crm.credentials()
        (root / "syncd.toml").write_text(CONFIG.format(client_id=client_id, client_secret=client_secret,
                                                       refresh_token=refresh_token, url=crm.url,
                                                       ledger=root / "ledger.sqlite3", maildir=root / "Maildir")
                                          + (HUNG.format(port=tarpit.getsockname()[1]) if mode == "hung" else ""))
        return _signalled(root, crm, mode, image, env)


def _signalled(root: Path, crm: SandboxServer, mode: str, image: str | None, env: dict[str, str]) -> float:
    err = root / "stderr.log"
    if image:
        name = f"syncd-bench-{os.getpid()}"
        subprocess.run(["podman", "rm", "--force", "--volumes", name], env=env, capture_output=True)
        subprocess.run(["podman", "run", "--detach", "--name", name, "--network=host", "--read-only",
                        f"--volume={root}:{root}", image, "run", "-c", str(root / "syncd.toml")],
                       env=env, check=True, capture_output=True)
        logs = lambda: subprocess.run(["podman", "logs", name], env=env, capture_output=True, text=True).stderr  # noqa: E731
        signal_it = lambda: subprocess.run(["podman", "kill", "--signal=TERM", name], env=env, check=True,  # noqa: E731
                                           capture_output=True)
        wait = lambda: subprocess.run(["podman", "wait", name], env=env, check=True, capture_output=True)  # noqa: E731
    else:
        with err.open("w") as fh:
            proc = subprocess.Popen([sys.executable, "-m", "syncd", "--log-format", "json", "run", "-c",
                                     str(root / "syncd.toml")], stderr=fh)
        logs = err.read_text
        signal_it = lambda: proc.send_signal(signal.SIGTERM)  # noqa: E731
        wait = proc.wait
    try:
        if mode == "busy":
            until(lambda: len(crm.received()) > 0)
        else:
            until(lambda: '"pass_done"' in logs())
        started = time.perf_counter()
        signal_it()
        wait()
        return time.perf_counter() - started
    finally:
        if image:
            subprocess.run(["podman", "rm", "--force", "--volumes", name], env=env, capture_output=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--messages", type=int, default=300)
    parser.add_argument("--image", help="also measure this image under podman (syncd as PID 1)")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="syncd-stop-"))
    root.chmod(0o777)  # the image's uid 10001 writes the ledger here
    box = mailbox.Maildir(root / "Maildir")
    for i in range(args.messages):
        box.add(f"From: Bob <bob@example.com>\nTo: me@ourco.example\nSubject: {i}\n"
                f"Message-ID: <stop-{i}@bench>\n\nHello {i}.\n".encode())
    for path in [root / "Maildir", *(root / "Maildir").rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)  # readable by the image's uid 10001 too
    env = podman_env(root)
    for image in [None, args.image] if args.image else [None]:
        for mode in ("idle", "busy", "hung"):
            times = [one_run(root, mode, image, env) for _ in range(args.runs)]
            print(f"{'container ' + image if image else 'host process'}, {mode}: "
                  f"SIGTERM to exit median {statistics.median(times) * 1000:.0f} ms, "
                  f"max {max(times) * 1000:.0f} ms over {args.runs} runs")


if __name__ == "__main__":
    main()
