"""The dashboard's browser tests: Debian's headless Chromium driven by Selenium against a real
``agentbus serve`` process (SQLite log, its own data directory, a free port).

Without Chromium or chromedriver the tests skip locally, saying how to install them; with
``CI=true`` that is a failure, as a missing broker or database is there. Each page's screenshot
goes under the test's ``tmp_path``; with ``AGENTBUS_UI_SCREENSHOTS=<dir>`` the overview and the
workflow graph are also written there (that is how ``deploy/screenshots/*.png`` are made).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from selenium import webdriver
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.chrome.service import Service as ChromeService
from selenium.webdriver.chrome.webdriver import WebDriver as Chrome
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from services.cli import main
from services.executors.standins.serving import free_port
from services.runtime.settings import ENV_PREFIX
from tests.waiting import until

REPO = Path(__file__).resolve().parents[2]
SCREENSHOTS_ENV = "AGENTBUS_UI_SCREENSHOTS"
INSTALL_HINT = "apt-get install chromium chromium-driver (or deploy/chromium/install.sh)"
WINDOW = (1440, 1000)
PAGE_TIMEOUT_S = 15.0


def _clean_env() -> dict[str, str]:
    """This process's environment without the AGENTBUS_* settings a developer's shell may hold."""
    return {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}


def _browser() -> tuple[str, str]:
    """Chromium and chromedriver, or a skip (a failure with CI=true) saying how to install them."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if chromium and driver:
        return chromium, driver
    missing = " and ".join(name for name, found in (("chromium", chromium), ("chromedriver", driver))
                           if not found)
    message = f"{missing} not found: the dashboard tests need a headless Chromium; {INSTALL_HINT}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{message} (CI never skips the browser tests)")
    pytest.skip(message)


@pytest.fixture(scope="session")
def browser() -> Iterator[Chrome]:
    """One headless Chromium for the whole run, its console log kept (``goog:loggingPrefs``)."""
    chromium, driver_path = _browser()
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--disable-extensions", "--hide-scrollbars", f"--window-size={WINDOW[0]},{WINDOW[1]}",
                "--force-device-scale-factor=1", "--lang=en-GB"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=ChromeService(driver_path))
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


@dataclass
class Server:
    """``agentbus serve`` in a process of its own, and a client of its API."""

    url: str
    data: Path
    proc: subprocess.Popen[bytes]
    token: str | None = None

    def client(self, token: str | None = None) -> httpx.Client:
        bearer = token or self.token
        headers = {} if bearer is None else {"Authorization": f"Bearer {bearer}"}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)


def _tokens(data: Path, roles: list[str]) -> dict[str, str]:
    """A token per role, put on the deployment's log before it starts (decided once it runs)."""
    env = {name: None for name in os.environ if name.startswith(ENV_PREFIX)}
    made = {}
    for role in roles:
        result = CliRunner().invoke(main, ["tokens", "create", "--role", role, "--name", f"ui-{role}",
                                           "--wait", "0", "--data-dir", str(data)],
                                    env=env, catch_exceptions=False)
        assert result.exit_code == 0, result.output
        made[role] = result.stdout.strip().splitlines()[-1]
    return made


def _ready(server: Server, log: Path) -> None:
    deadline = time.monotonic() + 60
    while True:
        assert server.proc.poll() is None, log.read_text()
        try:
            body = httpx.get(f"{server.url}/v1/health", timeout=2).json()
            if body.get("deciders_ready") and body.get("coordinator_ready"):
                return
        except (httpx.TransportError, ValueError):
            pass
        assert time.monotonic() < deadline, "agentbus serve did not become ready"
        time.sleep(0.1)


def _serve(root: Path, *args: str) -> Iterator[Server]:
    data = root / "data"
    port = free_port()
    log = root / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "services.cli", "serve", "--port", str(port),
                                 "--data-dir", str(data), *args],
                                cwd=REPO, env=_clean_env(), stdout=out, stderr=subprocess.STDOUT)
    server = Server(f"http://127.0.0.1:{port}", data, proc)
    try:
        _ready(server, log)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """An open server (no authentication, loopback only)."""
    yield from _serve(tmp_path_factory.mktemp("ui-open"))


@dataclass
class AuthServer:
    server: Server
    tokens: dict[str, str]


