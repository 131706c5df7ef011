"""The Dagster UI in headless Chromium after the small pipeline has run: the asset graph, the
distilled_model page with its evaluation table and training plot, the corpus report, and the
checks of a scored shard. Screenshots go to the test artifacts."""

import base64
import os
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import dagster as dg
import pyarrow.parquet as pq
import pytest
from embedding_assets.plots import RECALL_AXIS, SPEARMAN_AXIS, TRAINING_PLOT_ALT

from conftest import ROOT, stored_file

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ASSETS = ["raw_corpus", "training_sample", "features", "teacher_model", "teacher_embeddings", "distilled_model", "quality_classifier", "scored_corpus", "corpus_report"]
ROW = "//tr[.//*[normalize-space(text())='{}']]"
SVG = "{http://www.w3.org/2000/svg}"


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
def ui(pipeline_ui):
    return pipeline_ui["url"]


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


def table_rows(table) -> list[list[str]]:
    from selenium.webdriver.common.by import By

    return [[td.text for td in tr.find_elements(By.XPATH, "./td")] for tr in table.find_elements(By.XPATH, ".//tbody/tr")]


def open_markdown(browser, key: str, alt: str):
    """Open the "[Show Markdown]" dialog of a metadata row; returns its image once shown at its size."""
    from selenium.webdriver.common.by import By

    row = wait(browser).until(lambda d: d.find_element(By.XPATH, ROW.format(key)))
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", row)
    row.find_element(By.XPATH, ".//*[normalize-space(text())='[Show Markdown]']").click()
    image = wait(browser).until(lambda d: d.find_element(By.CSS_SELECTOR, f"img[alt='{alt}']"))
    wait(browser, 10).until(lambda d: d.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", image))
    # The dialog fades in: the image is in the page before it is shown at its size.
    assert wait(browser, 10).until(lambda d: image.is_displayed() and image.size["width"] > 500 and image.size["height"] > 250)
    return image


def tick_labels(svg: bytes, axis: str, kind: str) -> list[str]:
    """The tick labels of one axis of a plot, read from the SVG the page shows."""
    group = ET.fromstring(svg).find(f".//{SVG}g[@id='{axis}']")
    assert group is not None, f"no axis {axis} in the plot"
    return [t.text for g in group.iter(f"{SVG}g") if (g.get("id") or "").startswith(kind) for t in g.iter(f"{SVG}text") if t.text]


def test_model_page_shows_the_evaluation_table_and_a_training_plot_scaled_to_its_values(browser, ui, artifacts, pipeline):
    from selenium.webdriver.common.by import By

    records = pipeline["instance"].fetch_materializations(dg.AssetKey("distilled_model"), limit=1).records
    metadata = records[0].asset_materialization.metadata
    open_page(browser, f"{ui}/assets/distilled_model")

    table = wait(browser).until(lambda d: d.find_element(By.XPATH, ROW.format("evaluation") + "//table"))
    cells = {row[0]: row for row in table_rows(table)}
    assert set(cells) == {"teacher", "student", "random-init student, untrained", "plain TF-IDF"}
    assert cells["student"][1:3] == [str(metadata["recall_at_10"].value), str(metadata["spearman"].value)]
    probes = {r.data["features"]: r.data["accuracy"] for r in metadata["probe_accuracy"].records}
    assert round(float(cells["plain TF-IDF"][3]), 3) == probes["plain scikit-learn TF-IDF"]
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", table)
    browser.save_screenshot(str(artifacts / "distilled-model-metadata.png"))

    summary = browser.find_element(By.XPATH, ROW.format("training_curves_summary") + "/td[last()]").text
    assert summary.startswith(f"Training over {len(metadata['per_epoch'].records)} epochs: loss ")
    plot = open_markdown(browser, "training_curves", TRAINING_PLOT_ALT)
    browser.save_screenshot(str(artifacts / "training-plot.png"))
    svg = base64.b64decode(re.fullmatch(r"data:image/svg\+xml;base64,(.+)", plot.get_attribute("src")).group(1))
    epochs = [r.data for r in metadata["per_epoch"].records]
    for axis, column in ((RECALL_AXIS, "heldout_recall_at_10"), (SPEARMAN_AXIS, "heldout_spearman")):
        values = [e[column] for e in epochs]
        ticks = [float(label.replace("\u2212", "-")) for label in tick_labels(svg, axis, "ytick")]
        assert max(values) - min(values) < 0.2, "the plot is only tested on a small change"
        # The axis follows the values: it does not stretch over 0..1 and flatten them.
        assert max(ticks) - min(ticks) < 0.5 and not (min(ticks) <= 0.0 and max(ticks) >= 1.0), (axis, ticks)
        step = ticks[1] - ticks[0]
        assert min(ticks) - step <= min(values) and max(values) <= max(ticks) + step, (axis, ticks, values)
    epoch_ticks = tick_labels(svg, SPEARMAN_AXIS, "xtick")
    assert epoch_ticks and all(label.isdigit() for label in epoch_ticks), epoch_ticks


def test_corpus_report_lists_every_shard_as_the_scored_files_hold_it(browser, ui, artifacts, pipeline):
    from selenium.webdriver.common.by import By

    open_page(browser, f"{ui}/assets/corpus_report")
    table = wait(browser).until(lambda d: d.find_element(By.XPATH, ROW.format("shards") + "//table"))
    header = [th.text for th in table.find_elements(By.XPATH, ".//thead//th")]
    assert header[:5] == ["shard", "status", "documents", "kept", "keep_fraction"]
    # The row of the table at the top, its key in view: scroll every ancestor back to the left.
    browser.execute_script(
        "const row = arguments[0]; row.scrollIntoView({block: 'start'});"
        "for (let e = row; e; e = e.parentElement) { e.scrollLeft = 0; }",
        browser.find_element(By.XPATH, ROW.format("shards")),
    )
    browser.save_screenshot(str(artifacts / "corpus-report.png"))
    shown = {row[0]: dict(zip(header, row)) for row in table_rows(table)}
    assert set(shown) == set(pipeline["ids"])
    documents = kept = 0
    for shard, row in shown.items():
        scored = pq.read_table(stored_file(pipeline["storage"], "scored_corpus", shard), columns=["keep", "model_version", "classifier_version"])
        shard_kept = int(scored["keep"].to_numpy(zero_copy_only=False).sum())
        assert (row["status"], int(row["documents"]), int(row["kept"])) == ("scored", scored.num_rows, shard_kept), shard
        assert float(row["keep_fraction"]) == round(shard_kept / scored.num_rows, 3)
        assert (row["model_version"], row["classifier_version"]) == (scored["model_version"][0].as_py(), scored["classifier_version"][0].as_py())
        documents, kept = documents + scored.num_rows, kept + shard_kept
    summary = browser.find_element(By.XPATH, ROW.format("score_histogram_summary") + "/td[last()]").text
    assert summary.startswith(f"Scores of all {documents:,} documents in {len(shown)} shards; {kept:,} kept")
    open_markdown(browser, "score_histogram", "score histogram")
    browser.save_screenshot(str(artifacts / "corpus-report-histogram.png"))


def test_checks_page_shows_each_shards_drift_gate_with_its_bounds(browser, ui, artifacts, pipeline):
    from selenium.webdriver.common.by import By

    shards = sorted(pipeline["ids"])
    open_page(browser, f"{ui}/assets/scored_corpus?view=checks&checkDetail=scored_corpus_drift")
    tab = wait(browser).until(lambda d: [e for e in d.find_elements(By.XPATH, "//*[normalize-space(text())='Partitions']") if e.is_displayed()])
    tab[-1].click()
    # One status per shard: the check is partitioned like the asset.
    assert wait(browser).until(lambda d: d.find_elements(By.XPATH, f"//*[normalize-space(text())='Passed ({len(shards)})']"))
    for shard in shards:
        assert [e for e in browser.find_elements(By.XPATH, f"//*[normalize-space(text())='{shard}']") if e.is_displayed()], shard
    browser.find_element(By.XPATH, "//*[normalize-space(text())='notes']").click()
    bounds = wait(browser).until(lambda d: d.find_element(By.XPATH, ROW.format("bounds") + "//table"))
    rows = {row[0]: row for row in table_rows(bounds)}
    scored = pq.read_table(stored_file(pipeline["storage"], "scored_corpus", "notes"), columns=["keep"])
    keep = scored["keep"].to_numpy(zero_copy_only=False)
    measure = f"keep fraction of {len(keep)} documents"
    assert rows[measure][1:] == [f"{keep.mean():.3f}", rows[measure][2], "true"]
    assert [e for e in browser.find_elements(By.XPATH, "//*[normalize-space(text())='Passed']") if e.is_displayed()]
    browser.save_screenshot(str(artifacts / "scored-corpus-checks.png"))
