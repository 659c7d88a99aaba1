"""``libra serve`` end to end: the real command, driven in headless Chromium (Debian's) by Playwright.

Uploads both X-rays, generates with the tiny fixture, reads the text on the page (it must equal what
the original code wrote for the same inputs), downloads the report, uploads a non-image and reads
the error. Screenshots at desktop and narrow widths go to tests/artifacts/ for review.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import CXR, FIXTURES, REPO

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)
if CHROMIUM is not None:
    from playwright.sync_api import Page, expect, sync_playwright
else:  # the API test below still runs; the browser tests skip (the `page` fixture)
    Page = object  # type: ignore[misc,assignment]

ARTIFACTS = REPO / "tests" / "artifacts"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]
MAX_NEW = 24  # the fixture's greedy reference length


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server_url(tmp_path_factory: pytest.TempPathFactory):
    port = _free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    env = dict(os.environ, HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False")
    with open(log, "w") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "libra_cli", "serve", "-m", str(FIXTURES / "tiny-libra-tac"),
                                 "--port", str(port), "--max-new-tokens", str(MAX_NEW)],
                                stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 150
        while True:
            if proc.poll() is not None:
                pytest.fail(f"libra serve exited with {proc.returncode}:\n{log.read_text()}")
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"libra serve did not answer within 150 s:\n{log.read_text()}")
            time.sleep(0.5)
        assert "loaded" in log.read_text()  # the default model was preloaded, once
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_page_api_answers_the_first_versions_arguments(server_url: str) -> None:
    """The page's API is a contract: a gradio_client script written for the first version (model, current,
    prior, prompt, context, mode, max new tokens) keeps working; every later input has a default."""
    from gradio_client import Client, handle_file

    expected = json.loads((FIXTURES / "expected" / "tiny-libra-tac.json").read_text())
    client = Client(server_url, verbose=False)
    params = client.view_api(print_info=False, return_format="dict")["named_endpoints"]["/generate"]["parameters"]
    assert all(p["parameter_has_default"] for p in params[7:]), [p["parameter_name"] for p in params[7:]]
    text, status, *_ = client.predict(str(FIXTURES / "tiny-libra-tac"), handle_file(str(CXR / "current.jpg")),
                                      handle_file(str(CXR / "prior.jpg")), "", "", "Greedy", MAX_NEW,
                                      api_name="/generate")
    assert text == expected["greedy"]["returned_text"] and f"{MAX_NEW} tokens" in status


@pytest.fixture(scope="module")
def page(server_url: str):
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (/usr/bin/chromium): the browser tests of `libra serve` are skipped; "
                    "scripts/install.sh installs Debian's chromium")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        pg = browser.new_page(viewport={"width": 1366, "height": 900}, accept_downloads=True)
        pg.set_default_timeout(60_000)
        expect.set_options(timeout=60_000)  # a loaded 2-core machine: generous waits, no timing assertions
        pg.goto(server_url)
        yield pg
        browser.close()


def _shot(pg: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    pg.screenshot(path=str(ARTIFACTS / name), full_page=True)


def test_generate_from_both_images_in_the_browser(page: Page) -> None:
    expected = json.loads((FIXTURES / "expected" / "tiny-libra-tac.json").read_text())
    expect(page.locator("#research-notice")).to_contain_text("Research use only")
    expect(page.locator("#research-notice")).to_contain_text("not for clinical decisions")

    page.locator("#current-file input[type=file]").set_input_files(str(CXR / "current.jpg"))
    notice = page.locator("#dummy-prior-notice")
    expect(notice).to_contain_text("dummy prior")
    expect(page.locator("#prior-preview")).to_contain_text("dummy")
    expect(page.locator("#current-preview")).to_contain_text("CURRENT")
    _shot(page, "serve-current-only-desktop.png")

    page.locator("#prior-file input[type=file]").set_input_files(str(CXR / "prior.jpg"))
    expect(notice).to_have_count(0)
    expect(page.locator("#prior-preview")).to_contain_text("PRIOR study")
    expect(page.locator("#pair-notice")).to_contain_text("PRIOR: uploaded")

    page.locator("#generate-btn").click()
    expect(page.locator("#download-btn")).to_be_visible()
    expect(page.locator("#fhir-btn")).to_be_hidden()  # JPEG uploads name no study: no FHIR / SR
    report = page.locator("#report textarea")
    assert report.input_value() == expected["greedy"]["returned_text"]  # what the original code wrote
    expect(page.locator("#status")).to_contain_text(f"{MAX_NEW} tokens")
    expect(page.locator("#status")).to_contain_text("prior: given")

    with page.expect_download() as dl:
        page.locator("#download-btn").click()
    text = Path(dl.value.path()).read_text(encoding="utf-8")
    assert expected["greedy"]["returned_text"] in text and "prior image: prior.jpg" in text
    assert "Research use only" in text

    _shot(page, "serve-desktop.png")
    page.set_viewport_size({"width": 390, "height": 844})
    expect(page.locator("#report textarea")).to_be_visible()
    _shot(page, "serve-narrow.png")
    page.set_viewport_size({"width": 1366, "height": 900})


def test_non_image_upload_shows_an_error(page: Page, tmp_path: Path) -> None:
    bad = tmp_path / "notes.txt"
    bad.write_text("this is not an x-ray\n")
    page.locator("#current-file").get_by_role("button", name="Clear").click()  # replace the uploaded study
    page.locator("#current-file input[type=file]").set_input_files(str(bad))
    err = page.locator("#pair-notice .libra-error")
    expect(err).to_contain_text("current X-ray: not a readable image: notes.txt")
    expect(err).to_contain_text("JPEG, PNG or DICOM")
    page.locator("#generate-btn").click()
    expect(page.locator("#status .libra-error")).to_contain_text("not a readable image: notes.txt")
    expect(page.locator("#report textarea")).to_have_value("")
    _shot(page, "serve-error-desktop.png")
    page.set_viewport_size({"width": 390, "height": 844})
    _shot(page, "serve-error-narrow.png")
    page.set_viewport_size({"width": 1366, "height": 900})


def test_example_pair_button(page: Page) -> None:
    for which in ("current", "prior"):
        clear = page.locator(f"#{which}-file").get_by_role("button", name="Clear")
        if clear.count():
            clear.click()
    page.locator("#example-btn").click()
    expect(page.locator("#pair-notice")).to_contain_text("PRIOR: uploaded")
    expect(page.locator("#pair-notice .libra-error")).to_have_count(0)


def test_dicom_uploads_offer_fhir_and_sr_downloads(page: Page, tmp_path: Path) -> None:
    """DICOM uploads: the draft also as a FHIR DiagnosticReport and a DICOM SR (docs/pacs.md)."""
    from tests.pacs_support import need_packages

    need_packages()
    import pydicom
    from fhir.resources.R4B.diagnosticreport import DiagnosticReport

    from libra_cli.pacs.sr import sr_findings
    from tests.builders.dicom import SPECS, make_instance

    files = {}
    for which, name in (("current", "a5-pa"), ("prior", "a4-pa")):
        files[which] = tmp_path / f"{name}.dcm"
        make_instance(SPECS[name], name).save_as(files[which], enforce_file_format=True)
        clear = page.locator(f"#{which}-file").get_by_role("button", name="Clear")
        if clear.count():
            clear.click()
        page.locator(f"#{which}-file input[type=file]").set_input_files(str(files[which]))
    expect(page.locator("#pair-notice")).to_contain_text("PRIOR: uploaded")
    page.locator("#generate-btn").click()
    expect(page.locator("#fhir-btn")).to_be_visible()
    expect(page.locator("#sr-btn")).to_be_visible()
    text = page.locator("#report textarea").input_value()
    with page.expect_download() as dl:
        page.locator("#fhir-btn").click()
    rep = DiagnosticReport.model_validate_json(Path(dl.value.path()).read_text())
    assert rep.status == "preliminary" and rep.presentedForm[0].data.decode() == text
    with page.expect_download() as dl:
        page.locator("#sr-btn").click()
    sr = pydicom.dcmread(dl.value.path())
    cur, prior = (pydicom.dcmread(files[w], stop_before_pixels=True).SOPInstanceUID for w in ("current", "prior"))
    assert sr_findings(sr) == (text, [cur, prior])
    _shot(page, "serve-dicom-desktop.png")
