"""The console in a real browser: Playwright drives Debian's Chromium (no browser is downloaded) against
`dayu up` in a process of its own, on a mesh with a real text detector and a synthetic street camera
and no stream in its file. The operator logs in with a token, builds a pipeline in the DAG editor
(and sees the backend refuse a cycle), adds a camera, installs a stream on it, watches its results
and latency update, changes its policy, reads the system page, exports the records, uninstalls the
stream and deletes the camera. A screenshot of each page goes to $DAYU_SCREENSHOTS (default
out/console-screenshots in the repository)."""

from __future__ import annotations

import csv
import io
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from playwright.sync_api import Browser, Page, expect, sync_playwright

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("DAYU_CHROMIUM", "/usr/bin/chromium")
SHOTS = Path(os.environ.get("DAYU_SCREENSHOTS", ROOT / "out" / "console-screenshots"))
CONSOLE_LINE = re.compile(r"dayu: console (?P<url>http://\S+/)#token=(?P<token>\S+)")
WAIT_MS = 60_000  # a 2-core CI machine runs the whole mesh and the browser at once
expect.set_options(timeout=WAIT_MS)


@dataclass
class Console:
    url: str
    admin: str
    read: str


def mesh_file(folder: Path) -> Path:
    """A cloud and an edge node running PP-OCR's text detector in process, one camera, no streams."""
    mesh = {
        "cloud_node": "cloud",
        "nodes": {"cloud": {"processors": ["text_detector", "noop"]}, "edge-1": {"processors": ["text_detector"]}},
        "links": [{"between": ["edge-1", "cloud"], "bandwidth_mbps": 40, "delay_ms": 5}],
        "pipelines_file": str(ROOT / "configs" / "pipelines.yaml"),
        "processors": {"text_detector": {"params": {"backend": "onnxruntime", "max_side": 640}}},
        "sources": [{"source_id": "street", "kind": "synthetic", "params": {"width": 640, "height": 360, "fps": 4}}],
        "streams": [],
    }
    path = folder / "mesh.yaml"
    path.write_text(yaml.safe_dump(mesh))
    return path


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    folder = tmp_path_factory.mktemp("console")
    log = folder / "up.log"
    command = [sys.executable, "-u", "-m", "dayu.cli", "up", "--config", str(mesh_file(folder))]
    command += ["--duration", "1800", "--console-port", "0", "--workdir", str(folder / "work")]
    with log.open("w") as out:
        process = subprocess.Popen(command, cwd=folder, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 90
        while not (found := CONSOLE_LINE.search(log.read_text())):
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"dayu up printed no console URL:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        tokens = yaml.safe_load((folder / "work" / "tokens.yaml").read_text())
        assert found["token"] == tokens["admin"][0]
        yield Console(found["url"], tokens["admin"][0], tokens["read"][0])
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"no Chromium at {CHROMIUM}: run hack/toolchains.sh (Debian's chromium), or set DAYU_CHROMIUM")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM)
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
    opened = context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda error: errors.append(str(error)))
    opened.set_default_timeout(WAIT_MS)
    yield opened
    context.close()
    assert not errors, f"the page threw: {errors}"


def shot(page: Page, name: str) -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def log_in(page: Page, console: Console, token: str) -> None:
    page.goto(console.url)
    page.get_by_test_id("login-token").fill(token)
    page.get_by_test_id("login-submit").click()
    expect(page.get_by_test_id("nav")).to_be_visible()


def test_a_wrong_token_is_refused_and_a_read_only_one_cannot_change_anything(page: Page, console: Console) -> None:
    page.goto(console.url)
    expect(page.get_by_test_id("login-form")).to_be_visible()
    shot(page, "01-login")
    page.get_by_test_id("login-token").fill("not-the-token-of-this-mesh")
    page.get_by_test_id("login-submit").click()
    expect(page.get_by_test_id("login-error")).to_contain_text("token refused")

    log_in(page, console, console.read)
    page.get_by_test_id("nav-pipelines").click()
    page.get_by_test_id("pipeline-name").fill("readers-cannot")
    page.get_by_test_id("stage-processor").select_option("noop")
    page.get_by_test_id("stage-add").click()
    page.get_by_test_id("pipeline-save").click()
    expect(page.get_by_test_id("pipeline-save-error")).to_contain_text("read-only")


