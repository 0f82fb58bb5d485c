"""Debian trees and images for the slow deployment tests, made locally and cached between runs.

A tree is debootstrapped once from the mirror apt already uses (no other network here)
into /var/cache/syncd-tests/NAME (big: kept outside the repo, rebuilt when its package
list changes). The container base is the trimmed Python tree, imported into podman.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from pathlib import Path

CACHE = Path(os.environ.get("SYNCD_TEST_CACHE", "/var/cache/syncd-tests"))
SUITE = "bookworm"
PYTHON = ("python3", "python3-venv")
SYSTEMD = ("systemd", "systemd-sysv", "dbus", "libnss-systemd", *PYTHON)
BASE_IMAGE = "localhost/syncd-test-base:bookworm"
TRIM = ("./var/cache/apt/", "./var/lib/apt/lists/", "./usr/share/doc/", "./usr/share/man/",
        "./usr/share/locale/", "./usr/share/info/")
"""What slim images leave out too: package caches and lists, docs, translations."""

# podman on this kind of machine: runc (crun cannot set up cgroups here) and rlimits no higher
# than the caller's, or runc fails with "error setting rlimit type 7: operation not permitted".
CONTAINERS_CONF = """\
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]
[engine]
runtime = "runc"
"""


def need(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        raise AssertionError(f"missing {', '.join(missing)}: run `bash tests/run` with SYNCD_SLOW_TESTS=1 to install them")


def debian_mirror() -> str:
    """The Debian archive apt is set up with (sources.list or deb822 .sources)."""
    files = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for file in files:
        text = file.read_text() if file.is_file() else ""
        for url in re.findall(r"^(?:deb\s+(?:\[[^]]*\]\s+)?|URIs:\s*)(\S+)", text, flags=re.M):
            if url.rstrip("/").endswith("/debian"):
                return url
    raise AssertionError("no Debian mirror in /etc/apt/sources.list*: debootstrap needs one")


def debian_tree(name: str, packages: tuple[str, ...]) -> Path:
    """A minbase Debian tree with ``packages``, debootstrapped on first use and cached."""
    need("debootstrap")
    tree = CACHE / name
    stamp = " ".join(sorted(packages))
    if (tree / ".syncd-packages").is_file() and (tree / ".syncd-packages").read_text() == stamp:
        return tree
    partial = CACHE / f"{name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    shutil.rmtree(tree, ignore_errors=True)
    CACHE.mkdir(parents=True, exist_ok=True)
    subprocess.run(["debootstrap", "--variant=minbase", f"--include={','.join(packages)}", SUITE, str(partial),
                    debian_mirror()], check=True, capture_output=True)
    (partial / ".syncd-packages").write_text(stamp)
    partial.rename(tree)  # only a finished tree gets the stable name
    return tree


def podman_env(tmp: Path) -> dict[str, str]:
    conf = tmp / "containers.conf"
    conf.write_text(CONTAINERS_CONF)
    return {**os.environ, "CONTAINERS_CONF": str(conf)}


def podman_base(env: dict[str, str]) -> str:
    """The local stand-in for python:3.11-slim: the trimmed Python tree, imported into podman once."""
    need("podman", "runc")
    tree = debian_tree(f"{SUITE}-python", PYTHON)
    stamp = (tree / ".syncd-packages").read_text() + " ".join(TRIM)
    tag = f"{BASE_IMAGE}-{hashlib.sha256(stamp.encode()).hexdigest()[:12]}"
    if subprocess.run(["podman", "image", "exists", tag], env=env).returncode != 0:
        excludes = [f"--exclude={path}*" for path in TRIM]
        tar = subprocess.Popen(["tar", "-C", str(tree), *excludes, "-c", "."], stdout=subprocess.PIPE)
        subprocess.run(["podman", "import", "-", tag], stdin=tar.stdout, env=env, check=True, capture_output=True)
        assert tar.wait() == 0
    return tag
