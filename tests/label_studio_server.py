"""A real Label Studio server for the tests, in its own virtual environment.

label-studio pins many packages (Django and friends) that must never enter the product's
environment, so it lives in a venv of its own, built once and cached:

    ~/.cache/tidal_dist/label-studio-venv      (TIDAL_LABEL_STUDIO_VENV overrides)
    python tests/label_studio_server.py        builds it (launch/test.sh runs this first)

`start(folder)` runs `label-studio start` on 127.0.0.1 with SQLite in `folder`, local files
served from `folder`, a known admin user and API token; the first start's migrated database is
cached next to the venv and copied for later ones.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

VERSION = "1.23.2"
# label-studio 1.23.2 passes sentry_sdk.init options that sentry-sdk 3 refuses at start-up
# ("Unknown option 'send_default_pii'"), and its requirements do not cap sentry-sdk.
REQUIREMENTS = (f"label-studio=={VERSION}", "sentry-sdk<3")
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "tidal_dist"
VENV = Path(os.environ.get("TIDAL_LABEL_STUDIO_VENV", CACHE / "label-studio-venv"))
TEMPLATE = CACHE / f"label-studio-{VERSION}-data"
USER, PASSWORD = "admin@example.com", "adminpass123"


def installed() -> bool:
    """The venv is built, with these requirements (an older build is rebuilt)."""
    stamp = VENV / ".complete"
    return stamp.exists() and stamp.read_text().split() == list(REQUIREMENTS)


def install(timeout: float = 1800) -> None:
    """Build the venv (once): python -m venv + pip install REQUIREMENTS."""
    if installed():
        return
    shutil.rmtree(VENV, ignore_errors=True)
    VENV.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True, timeout=300)
    subprocess.run([str(VENV / "bin" / "python"), "-m", "pip", "install", "-q", *REQUIREMENTS],
                   check=True, timeout=timeout)
    (VENV / ".complete").write_text("\n".join(REQUIREMENTS) + "\n")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    url: str
    process: subprocess.Popen
    log: Path
    document_root: Path

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, 15)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, 9)


def start(folder: Path, timeout: float = 600) -> Server:
    """A server with its database and document root in `folder`; waits until it answers."""
    data = folder / "label-studio-data"
    if TEMPLATE.is_dir():
        shutil.copytree(TEMPLATE, data)
    else:
        data.mkdir(parents=True)
    port = free_port()
    env = dict(os.environ)
    for name in list(env):
        if name.startswith(("PYTHON", "VIRTUAL_ENV")):
            env.pop(name)  # the product's paths must not leak into label-studio's interpreter
    env.update({"LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
                "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(folder),
                "LABEL_STUDIO_BASE_DATA_DIR": str(data), "DJANGO_DB": "sqlite",
                "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "false"})
    log = folder / "label-studio.log"
    process = subprocess.Popen(
        [str(VENV / "bin" / "label-studio"), "start", "--no-browser", "--host", "127.0.0.1",
         "--internal-host", "127.0.0.1", "--port", str(port), "--data-dir", str(data),
         "--username", USER, "--password", PASSWORD],
        env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        start_new_session=True)
    server = Server(f"http://127.0.0.1:{port}", process, log, folder)
    deadline = time.monotonic() + timeout
    import httpx

    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"label-studio exited ({process.returncode}):\n"
                               f"{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{server.url}/health", timeout=5).status_code == 200:
                if not TEMPLATE.is_dir():  # migrated, with the user: later starts copy it
                    save_template(data)
                return server
        except httpx.HTTPError:
            pass
        time.sleep(2)
    server.stop()
    raise RuntimeError(f"label-studio did not answer within {timeout:.0f} s:\n"
                       f"{log.read_text()[-3000:]}")


def save_template(data: Path) -> None:
    """The migrated data folder, its SQLite database copied through sqlite's backup API (the
    server is running), for later starts to copy instead of migrating again (minutes)."""
    import sqlite3

    partial = TEMPLATE.with_name(TEMPLATE.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(data, partial, ignore=shutil.ignore_patterns("*.sqlite3*"))
    for db in data.glob("*.sqlite3"):
        with sqlite3.connect(db) as src, sqlite3.connect(partial / db.name) as dst:
            src.backup(dst)
    partial.rename(TEMPLATE)


if __name__ == "__main__":
    install()
    print(f"label-studio {VERSION} in {VENV}")
