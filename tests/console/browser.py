"""Headless Chromium for the console's tests: Debian's ``chromium`` and ``chromedriver``
(``tools/browser/install-deps.sh``, run by ``make test``), driven by Selenium. A missing
browser fails the tests (it is part of the set-up), never skips them.

``Page`` wraps one browser with the waits the tests need: every wait is bounded
(``WAIT_SECONDS``) and polls the document, never sleeps for a fixed time.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
WAIT_SECONDS = 30.0
SCREENSHOTS = Path(__file__).resolve().parents[2] / "data" / "screenshots"

T = TypeVar("T")


def start_browser() -> webdriver.Chrome:
    for binary in (CHROMIUM, CHROMEDRIVER):
        if shutil.which(binary) is None:
            raise RuntimeError(f"{binary} is missing: run `make browser-deps`")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",  # root in CI
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1400,1000",
        "--no-first-run",
        "--disable-background-networking",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(WAIT_SECONDS)
    driver.set_script_timeout(WAIT_SECONDS)
    return driver


class Page:
    def __init__(self, driver: webdriver.Chrome, base_url: str) -> None:
        self.driver = driver
        self.base_url = base_url

    def open(self, route: str = "") -> None:
        """Load the console fresh at ``#/route`` (the log of earlier pages dropped)."""
        self.driver.get("about:blank")
        self.driver.get_log("browser")  # type: ignore[no-untyped-call]
        self.driver.get(f"{self.base_url}/#/{route}")

    def wait(self, condition: Callable[[webdriver.Chrome], T], message: str) -> T:
        return WebDriverWait(self.driver, WAIT_SECONDS, poll_frequency=0.2).until(
            condition, message
        )

    def element(self, css: str) -> WebElement:
        return self.wait(lambda d: d.find_element(By.CSS_SELECTOR, css), f"no {css}")

    def elements(self, css: str) -> list[WebElement]:
        return list(self.driver.find_elements(By.CSS_SELECTOR, css))

    # The pages re-render their numbers on every refresh, so a node found a moment ago may be
    # gone: reads go through one script call on the live document instead.
    def text(self, css: str) -> str:
        """The rendered text of the first ``css`` match, waiting for one to exist."""
        return str(
            self.wait(
                lambda d: d.execute_script(
                    "const e = document.querySelector(arguments[0]); return e && e.innerText;",
                    css,
                ),
                f"no {css}",
            )
        )

    def click(self, css: str) -> None:
        """Click the first ``css`` match as it is now (waiting for one to exist)."""
        self.wait(
            lambda d: d.execute_script(
                "const e = document.querySelector(arguments[0]); if (e) e.click(); return !!e;",
                css,
            ),
            f"no {css} to click",
        )

    def texts(self, css: str) -> list[str]:
        """The rendered texts of every ``css`` match now."""
        return list(
            self.script(
                "return [...document.querySelectorAll(arguments[0])].map((e) => e.innerText);",
                css,
            )
        )

    def attributes(self, css: str, name: str) -> list[str]:
        """Attribute ``name`` of every ``css`` match now."""
        return list(
            self.script(
                "return [...document.querySelectorAll(arguments[0])]"
                ".map((e) => e.getAttribute(arguments[1]));",
                css,
                name,
            )
        )

    def script(self, source: str, *args: Any) -> Any:
        return self.driver.execute_script(source, *args)

    def screenshot(self, name: str) -> Path:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{name}.png"
        self.driver.save_screenshot(str(path))
        return path

    def console_errors(self) -> list[str]:
        """The browser's error-level log lines since the last call (CSP violations, script
        errors, failed loads)."""
        return [
            str(entry["message"])
            for entry in self.driver.get_log("browser")  # type: ignore[no-untyped-call]
            if entry.get("level") == "SEVERE"
        ]
