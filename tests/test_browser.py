"""The Dagster UI in headless Chromium: the asset graph, and the distilled_model page with its loss
plot and evaluation table, after the small pipeline has run. Screenshots go to the test artifacts."""

import os
from pathlib import Path

import dagster as dg
import pytest
from embedding_assets.sample_corpus import NETWORKING_LABELS

from conftest import ROOT, running_webserver

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ASSETS = ["raw_corpus", "training_sample", "features", "teacher_model", "teacher_embeddings", "distilled_model", "quality_classifier", "scored_corpus"]
PLOT_ALT = "loss and held-out fidelity per epoch"


@pytest.fixture(scope="module")
def artifacts() -> Path:
    directory = Path(os.environ.get("TEST_ARTIFACTS_DIR") or ROOT / "test-artifacts")
    directory.mkdir(parents=True, exist_ok=True)
    return directory


@pytest.fixture(scope="module")
def browser():
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        pytest.fail(f"{', '.join(missing)} missing: `make test` installs chromium and chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run", "--window-size=1500,950",
    ):
        options.add_argument(flag)
    # An explicit driver path: Selenium Manager stays idle and downloads nothing.
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def ui(pipeline, tmp_path_factory):
    """The webserver over the instance the small pipeline was materialised into."""
    log = tmp_path_factory.mktemp("ui") / "webserver.log"
    env = {"EMBEDDING_ASSETS_STORAGE": str(pipeline["storage"]), "EMBEDDING_ASSETS_POSITIVE_LABELS": ",".join(NETWORKING_LABELS)}
    with running_webserver(Path(pipeline["instance"].root_directory), log, env) as port:
        yield f"http://127.0.0.1:{port}"


def wait(driver, seconds: float = 60):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, seconds, poll_frequency=0.25)


def open_page(driver, url: str) -> None:
    """Load a page; dismiss the first-visit newsletter dialog if it comes up."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.by import By

    driver.get(url)
    try:
        skip = wait(driver, 8).until(lambda d: d.find_element(By.XPATH, "//button[normalize-space()='Skip']"))
        skip.click()
    except TimeoutException:
        pass


def test_asset_graph_shows_every_asset_in_its_group(browser, ui, artifacts):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    open_page(browser, f"{ui}/asset-groups")
    wait(browser).until(lambda d: d.find_elements(By.XPATH, "//*[normalize-space(text())='training']"))
    # Groups start collapsed; the graph's own shortcut expands them all.
    ActionChains(browser).key_down(Keys.ALT).send_keys("e").key_up(Keys.ALT).perform()

    def asset_nodes(driver):
        shown = {name for name in ASSETS if any(e.is_displayed() for e in driver.find_elements(By.XPATH, f"//*[normalize-space(text())='{name}']"))}
        return shown if shown == set(ASSETS) else None

    assert wait(browser).until(asset_nodes) == set(ASSETS)
    browser.save_screenshot(str(artifacts / "asset-graph.png"))


def test_model_page_renders_the_loss_plot_and_the_evaluation_table(browser, ui, artifacts, pipeline):
    from selenium.webdriver.common.by import By

    records = pipeline["instance"].fetch_materializations(dg.AssetKey("distilled_model"), limit=1).records
    metadata = records[0].asset_materialization.metadata
    open_page(browser, f"{ui}/assets/distilled_model")

    row = "//tr[.//*[normalize-space(text())='{}']]"
    table = wait(browser).until(lambda d: d.find_element(By.XPATH, row.format("evaluation") + "//table"))
    cells = {
        tr.find_element(By.XPATH, "./td[1]").text: [td.text for td in tr.find_elements(By.XPATH, "./td")]
        for tr in table.find_elements(By.XPATH, ".//tbody/tr")
    }
    assert set(cells) == {"teacher", "student", "random-init student, untrained", "plain TF-IDF"}
    assert cells["student"][1:3] == [str(metadata["recall_at_10"].value), str(metadata["spearman"].value)]
    assert cells["plain TF-IDF"][3] == str(metadata["probe_accuracy"].value["tfidf"])
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", table)
    browser.save_screenshot(str(artifacts / "distilled-model-metadata.png"))

    # A plot is too long to show inline; its row opens it in a dialog.
    browser.find_element(By.XPATH, row.format("training_curves") + "//*[normalize-space(text())='[Show Markdown]']").click()
    plot = wait(browser).until(lambda d: d.find_element(By.CSS_SELECTOR, f"img[alt='{PLOT_ALT}']"))
    wait(browser, 10).until(lambda d: d.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", plot))
    # The dialog fades in: the image is in the page before it is shown at its size.
    shown = wait(browser, 10).until(lambda d: plot.is_displayed() and plot.size["width"] > 300 and plot.size["height"] > 150)
    assert shown
    browser.save_screenshot(str(artifacts / "distilled-model.png"))
