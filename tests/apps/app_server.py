"""Shared by the app tests (imported, not a conftest): the launcher as a real server on a free loopback port."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_launcher(args: list[str], log: Path, threads: int = 1, timeout_s: float = 120):
    """``python -m apps.launcher --port <free> *args`` until the page answers; yields its URL and
    stops the process afterwards (the log is shown if it never comes up)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "NO_PROXY": "127.0.0.1,localhost",
           "no_proxy": "127.0.0.1,localhost", "OMP_NUM_THREADS": str(threads)}
    with open(log, "w") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "apps.launcher", "--port", str(port), *args],
                                cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                pytest.fail(f"launcher exited with {proc.returncode}:\n{log.read_text()}")
            try:
                with NO_PROXY.open(url, timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"launcher did not answer on {url} within {timeout_s} s:\n{log.read_text()}")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)


CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@contextmanager
def browser_tab(url: str, tab: str):
    """Debian's headless Chromium (no browser download) on ``url`` with launcher tab ``tab`` open."""
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} not found: install Debian's chromium package (no browser downloads)")
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            pg = b.new_page()
            pg.goto(url, wait_until="domcontentloaded", timeout=60_000)
            pg.get_by_role("tab", name=tab).click(timeout=60_000)
            yield pg
        finally:
            b.close()
