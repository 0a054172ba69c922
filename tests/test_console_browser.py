"""The console in Debian's headless Chromium (Selenium with the system chromedriver; nothing downloaded):
sign in, open a series, upload an image and see the verdict, with screenshots.

DFNODE_SCREENSHOTS=docs makes the test also write the screenshots in docs/console.md there."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import Select, WebDriverWait

from node.service import Node
from node.users import add_user
from tests.console import ADMIN, PASSWORD, knee_study, start_console_node
from tests.helpers import Receiver, real_file, require_tool

pytestmark = pytest.mark.browser


@pytest.fixture
def browser() -> Iterator[WebDriver]:
    options = webdriver.ChromeOptions()
    options.binary_location = require_tool("chromium")
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1360,900",
                     "--disable-gpu", "--hide-scrollbars"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(require_tool("chromedriver")), options=options)
    driver.implicitly_wait(0)
    yield driver
    driver.quit()


def _screenshot(driver: WebDriver, folder: Path, name: str, in_readme: bool = True) -> Path:
    path = folder / name
    assert driver.save_screenshot(str(path))
    with Image.open(path) as picture:
        assert picture.size[0] >= 1000
    wanted = os.environ.get("DFNODE_SCREENSHOTS")
    if wanted and in_readme:
        Path(wanted).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(wanted) / name)
    return path


def _wait(driver: WebDriver, css: str, seconds: float = 60):  # type: ignore[no-untyped-def]
    return WebDriverWait(driver, seconds).until(expected_conditions.visibility_of_element_located((By.CSS_SELECTOR,
                                                                                                   css)))


def _image_shown(driver: WebDriver, css: str) -> bool:
    return bool(driver.execute_script(
        "const i = document.querySelector(arguments[0]); return i && i.complete && i.naturalWidth > 0;", css))


def test_sign_in_open_a_series_and_check_an_upload(tmp_path: Path, model_dir: Path, receiver: Receiver,
                                                   classifiers, browser: WebDriver) -> None:
    node: Node = start_console_node(tmp_path, model_dir, receiver, classifiers)
    try:
        add_user(node.db, ADMIN, PASSWORD, "admin")
        sr = knee_study(tmp_path, node, receiver)
        assert node.console is not None
        base = f"http://127.0.0.1:{node.console.port}"

        browser.get(base + "/")  # sent to sign in first
        _wait(browser, "input[name=name]").send_keys(ADMIN)
        browser.find_element(By.NAME, "password").send_keys(PASSWORD)
        browser.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
        assert _wait(browser, "#signed-in").text == f"{ADMIN} (admin)"
        rows = browser.find_elements(By.CSS_SELECTOR, "#series tbody tr")
        assert len(rows) == 1 and "knee-radiograph" in rows[0].text
        _screenshot(browser, tmp_path, "console-studies.png", in_readme=False)

        rows[0].find_element(By.CSS_SELECTOR, "a").click()
        verdict = sr.SeriesDescription.removeprefix("DEEPFAKE SCREEN: ")
        assert _wait(browser, "#verdict").text.startswith(verdict)
        WebDriverWait(browser, 30).until(lambda d: _image_shown(d, "#key-image"))
        assert "Manipulation score" in browser.find_element(By.CSS_SELECTOR, "#sr-content pre").text
        _screenshot(browser, tmp_path, "console-series.png")

        picture = tmp_path / "upload.png"
        Image.fromarray(_radiograph_like()).save(picture)
        browser.find_element(By.LINK_TEXT, "Upload check").click()
        _wait(browser, "input[type=file]").send_keys(str(picture))
        Select(browser.find_element(By.NAME, "model")).select_by_value("knee")
        browser.find_element(By.CSS_SELECTOR, "form.card button[type=submit]").click()
        assert _wait(browser, "#result #verdict").text in ("SUSPECTED", "NOT SUSPECTED")
        assert browser.find_element(By.ID, "score").text.endswith("%")
        WebDriverWait(browser, 30).until(lambda d: _image_shown(d, "#heatmap"))
        _screenshot(browser, tmp_path, "console-check.png")
    finally:
        node.stop()


def _radiograph_like() -> np.ndarray:
    """A greyscale picture with the shape of a radiograph: the knee image the tests use, as a PNG."""
    import pydicom

    pixels = pydicom.dcmread(real_file("RG3_UNCR.dcm")).pixel_array.astype(np.float32)
    low, high = np.percentile(pixels, (1, 99))
    return (np.clip((pixels - low) / (high - low), 0, 1) * 255).astype(np.uint8)