def test_an_operator_builds_installs_watches_changes_exports_and_uninstalls(page: Page, console: Console) -> None:
    # The URL `dayu up` prints logs straight in, and the token leaves the address bar.
    page.goto(f"{console.url}#token={console.admin}")
    expect(page.get_by_test_id("nav")).to_be_visible()
    assert "token=" not in page.url

    # Pipelines: a stage on the text detector; then a cycle, which the backend refuses as you edit.
    page.get_by_test_id("nav-pipelines").click()
    page.get_by_test_id("pipeline-new").click()
    page.get_by_test_id("pipeline-name").fill("street-text")
    page.get_by_test_id("stage-processor").select_option("text_detector")
    page.get_by_test_id("stage-name").fill("detect")
    page.get_by_test_id("stage-add").click()
    expect(page.get_by_test_id("dag-node")).to_have_count(1)
    expect(page.get_by_test_id("pipeline-violations")).to_have_attribute("data-state", "valid")
    page.get_by_test_id("stage-processor").select_option("noop")
    page.get_by_test_id("stage-name").fill("again")
    page.get_by_test_id("stage-add").click()
    detect = page.locator("[data-testid=stage][data-name=detect]")
    detect.locator("[data-testid=stage-parent][data-parent=again]").check()
    expect(page.get_by_test_id("pipeline-violations")).to_have_attribute("data-state", "invalid")
    expect(page.get_by_test_id("violation").first).to_contain_text("pipeline.stages")
    shot(page, "02-pipelines-invalid-dag")
    page.locator("[data-testid=stage][data-name=again] [data-testid=stage-remove]").click()
    expect(page.get_by_test_id("pipeline-violations")).to_have_attribute("data-state", "valid")
    page.get_by_test_id("pipeline-save").click()
    expect(page.get_by_test_id("pipeline-saved")).to_be_visible()
    expect(page.locator("[data-testid=pipeline-row][data-name=street-text]")).to_be_visible()
    shot(page, "03-pipelines")

    # Sources: the mesh file's camera, and one the operator adds (stored by the backend, played by
    # the datasource from now on).
    page.get_by_test_id("nav-sources").click()
    expect(page.locator("[data-testid=source-row][data-id=street]")).to_be_visible()
    page.get_by_test_id("source-add-id").fill("avenue")
    page.get_by_test_id("source-add-kind").select_option("synthetic")
    page.get_by_test_id("source-add-params").fill('{"width": 64000, "height": 360, "fps": 4}')
    page.get_by_test_id("source-add-submit").click()
    expect(page.get_by_test_id("source-add-error")).to_contain_text("source.params.width")
    page.get_by_test_id("source-add-params").fill('{"width": 640, "height": 360, "fps": 4, "seed": 7}')
    page.get_by_test_id("source-add-submit").click()
    expect(page.get_by_test_id("source-add-ok")).to_be_visible()
    added = page.locator("[data-testid=source-row][data-id=avenue]")
    expect(added.get_by_test_id("source-origin")).to_have_attribute("data-added", "true")
    shot(page, "04-sources")

    # Streams: install one on the edge node.
    page.get_by_test_id("nav-streams").click()
    page.get_by_test_id("install-stream-id").fill("cam-ui")
    page.get_by_test_id("install-pipeline").select_option("street-text")
    page.get_by_test_id("install-source").select_option("avenue")
    page.get_by_test_id("install-node").select_option("edge-1")
    page.get_by_test_id("install-policy").select_option("fixed")
    page.get_by_test_id("install-budget").fill("2")
    page.get_by_test_id("install-fps").fill("2")
    page.get_by_test_id("install-frames-per-segment").fill("1")
    page.get_by_test_id("install-submit").click()
    expect(page.get_by_test_id("install-ok")).to_be_visible()
    row = page.locator("[data-testid=stream-row][data-id=cam-ui]")
    expect(row).to_be_visible()

    # Results: the frame with the detector's boxes, latency points over time, and one task's Gantt.
    row.get_by_test_id("stream-results").click()
    expect(page.get_by_test_id("results-live")).to_have_attribute("data-state", "live")
    expect(page.get_by_test_id("frame-image")).to_be_visible()
    expect(page.locator("[data-testid=frame-detection][data-stage=detect]").first).to_be_visible()
    expect(page.get_by_test_id("record-row").nth(2)).to_be_visible()  # live updates: more than one record
    points = page.get_by_test_id("results-latency-chart").locator("circle, path")
    expect(points.first).to_be_visible()
    # The newest task: its spans may still be on their way to the scheduler (OTLP batches), and the
    # console asks again until they are there.
    page.get_by_test_id("record-timeline").first.click()
    expect(page.get_by_test_id("gantt-bar").first).to_be_visible()
    expect(page.get_by_test_id("results-latency-cdf")).to_be_visible()
    shot(page, "05-results")

    # Change its policy.
    page.get_by_test_id("nav-streams").click()
    row = page.locator("[data-testid=stream-row][data-id=cam-ui]")
    row.get_by_test_id("stream-policy-change").click()
    page.get_by_test_id("row-policy").select_option("edge_only")
    page.get_by_test_id("row-policy-apply").click()
    expect(page.get_by_test_id("streams-message")).to_contain_text("edge_only")
    expect(row).to_contain_text("edge_only")
    shot(page, "06-streams")

    page.get_by_test_id("nav-system").click()
    expect(page.get_by_test_id("system-live")).to_have_attribute("data-state", "live")
    expect(page.locator("[data-testid=node-row][data-node=edge-1]")).to_be_visible()
    expect(page.locator("[data-testid=component-row][data-up=false]")).to_have_count(0)
    expect(page.locator("[data-testid=scheduling-stream][data-stream=cam-ui]")).to_contain_text("edge_only")
    expect(page.get_by_test_id("system-link").first).to_be_visible()
    shot(page, "07-system")

    # Export: a CSV of the stream's records, downloaded.
    page.get_by_test_id("nav-export").click()
    page.get_by_test_id("export-stream").select_option("cam-ui")
    page.get_by_test_id("export-format").select_option("2")
    with page.expect_download() as download:
        page.get_by_test_id("export-submit").click()
    text = Path(download.value.path()).read_text()
    rows = list(csv.DictReader(io.StringIO(text)))
    assert rows and {r["stream_id"] for r in rows} == {"cam-ui"}, text[:500]
    shot(page, "08-export")

    page.get_by_test_id("nav-streams").click()
    row = page.locator("[data-testid=stream-row][data-id=cam-ui]")
    row.get_by_test_id("stream-uninstall").click()
    row.get_by_test_id("stream-uninstall-confirm").click()
    expect(row).to_have_count(0)
    shot(page, "09-streams-uninstalled")

    # Its source can go once no stream uses it.
    page.get_by_test_id("nav-sources").click()
    added = page.locator("[data-testid=source-row][data-id=avenue]")
    added.get_by_test_id("source-delete").click()
    added.get_by_test_id("source-delete-confirm").click()
    expect(added).to_have_count(0)
