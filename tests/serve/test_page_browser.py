"""The page of `medssl serve` in headless Chromium (Selenium + Debian's chromium-driver, which .ci/run installs):
choose an image, wait for the answer, check what the page shows: the image, the heat map, the findings, the draft
report marked as a draft."""

from __future__ import annotations

import shutil

import pytest

from serving import serve_run, server  # noqa: F401  (fixtures)
from test_serve import png


def _driver(tmp_path):
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.skip("chromium and chromedriver are not installed (.ci/run installs Debian's chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,1400"):
        opts.add_argument(flag)
    return webdriver.Chrome(service=Service(executable_path=driver), options=opts)


def test_the_page_shows_the_image_heat_map_findings_and_a_marked_draft(server, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    image = tmp_path / "chest.png"
    image.write_bytes(png(3, 64))
    browser = _driver(tmp_path)
    try:
        browser.get(server.url + "/")
        assert "Drop a chest radiograph" in browser.find_element(By.ID, "drop").text
        field = browser.find_element(By.ID, "file")
        browser.execute_script("arguments[0].hidden = false", field)
        field.send_keys(str(image))
        WebDriverWait(browser, 60).until(lambda b: b.execute_script("return document.body.dataset.state") == "done"
                                         or "Error" in b.find_element(By.ID, "status").text)
        assert browser.find_element(By.ID, "status").text == ""
        assert "DRAFT" in browser.find_element(By.ID, "notice").text
        assert browser.find_element(By.ID, "image").get_attribute("src").startswith("data:image/png;base64,")
        assert browser.find_element(By.ID, "heat").get_attribute("src").startswith("data:image/png;base64,")
        rows = browser.find_elements(By.CSS_SELECTOR, "#findings tr")
        assert len(rows) >= 2 and all(r.text.strip() for r in rows)
        assert browser.find_element(By.ID, "report").text.strip() not in ("", "(none)")
        loaded = browser.execute_script("return [document.getElementById('image').naturalWidth, "
                                        "document.getElementById('heat').naturalWidth]")
        assert loaded[0] > 0 and loaded[1] > 0                      # the images decoded, not broken icons
        browser.save_screenshot(str(tmp_path / "page.png"))
    finally:
        browser.quit()
