"""report.html as a person sees it: opened in a real headless Chromium, driven by Selenium.

Needs Debian's ``chromium`` and ``chromium-driver`` (``.ci/run`` installs them). Selenium
Manager is kept offline: the driver path is given explicitly and ``SE_OFFLINE`` is set, so
nothing is ever downloaded. The screenshot lands in ``test-artifacts/report.png``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from test_report import tiny_overrides

from tinyvision.cli import main
from tinyvision.config import load_config
from tinyvision.engine import train

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists() or not CHROMEDRIVER.exists(),
    reason="needs Debian's chromium and chromium-driver (/usr/bin/chromium, /usr/bin/chromedriver):"
    " apt-get install chromium chromium-driver",
)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """One headless Chromium for the module (starting one takes seconds)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root in a container
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--hide-scrollbars",
        "--window-size=1280,900",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
    ):
        options.add_argument(arg)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SE_OFFLINE", "true")  # Selenium Manager must never fetch a driver
        driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def screenshot(browser, name: str) -> Path:
    """A full-page screenshot in test-artifacts/, for a person to look at."""
    height = browser.execute_script("return document.documentElement.scrollHeight")
    browser.set_window_size(1280, min(height, 12000))
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / name
    assert browser.save_screenshot(str(shot))
    browser.set_window_size(1280, 900)
    return shot


def test_report_renders_in_chromium_with_the_run_numbers(tiny_fashion_dir, tmp_path, browser):
    from selenium.webdriver.common.by import By

    data_dir = tmp_path / "fashion<b>&amp;"  # a user's path: must show as text, not as markup
    shutil.copytree(tiny_fashion_dir, data_dir)
    config = load_config(None, [*tiny_overrides(data_dir, tmp_path / "runs"), "train.name=tiny"])
    run = train(config).run_dir
    assert main(["report", str(run)]) == 0  # as `tinyvision train` does once training returns
    summary = json.loads((run / "summary.json").read_text())
    last_epoch = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    per_class = json.loads((run / "per_class.json").read_text())

    browser.get((run / "report.html").as_uri())
    assert browser.execute_script("return document.readyState") == "complete"
    assert browser.find_element(By.TAG_NAME, "h1").text == run.name
    location = browser.find_element(By.CSS_SELECTOR, "#data td:nth-child(2)").text
    assert location == str(data_dir)  # shown literally: "<b>&amp;" neither bold nor "&"

    # Every figure decoded and has a size (a broken data URI gives naturalWidth 0).
    images = browser.execute_script(
        "return Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth,"
        " i.getAttribute('src').slice(0, 22)])"
    )
    assert [alt for alt, *_ in images] == [
        "loss and accuracy curves",
        "confusion matrix",
        "misclassified test images",
    ]
    for alt, complete, width, src in images:
        assert complete and width > 0, alt
        assert src == "data:image/png;base64,", alt  # embedded: the page opens offline
    # Self-contained: nothing that would be fetched, nothing that runs.
    for tag in ("script", "link", "iframe"):
        assert browser.find_elements(By.TAG_NAME, tag) == []

    # The numbers shown are the run's numbers.
    shown_acc = browser.find_element(By.ID, "final-test-acc").text
    assert shown_acc == f"{100 * summary['final_test_acc']:.2f}%"
    assert summary["final_test_acc"] == last_epoch["test_acc"]
    assert browser.find_element(By.ID, "parameters").text == f"{summary['parameters']:,}"
    rows = browser.find_elements(By.CSS_SELECTOR, "#per-class tbody tr")
    assert len(rows) == len(per_class["classes"])
    for row, expected in zip(rows, per_class["per_class"], strict=True):
        assert row.get_attribute("data-class") == expected["class"]
        cells = row.find_elements(By.TAG_NAME, "td")
        assert cells[0].text == expected["class"]
        assert int(cells[1].text) == expected["count"]
        assert row.find_element(By.CLASS_NAME, "acc").text == f"{100 * expected['accuracy']:.2f}%"
    # The per-class table adds up to the test accuracy the training logged.
    correct = sum(row["correct"] for row in per_class["per_class"])
    assert correct / per_class["test_size"] == pytest.approx(last_epoch["test_acc"], abs=1e-9)

    # A full-page screenshot, kept as a test artefact for a person to look at.
    assert screenshot(browser, "report.png").stat().st_size > 10_000


def test_comparison_page_sorts_when_a_header_is_clicked(tmp_path, browser):
    from selenium.webdriver.common.by import By
    from test_compare import make_run

    make_run(tmp_path, "adam-small", ["optim.lr=1e-3"], [0.70, 0.80], 12.0)
    make_run(tmp_path, "adam-wide", ["optim.lr=3e-3", "model.dim=64"], [0.75, 0.85], 95.0)
    make_run(tmp_path, "adam-fast", ["optim.lr=1e-2"], [0.60, 0.75], 7.5)
    page = tmp_path / "compare.html"
    assert main(["compare", str(tmp_path), "--html", str(page)]) == 0
    browser.get(page.as_uri())

    def order() -> list[str]:
        cells = browser.find_elements(By.CSS_SELECTOR, "#runs tbody tr td:first-child")
        return [cell.text.rsplit("-", 2)[0] for cell in cells]

    assert order() == ["adam-wide", "adam-small", "adam-fast"]  # by test accuracy, as printed
    (image,) = browser.find_elements(By.TAG_NAME, "img")
    assert browser.execute_script("return arguments[0].naturalWidth", image) > 0
    headers = {h.text: h for h in browser.find_elements(By.CSS_SELECTOR, "#runs th")}
    headers["time"].click()  # first click: descending
    assert order() == ["adam-wide", "adam-small", "adam-fast"]
    headers["time"].click()  # second click: ascending
    assert order() == ["adam-fast", "adam-small", "adam-wide"]
    headers["optim.lr"].click()
    assert order() == ["adam-fast", "adam-wide", "adam-small"]  # 1e-2, 3e-3, 1e-3
    screenshot(browser, "compare.png")