@pytest.fixture(scope="session")
def auth_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthServer]:
    """A server with ``--auth required`` and a token per role."""
    root = tmp_path_factory.mktemp("ui-auth")
    tokens = _tokens(root / "data", ["admin", "operator", "reader"])
    for server in _serve(root, "--auth", "required"):
        server.token = tokens["admin"]
        with server.client() as admin:  # the tokens work once the started server decided them
            until(lambda: all(admin.get("/v1/system/status", headers={"Authorization": f"Bearer {t}"})
                              .status_code == 200 for t in tokens.values()), timeout=30)
        yield AuthServer(server, tokens)


# --- driving the page ------------------------------------------------------------------------------




def _browser_log(driver: Chrome) -> list[dict[str, Any]]:
    """The console entries since the last call (``goog:loggingPrefs``; selenium leaves it untyped)."""
    return list(driver.get_log("browser"))  # type: ignore[no-untyped-call]


class UI:
    """The dashboard in the browser: open it, go to a page and wait until it has loaded."""

    def __init__(self, driver: Chrome, base: str, shots: Path) -> None:
        self.driver, self.base, self.shots = driver, base, shots
        _browser_log(driver)  # what earlier tests left

    def open(self, route: str = "overview") -> None:
        """Load the page afresh (a new session of the app) at ``#/route``."""
        self.driver.get("about:blank")
        self.driver.get(f"{self.base}/ui/#/{route}")

    def mounted(self) -> int:
        return int(self.driver.execute_script(
            "return Number(document.getElementById('view')?.dataset.mount || 0)"))

    def go(self, route: str, live: bool = True) -> None:
        """Show ``#/route`` and wait until the page has loaded (and its live stream subscribed)."""
        before = self.mounted()
        self.driver.execute_script("location.hash = arguments[0]", f"#/{route}")
        self.wait_ready(after=before, live=live)

    def wait_ready(self, after: int = 0, live: bool = True) -> None:
        def loaded(d: WebDriver) -> bool:
            return bool(d.execute_script(
                "const v = document.getElementById('view');"
                "return v && Number(v.dataset.mount || 0) > arguments[0] && v.dataset.state === 'ready'"
                " && (!arguments[1] || document.getElementById('live').dataset.state === 'live');",
                after, live))
        WebDriverWait(self.driver, PAGE_TIMEOUT_S, poll_frequency=0.05).until(loaded)

    def wait(self, condition: Callable[[WebDriver], Any], timeout: float = PAGE_TIMEOUT_S,
             poll: float = 0.05) -> Any:
        return WebDriverWait(self.driver, timeout, poll_frequency=poll).until(condition)

    # Pages redraw as events arrive, so an element found by one WebDriver call may be gone by the
    # next: these read in the page in one go, and a click is retried on a redrawn element.

    def text(self, css: str) -> str:
        """The text of the first element ``css`` finds ('' when none)."""
        return str(self.driver.execute_script(
            "const n = document.querySelector(arguments[0]); return n ? n.innerText : '';", css))

    def shown(self, css: str) -> bool:
        """Whether an element ``css`` finds is displayed."""
        return bool(self.driver.execute_script(
            "const n = document.querySelector(arguments[0]);"
            "return !!n && n.getClientRects().length > 0;", css))

    def click(self, css: str) -> None:
        def clicked(d: WebDriver) -> bool:
            d.find_element(By.CSS_SELECTOR, css).click()
            return True
        redrawn = (StaleElementReferenceException, NoSuchElementException)
        WebDriverWait(self.driver, PAGE_TIMEOUT_S, 0.05, ignored_exceptions=redrawn).until(clicked)

    def console(self) -> list[dict[str, Any]]:
        """The console's SEVERE entries since the last look."""
        return [entry for entry in _browser_log(self.driver) if entry["level"] == "SEVERE"]

    def screenshot(self, name: str, publish: bool = False) -> Path:
        """Save the window as ``<name>.png`` under the test's output (and, with ``publish``, in
        the directory AGENTBUS_UI_SCREENSHOTS names, when set)."""
        path = self.shots / f"{name}.png"
        assert self.driver.save_screenshot(str(path)), f"no screenshot of {name}"
        target = os.environ.get(SCREENSHOTS_ENV)
        if publish and target:
            Path(target).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, Path(target) / path.name)
        return path
