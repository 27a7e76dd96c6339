"""The web UI in a real browser (Playwright driving Debian's Chromium, headless) against the real stack.

The platform runs in this process on free ports (tests/web_stack.py: auth, the three diagnosis
services, the router, the gateway). The tests follow a visitor's story: sign up (a refused form
first), log in, diagnose one image of each kind, a foreign image and a bad file, history, models,
log out; but each test stands alone, in any order or by itself: it gets a fresh browser context and,
where it needs one, an account of its own, signed in, with the results it needs uploaded first.
Every page is photographed at desktop and phone width under test-results/screenshots/ (git-ignored)
by the test that declares it (@pytest.mark.photographs). Skips when Chromium or Playwright is absent.
"""

from __future__ import annotations

import io
import json
import os
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.e2e.conftest import CALL_REPORT
from tests.support import ROOT, jpeg_bytes, sample_image_bytes
from tests.unit.test_imaging import make_dicom
from tests.web_stack import Stack, running_stack

pytestmark = pytest.mark.e2e

CHROMIUM = Path(os.environ.get("DRTECH_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
SCREENSHOTS = ROOT / "test-results" / "screenshots"
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 375, "height": 740}
PASSWORD = "correct horse 42"
PATIENT_NAME = "Zyxwvut^Qwertyline"
PATIENT_ID = "PID-SECRET-4242"

if not CHROMIUM.exists():
    pytest.skip(f"Chromium not found at {CHROMIUM} (apt-get install chromium, or set DRTECH_CHROMIUM)",
                allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package (dev extra) is not installed")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(tmp_path_factory.mktemp("home"), tmp_path_factory.mktemp("models")) as running:
        yield running


@pytest.fixture(scope="module")
def browser() -> Iterator:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def new_email() -> str:
    return f"browser-{uuid.uuid4().hex[:10]}@example.org"


@pytest.fixture
def page(browser, stack: Stack, request: pytest.FixtureRequest) -> Iterator:
    """A visitor's tab in a browser context of its own (no cookies from another test). At the end,
    every page this test declares (@pytest.mark.photographs) must have been photographed by it."""
    declared = [name for mark in request.node.iter_markers("photographs") for name in mark.args]
    context = browser.new_context(viewport=DESKTOP, base_url=stack.url)
    # Nothing outside the platform may be fetched: no CDN, no web font.
    outside: list[str] = []
    context.route("**/*", lambda route: route.continue_() if route.request.url.startswith(stack.url)
                  else (outside.append(route.request.url), route.abort()))
    page = context.new_page()
    page.set_default_timeout(30_000)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("dialog", lambda dialog: dialog.accept())
    page.drtech_declared = declared
    page.drtech_shot = []
    yield page
    context.close()
    assert outside == [], f"the UI fetched from outside the platform: {outside}"
    assert errors == [], f"JavaScript errors: {errors}"
    body = request.node.stash.get(CALL_REPORT, None)
    if body is None or not body.passed:
        return   # the body's own failure says what went wrong
    taken = {name for name, _ in page.drtech_shot}
    assert taken == set(declared), f"declared {sorted(declared)} but photographed {sorted(taken)}"
    for _, path in page.drtech_shot:
        with Image.open(path) as image:         # a real PNG of a page, not an empty file
            assert image.format == "PNG" and image.width >= PHONE["width"], path


def shoot(page, name: str) -> None:
    """Desktop and phone-width screenshots of a page the test declares; at phone width nothing may
    overflow sideways."""
    assert name in page.drtech_declared, f"{name} is not declared by @pytest.mark.photographs"
    desktop, phone = SCREENSHOTS / f"{name}-desktop.png", SCREENSHOTS / f"{name}-phone.png"
    for path in (desktop, phone):   # an older run's file must not pass for this one
        path.unlink(missing_ok=True)
    page.screenshot(path=str(desktop), full_page=True)
    page.set_viewport_size(PHONE)
    overflow = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
    page.screenshot(path=str(phone), full_page=True)
    page.drtech_shot.extend([(name, desktop), (name, phone)])
    page.set_viewport_size(DESKTOP)
    assert overflow <= 0, f"{name}: the page is {overflow}px wider than a phone screen"


@dataclass
class Account:
    email: str
    password: str


@pytest.fixture
def account(stack: Stack) -> Account:
    """A new account (first name Ada), made through the API."""
    made = Account(new_email(), PASSWORD)
    reply = httpx.post(f"{stack.url}/api/v1/auth/signup", timeout=60,
                       json={"email": made.email, "password": made.password, "first_name": "Ada",
                             "surname": "Lovelace"})
    assert reply.status_code == 201, reply.text
    return made


@pytest.fixture
def signed_in(page, account: Account):
    """`page`, signed in as `account` (the log-in's cookie is in its browser context)."""
    reply = page.request.post("/api/v1/auth/login", headers=_api_headers(),
                              data={"email": account.email, "password": account.password})
    assert reply.status == 200, reply.text()
    return page


def _upload(page, kind: str, exam_type: str) -> dict:
    """A diagnosis made in the page's own session (page.request shares its cookies)."""
    image = {"name": f"{kind}.jpg", "mimeType": "image/jpeg", "buffer": sample_image_bytes(kind)}
    reply = page.request.post("/api/v1/diagnoses?explain=false", headers=_api_headers(),
                              multipart={"file": image, "exam_type": exam_type})
    assert reply.status == 201, reply.text()
    return reply.json()


def write_file(tmp: Path, name: str, data: bytes) -> Path:
    path = tmp / name
    path.write_bytes(data)
    return path


# --- the story ----------------------------------------------------------------------------------


@pytest.mark.photographs("01-home")
def test_home_has_a_keyboard_usable_carousel_three_steps_and_a_footer(page) -> None:
    page.goto("/")
    carousel = page.locator("[aria-roledescription=carousel]")
    slides = carousel.locator("[aria-roledescription=slide]")
    assert slides.count() == 3
    assert slides.nth(0).is_visible() and not slides.nth(1).is_visible()
    page.focus("#carousel-next")
    page.keyboard.press("Enter")
    assert slides.nth(1).is_visible() and not slides.nth(0).is_visible()
    assert "Sign up" in slides.nth(1).inner_text()
    page.get_by_role("button", name="Slide 3: a quote").click()
    assert slides.nth(2).locator("blockquote").is_visible()
    assert page.locator(".steps > li").count() == 3
    footer = page.locator("footer")
    assert "contact@" in footer.inner_text() and "©" in footer.inner_text()
    # The linked icon exists (it was a 404 on every page), and the Sign up pill has room inside.
    # (Fetched beside the page: Chromium fails a page's own fetch of a favicon under page.route.)
    icon = page.request.get(page.evaluate("document.querySelector('link[rel=icon]').href"))
    assert icon.status == 200 and icon.headers["content-type"] == "image/vnd.microsoft.icon"
    pill = page.locator("nav a.button-small")
    assert pill.inner_text() == "Sign up"
    assert pill.evaluate("a => parseFloat(getComputedStyle(a).paddingLeft) >= 8 "
                         "&& parseFloat(getComputedStyle(a).paddingRight) >= 8")
    page.get_by_role("button", name="Slide 1: what Dr.Tech does").click()
    shoot(page, "01-home")


@pytest.mark.photographs("02-signup-refused")
def test_sign_up_shows_the_servers_own_message_next_to_each_bad_field(page, stack: Stack) -> None:
    page.goto("/signup")
    for field in ("first_name", "surname", "email", "password", "address1", "address2", "city", "state",
                  "zip", "gender", "birth_date"):
        label = page.locator(f"label[for={field}]")
        assert label.count() == 1 and label.inner_text().strip(), f"{field} has no label"
    # Leaving a field checks it at once, with the server's rule, before anything is submitted.
    page.fill("#zip", "12")
    page.keyboard.press("Tab")
    page.wait_for_selector("#zip-error:not(:empty)")
    assert "5 digits" in page.inner_text("#zip-error")
    assert page.inner_text("#email-error") == ""   # untouched fields stay quiet
    bad = {"email": "not-an-email", "password": "short", "first_name": "Ada", "surname": "Lovelace",
           "zip": "12", "birth_date": "2999-01-01"}
    for field, value in bad.items():
        page.fill(f"#{field}", value)
    page.click("button[type=submit]")
    page.wait_for_selector("#email-error:not(:empty)")
    shown = {field: page.inner_text(f"#{field}-error") for field in ("email", "password", "zip", "birth_date")}
    # The same form sent straight to the API: the server's 422 says exactly the same.
    server = httpx.post(f"{stack.url}/api/v1/auth/signup", json={**bad, "gender": ""}).json()["errors"]
    assert shown == {field: server[field] for field in shown}
    assert set(server) == set(shown)
    assert page.get_attribute("#zip", "aria-invalid") == "true"
    assert "correct the fields" in page.inner_text("#form-status")
    shoot(page, "02-signup-refused")
    # Focus goes to the first bad field in page order (first name), not in the order the server lists.
    page.fill("#first_name", "")
    page.click("button[type=submit]")
    page.wait_for_selector("#first_name-error:not(:empty)")
    assert page.evaluate("() => document.activeElement.id") == "first_name"
    page.fill("#first_name", "Ada")

    page.fill("#email", new_email())
    page.fill("#password", PASSWORD)
    page.fill("#zip", "12345")
    page.fill("#birth_date", "1990-05-17")
    page.select_option("#gender", "female")
    page.fill("#address1", "1 Main Street")
    page.fill("#city", "Springfield")
    sign_ups: list[str] = []
    page.on("request", lambda request: sign_ups.append(request.method)
            if request.url.endswith("/api/v1/auth/signup") else None)
    with page.expect_navigation(url="**/app"):
        page.dblclick("button[type=submit]")                  # a double click signs up once
    assert sign_ups == ["POST"]


@pytest.mark.photographs("03-login")
def test_log_out_then_log_in_with_the_keyboard(signed_in, account: Account) -> None:
    page = signed_in
    page.goto("/app")
    page.click("#logout-button")
    page.wait_for_url("**/")
    page.goto("/login")
    shoot(page, "03-login")
    page.focus("#email")
    page.keyboard.type(account.email)
    page.keyboard.press("Tab")
    page.keyboard.type(account.password)
    with page.expect_navigation(url="**/app"):
        page.keyboard.press("Enter")
    assert "Log out (Ada)" in page.inner_text("nav")


def diagnose(page, path: Path, exam_type: str) -> None:
    page.goto("/app")
    page.set_input_files("#file", str(path))
    page.wait_for_selector("#preview:not([hidden]) #preview-image")
    page.wait_for_function("() => document.querySelector('#preview-image').naturalWidth > 0")
    page.check(f"#exam-{exam_type}")
    # The progress indicator shows while the upload and the model run (too briefly to photograph).
    page.evaluate("""() => {
      window.sawProgress = false;
      new MutationObserver(() => { if (!document.querySelector('#progress').hidden) window.sawProgress = true; })
        .observe(document.querySelector('#progress'), { attributes: true });
    }""")
    page.click("#diagnose-button")
    page.wait_for_selector("#result[data-ready=true]", timeout=60_000)
    assert page.evaluate("() => window.sawProgress") is True
    assert page.locator("#progress").is_hidden()


@pytest.mark.parametrize(
    ("kind", "exam_type", "expected_exam"),
    [pytest.param(kind, exam_type, exam, marks=pytest.mark.photographs(f"04-result-{kind}"))
     for kind, exam_type, exam in [("chest_xray", "chest_xray", "Chest X-ray"), ("skin_lesion", "auto", "Skin lesion"),
                                   ("bone_dicom", "auto", "Bone X-ray")]],
)
def test_each_kind_of_image_gets_a_result_card_with_a_heatmap_to_toggle_and_fade(
    signed_in, tmp_path: Path, kind: str, exam_type: str, expected_exam: str
) -> None:
    page = signed_in
    if kind == "bone_dicom":
        knee = np.asarray(Image.open(io.BytesIO(sample_image_bytes("bone_xray"))).convert("L"), dtype=np.uint16)
        data = make_dicom(knee * 16, extra={"Modality": "DX", "BodyPartExamined": "KNEE",
                                            "PatientName": PATIENT_NAME, "PatientID": PATIENT_ID})
        path = write_file(tmp_path, "knee.dcm", data)
    else:
        path = write_file(tmp_path, f"{kind}.jpg", sample_image_bytes(kind))
    diagnose(page, path, exam_type)

    finding = page.inner_text("#result-finding")
    assert finding.startswith("Finding: ") and "% probability" in finding
    # A model's 0.9996 is not a certainty: never "100.0%" or "0.0%", but ">99.9%" and "<0.1%".
    shown = page.inner_text("#result")
    assert "100.0%" not in shown and not re.search(r"(?<![\d.])0\.0%", shown), shown
    assert page.inner_text("#result-exam").startswith(expected_exam)
    if exam_type == "auto":
        assert "recognised automatically" in page.inner_text("#result-exam")
    bars = page.locator("#result-bars > li")
    assert bars.count() == {"chest_xray": 2, "skin_lesion": 7, "bone_dicom": 2}[kind]
    assert "Not for clinical use" in page.inner_text("#result")
    link = page.locator("#result-card-link")
    assert link.get_attribute("href").startswith("/models#model-")
    task = {"chest_xray": "pneumonia", "skin_lesion": "skin", "bone_dicom": "bone"}[kind]
    card = json.loads((ROOT / "services" / task / "model" / "card.json").read_text())
    assert page.inner_text("#result-model").strip() == f"{card['name']} {card['version']}"

    heatmap = page.locator("#result-heatmap")
    page.wait_for_function("() => document.querySelector('#result-heatmap').naturalWidth > 0")
    page.wait_for_function("() => document.querySelector('#result-image').naturalWidth > 0")
    assert heatmap.is_visible()
    page.fill("#heatmap-opacity", "30")
    assert heatmap.evaluate("node => getComputedStyle(node).opacity") == "0.3"
    assert page.inner_text("#heatmap-opacity-value") == "30%"
    page.fill("#heatmap-opacity", "80")
    shoot(page, f"04-result-{kind}")
    page.uncheck("#heatmap-toggle")
    assert not heatmap.is_visible()
    page.check("#heatmap-toggle")
    assert heatmap.is_visible()
    assert PATIENT_NAME not in page.content() and PATIENT_ID not in page.content()


@pytest.mark.photographs("05-client-dicom-preview")
def test_a_dicom_is_previewed_before_it_is_sent(signed_in, tmp_path: Path) -> None:
    page = signed_in
    knee = np.asarray(Image.open(io.BytesIO(sample_image_bytes("bone_xray"))).convert("L"), dtype=np.uint16)
    path = write_file(tmp_path, "preview.dcm", make_dicom(knee * 16, extra={"PatientName": PATIENT_NAME}))
    page.goto("/app")
    page.set_input_files("#file", str(path))
    page.wait_for_function("() => document.querySelector('#preview-image').naturalWidth > 0")
    assert page.locator("#preview-image").get_attribute("src").startswith("blob:")
    shoot(page, "05-client-dicom-preview")


@pytest.mark.photographs("06-client-bad-file")
def test_an_image_that_is_none_of_the_three_and_a_bad_file_get_a_clear_message(signed_in, tmp_path: Path) -> None:
    page = signed_in
    noise = np.random.default_rng(3).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    page.goto("/app")
    page.set_input_files("#file", str(write_file(tmp_path, "noise.jpg", jpeg_bytes(Image.fromarray(noise)))))
    page.check("#exam-auto")
    page.click("#diagnose-button")
    page.wait_for_selector("#file-error:not(:empty)")
    assert "does not look like a chest X-ray" in page.inner_text("#file-error")
    assert page.inner_text("#form-status") == ""   # said once, next to the file, not twice
    assert page.locator("#result").is_hidden()

    page.set_input_files("#file", str(write_file(tmp_path, "report.jpg", b"%PDF-1.4 this is not an image" * 20)))
    page.wait_for_selector("#file-error:not(:empty)")   # the preview already says so
    page.check("#exam-chest_xray")
    page.click("#diagnose-button")
    page.wait_for_selector("#form-status:not(:empty)")
    message = page.inner_text("#form-status")
    assert "Unsupported file" in message or "cannot be used" in message
    assert "Traceback" not in page.content()
    shoot(page, "06-client-bad-file")


@pytest.mark.photographs("07-history")
def test_history_lists_newest_first_filters_opens_and_deletes(signed_in) -> None:
    page = signed_in
    for kind in ("chest_xray", "skin_lesion", "bone_xray"):   # the bone X-ray is the newest
        _upload(page, kind, kind)
    page.goto("/history")
    items = page.locator("#history-list > li")
    items.first.wait_for()
    assert items.count() == 3
    texts = [items.nth(i).inner_text() for i in range(3)]
    assert texts[0].startswith("Bone X-ray") and texts[2].startswith("Chest X-ray")   # newest first
    page.wait_for_function("() => [...document.querySelectorAll('#history-list img')].every(i => i.naturalWidth > 0)")
    shoot(page, "07-history")

    page.select_option("#filter-exam", "skin_lesion")
    page.wait_for_function("() => document.querySelectorAll('#history-list > li').length === 1")
    assert items.first.inner_text().startswith("Skin lesion")
    page.select_option("#filter-exam", "")
    page.wait_for_function("() => document.querySelectorAll('#history-list > li').length === 3")

    items.nth(2).get_by_role("link").click()
    page.wait_for_selector("#result[data-ready=true]")
    assert page.inner_text("#result-exam").startswith("Chest X-ray")
    # A stored result is in History (its section), not "New diagnosis" (whose page it shares).
    current = page.locator("nav [aria-current]")
    assert current.count() == 1 and current.inner_text() == "History"
    assert current.get_attribute("aria-current") == "true"
    page.go_back()
    items.first.wait_for()
    items.nth(0).get_by_role("button", name="Delete").click()   # the confirmation dialog is accepted
    page.wait_for_function("() => document.querySelectorAll('#history-list > li').length === 2")
    assert not items.first.inner_text().startswith("Bone X-ray")


def _api_headers() -> dict[str, str]:
    return {"X-Requested-With": "fetch"}     # the gateway's CSRF guard for cookie requests


def _at_least_results(page, count: int) -> int:
    """Upload chest X-rays in the browser's own session (page.request shares its cookies) until the
    history holds `count` results; returns how many it holds."""
    chest = {"name": "chest.jpg", "mimeType": "image/jpeg", "buffer": sample_image_bytes("chest_xray")}
    total = page.request.get("/api/v1/diagnoses?limit=1", headers=_api_headers()).json()["total"]
    for _ in range(count - total):
        reply = page.request.post("/api/v1/diagnoses?explain=false", headers=_api_headers(),
                                  multipart={"file": chest, "exam_type": "chest_xray"})
        assert reply.status == 201, reply.text()
    return max(total, count)


def _until_held(page, held: list, count: int) -> None:
    """Wait (at most 5 s) until `count` requests are held by a page.route handler."""
    for _ in range(100):
        if len(held) >= count:
            return
        page.wait_for_timeout(50)
    raise AssertionError(f"{len(held)} of {count} requests were held")


def test_deleting_the_last_result_of_the_last_history_page_shows_the_page_before(signed_in) -> None:
    page = signed_in
    assert _at_least_results(page, 13) == 13
    page.goto("/history")
    items = page.locator("#history-list > li")
    items.first.wait_for()
    page.click("#next-page")
    page.wait_for_function("() => document.querySelector('#page-info').textContent.startsWith('13')")
    assert items.count() == 1

    items.first.get_by_role("button", name="Delete").click()

    page.wait_for_function("() => document.querySelector('#page-info').textContent === '1–12 of 12'")
    assert items.count() == 12 and page.locator("#history-empty").is_hidden()
    assert page.evaluate("() => document.activeElement.closest('#history-list') !== null")


def test_history_pages_from_what_it_shows_and_drops_a_late_reply_to_an_older_filter(signed_in) -> None:
    """A double click on "Older" moves one page, and a slow reply for a filter since changed never
    replaces the list of the filter now chosen."""
    page = signed_in
    total = _at_least_results(page, 25)
    page.goto("/history")
    page.wait_for_function(f"() => document.querySelector('#page-info').textContent === '1–12 of {total}'")

    held: list = []

    def history_list(url: str) -> bool:
        return "/api/v1/diagnoses?" in url

    page.route(history_list, lambda route: held.append(route))
    try:
        page.click("#next-page")
        page.click("#next-page")              # before the first click's page has come
        _until_held(page, held, 2)
        for route in held:
            route.continue_()
        held.clear()
        page.wait_for_function(f"() => document.querySelector('#page-info').textContent === '13–24 of {total}'")

        page.select_option("#filter-exam", "skin_lesion")     # held: its reply comes last
        page.select_option("#filter-exam", "")
        _until_held(page, held, 2)
        with page.expect_response(lambda response: history_list(response.url)):
            held[1].continue_()
        page.wait_for_function(f"() => document.querySelector('#page-info').textContent === '1–12 of {total}'")
        with page.expect_response(lambda response: history_list(response.url)):
            held[0].continue_()               # the skin filter's reply, late
        page.wait_for_timeout(300)
        assert page.inner_text("#page-info") == f"1–12 of {total}"
        assert page.locator("#history-list > li").count() == 12
    finally:
        page.unroute(history_list)


def test_a_failed_retry_keeps_its_button_for_a_later_try(signed_in) -> None:
    page = signed_in
    newest = _upload(page, "chest_xray", "chest_xray")
    url = f"/api/v1/diagnoses/{newest['id']}"
    failed = {**newest, "status": "failed", "detail": "The chest model did not answer.", "label": None,
              "label_display": None, "confidence": None, "probabilities": None}
    # The backends are up, so the UI's failure paths are staged at the browser's network layer.
    page.route(f"**{url}", lambda route: route.fulfill(json=failed))
    replies = iter([{"status": 503, "json": {"detail": "The chest model is unavailable; try again shortly."}},
                    {"status": 200, "json": newest}])
    page.route(f"**{url}/retry", lambda route: route.fulfill(**next(replies)))
    try:
        page.goto(f"/results/{newest['id']}")
        page.wait_for_selector("#result[data-ready=true]")
        # Plain words for a person, not the API's retry endpoint
        assert "could not answer just now" in page.inner_text("#result-detail")
        assert "/api/v1" not in page.inner_text("#result-detail")

        page.click("#retry-button")
        page.wait_for_function(
            "() => document.querySelector('#result-detail-text').textContent.includes('try again shortly')")
        assert page.locator("#retry-button").is_enabled()
        assert "try again shortly" in page.inner_text("#form-status")     # announced, not only shown
        assert page.evaluate("() => document.activeElement.id") == "retry-button"

        page.click("#retry-button")
        page.wait_for_selector("#result-finding:has-text('Finding:')")
        assert page.locator("#retry-button").count() == 0 and page.locator("#result-detail").is_hidden()
        assert page.inner_text("#form-status") == "Done."
        # The focused button went away with the failure: focus moved to the finding, not to <body>.
        assert page.evaluate("() => document.activeElement.id") == "result-finding"
    finally:
        page.unroute(f"**{url}")
        page.unroute(f"**{url}/retry")


def test_a_late_retry_reply_never_replaces_the_result_of_a_newer_upload(signed_in, tmp_path: Path) -> None:
    page = signed_in
    newest = _upload(page, "chest_xray", "chest_xray")
    failed = {**newest, "status": "failed", "detail": "The chest model did not answer.", "label": None,
              "label_display": None, "confidence": None, "probabilities": {}}
    late = {**newest, "exam_type": "skin_lesion", "label": "mel", "label_display": "Melanoma", "confidence": 0.9,
            "probabilities": {"mel": 0.9, "nv": 0.1}}
    held: list = []

    def first_upload_fails(route) -> None:
        page.unroute("**/api/v1/diagnoses?explain=*")          # the next upload reaches the server
        route.fulfill(status=201, json=failed)

    page.route("**/api/v1/diagnoses?explain=*", first_upload_fails)
    page.route(f"**/api/v1/diagnoses/{newest['id']}/retry", lambda route: held.append(route))
    try:
        chest = write_file(tmp_path, "chest.jpg", sample_image_bytes("chest_xray"))
        diagnose(page, chest, "chest_xray")                   # staged as failed
        page.click("#retry-button")                           # its reply is held back
        _until_held(page, held, 1)
        page.click("#diagnose-button")                        # a newer upload, really diagnosed
        page.wait_for_selector("#result-finding:has-text('Finding:')")
        assert page.inner_text("#result-exam").startswith("Chest X-ray")

        held[0].fulfill(status=200, json=late)                # the retry answers late
        page.wait_for_timeout(500)
        assert page.inner_text("#result-exam").startswith("Chest X-ray")
        assert "Melanoma" not in page.inner_text("#result-finding")
    finally:
        page.unroute(f"**/api/v1/diagnoses/{newest['id']}/retry")


def test_a_slow_preview_of_an_earlier_file_never_replaces_the_preview_of_the_chosen_one(
    signed_in, tmp_path: Path
) -> None:
    page = signed_in
    held: list = []
    page.route("**/api/v1/previews", lambda route: held.append(route))
    try:
        page.goto("/app")
        knee = np.asarray(Image.open(io.BytesIO(sample_image_bytes("bone_xray"))).convert("L"), dtype=np.uint16)
        page.set_input_files("#file", str(write_file(tmp_path, "slow.dcm", make_dicom(knee * 16))))
        for _ in range(400):                             # until the preview request is held
            if held:
                break
            page.wait_for_timeout(50)
        assert held, "the DICOM was not sent for a server preview"
        wide = jpeg_bytes(Image.new("RGB", (300, 200), (90, 140, 60)))
        page.set_input_files("#file", str(write_file(tmp_path, "chosen.jpg", wide)))
        page.wait_for_function("() => document.querySelector('#preview-image').naturalWidth === 300")

        with page.expect_response("**/api/v1/previews"):
            held[0].continue_()                          # the DICOM's preview arrives late
        page.wait_for_timeout(500)

        assert page.evaluate("() => document.querySelector('#preview-image').naturalWidth") == 300
        assert page.inner_text("#preview-name").startswith("chosen.jpg")
        assert page.inner_text("#file-error") == ""
    finally:
        page.unroute("**/api/v1/previews")


@pytest.mark.photographs("08-models")
def test_models_page_shows_every_card_with_data_intervals_and_limitations(page) -> None:
    page.goto("/models")
    cards = page.locator("article.model-card")
    cards.first.wait_for()
    assert cards.count() == 4
    for index in range(4):
        text = cards.nth(index).inner_text()
        assert "Licence" in text and "95% CI" in text and "Limitations" in text, text[:200]
    assert "Router" in cards.nth(3).inner_text() and "ood rejection rate" in cards.nth(3).inner_text()
    # Skin and bone average over views of each image (training/tta.py); pneumonia answers one view.
    augmented = {card: "Test-time augmentation" in page.locator(f"#model-{card}").inner_text()
                 for card in ("skin", "bone", "pneumonia")}
    assert augmented == {"skin": True, "bone": True, "pneumonia": False}
    assert "mean over 8 views" in page.locator("#model-skin").inner_text()
    shoot(page, "08-models")


@pytest.mark.photographs("10-api-docs")
def test_the_api_docs_render_from_the_gateway_alone_under_its_csp(page) -> None:
    console: list[str] = []
    page.on("console", lambda message: console.append(message.text) if message.type == "error" else None)
    page.goto("/docs")
    operations = page.locator(".opblock")
    operations.first.wait_for()
    assert operations.count() >= 10
    assert page.locator(".opblock-summary-path[data-path='/api/v1/diagnoses']").count() >= 1
    shoot(page, "10-api-docs")
    assert [text for text in console if "Content Security Policy" in text] == []


def test_when_the_session_ends_elsewhere_the_next_request_goes_to_log_in_and_back(
    signed_in, account: Account
) -> None:
    page = signed_in
    _upload(page, "chest_xray", "chest_xray")
    page.goto("/history")
    page.locator("#history-list > li").first.wait_for()
    assert page.request.post("/api/v1/auth/logout", headers=_api_headers()).status == 204   # e.g. another tab

    page.select_option("#filter-exam", "chest_xray")   # the list reloads: 401

    page.wait_for_url(lambda url: url.endswith("/login?next=%2Fhistory"))
    page.fill("#email", account.email)
    page.fill("#password", account.password)
    with page.expect_navigation(url="**/history"):
        page.click("#login-form button[type=submit]")
    page.locator("#history-list > li").first.wait_for()


def test_a_signed_in_visitor_who_mistypes_on_the_log_in_page_is_told_so(signed_in, account: Account) -> None:
    page = signed_in
    page.goto("/login")
    # Without JavaScript the forms would post, never put a password in the address
    assert page.get_attribute("#login-form", "method") == "post"
    page.fill("#email", account.email)
    page.fill("#password", "not-the-password-1")
    page.click("#login-form button[type=submit]")
    page.wait_for_selector("#form-status:has-text('Incorrect email or password')")
    assert page.url.endswith("/login")


@pytest.mark.photographs("09-account-refused")
def test_the_account_page_changes_the_password_and_logs_out_everywhere(
    signed_in, account: Account, stack: Stack
) -> None:
    page = signed_in
    new_password = "seven horses and a cart"
    other = httpx.post(f"{stack.url}/api/v1/auth/login", json={"email": account.email, "password": PASSWORD},
                       timeout=60)
    other_session = {"Authorization": f"Bearer {other.json()['access_token']}"}   # e.g. a phone
    page.goto("/account")
    # A wrong current password is this form's answer, shown by its field (not a trip to log in).
    page.fill("#current_password", "not-the-password-1")
    page.fill("#new_password", new_password)
    page.click("#password-form button[type=submit]")
    page.wait_for_selector("#current_password-error:not(:empty)")
    assert "incorrect" in page.inner_text("#current_password-error") and page.url.endswith("/account")
    # A weak new password gets the server's reason next to it.
    page.fill("#current_password", PASSWORD)
    page.fill("#new_password", "qwerty123456")
    page.click("#password-form button[type=submit]")
    page.wait_for_selector("#new_password-error:not(:empty)")
    assert "too common" in page.inner_text("#new_password-error")
    assert page.get_attribute("#new_password", "aria-invalid") == "true"
    shoot(page, "09-account-refused")

    page.fill("#current_password", PASSWORD)
    page.fill("#new_password", new_password)
    page.click("#password-form button[type=submit]")
    page.wait_for_selector("#form-status[data-kind=info]:not(:empty)")
    assert "password was changed" in page.inner_text("#form-status")
    assert page.inner_text("#new_password-error") == ""
    assert httpx.get(f"{stack.url}/api/v1/me", headers=other_session).status_code == 401   # ended
    assert page.request.get("/api/v1/me").status == 200                                    # this one stays

    page.click("#logout-all-button")
    page.wait_for_url(lambda url: url.rstrip("/") == stack.url.rstrip("/"))
    assert page.request.get("/api/v1/me").status == 401
    # The new password is the one that signs in now.
    page.goto("/login")
    page.fill("#email", account.email)
    page.fill("#password", new_password)
    with page.expect_navigation(url="**/app"):
        page.click("#login-form button[type=submit]")


@pytest.mark.photographs("11-activity")
def test_the_activity_page_lists_the_accounts_own_events_newest_first(
    signed_in, account: Account, stack: Stack
) -> None:
    page = signed_in
    # The account's history: a log-in from another device, results made and opened, a refused
    # password change, and, newest, a password change made in this browser.
    other = httpx.post(f"{stack.url}/api/v1/auth/login", json={"email": account.email, "password": PASSWORD},
                       timeout=60)
    assert other.status_code == 200, other.text
    for made in [_upload(page, "chest_xray", "chest_xray") for _ in range(3)]:
        for _ in range(6):
            assert page.request.get(f"/api/v1/diagnoses/{made['id']}", headers=_api_headers()).status == 200
    for current in ("not-the-password-1", PASSWORD):
        page.request.post("/api/v1/auth/password", headers=_api_headers(),
                          data={"current_password": current, "new_password": "seven horses and a cart"})
    page.goto("/app")
    page.click("nav >> text=Activity")
    page.wait_for_url("**/activity")
    assert page.get_attribute("nav a[href='/activity']", "aria-current") == "page"
    page.wait_for_selector("#activity-list tr")
    rows = page.locator("#activity-list tr").all_inner_texts()
    # The password change is the newest event; the refused change (wrong current password) and
    # the log-in from another device are there too.
    assert "Password change" in rows[0] and "Done" in rows[0] and "HeadlessChrome" in rows[0]
    assert any("Password change" in row and "Refused" in row for row in rows)
    assert any("Log-in" in row and "python-httpx" in row for row in rows)
    assert page.locator("#activity-list a[href^='/results/']").count() > 0   # images of the results viewed
    shoot(page, "11-activity")
    total = int(page.inner_text("#page-info").rsplit(" of ", 1)[1])
    assert total == 26   # sign-up, 2 log-ins, 3 results made, 18 opened, 2 password changes
    page.click("#next-page")
    page.wait_for_function("() => document.querySelector('#page-info').textContent.startsWith('26')")
    assert not page.locator("#prev-page").is_disabled()


def test_after_log_out_the_client_page_sends_you_to_log_in(signed_in) -> None:
    page = signed_in
    page.goto("/app")
    page.click("#logout-button")
    page.wait_for_url("**/")
    page.goto("/app")
    assert "/login" in page.url
    assert page.locator("#login-form").is_visible()
    page.goto("/history")
    assert "/login" in page.url
    page.goto("/activity")
    assert "/login" in page.url


def test_every_page_of_the_story_is_photographed_by_a_test_that_declares_it() -> None:
    """Each page is declared by exactly one test (@pytest.mark.photographs), whose `page` fixture
    checks that the test itself photographed it; so no page of the story goes unphotographed,
    whichever tests run and in whatever order."""
    expected = ["01-home", "02-signup-refused", "03-login", "04-result-bone_dicom", "04-result-chest_xray",
                "04-result-skin_lesion", "05-client-dicom-preview", "06-client-bad-file", "07-history",
                "08-models", "09-account-refused", "10-api-docs", "11-activity"]
    declared: list[str] = []
    for test in [value for name, value in globals().items() if name.startswith("test_")]:
        for mark in getattr(test, "pytestmark", []):
            if mark.name == "photographs":
                declared.extend(mark.args)
            elif mark.name == "parametrize":
                declared.extend(name for param in mark.args[1] if isinstance(param, type(pytest.param()))
                                for each in param.marks if each.name == "photographs" for name in each.args)
    assert sorted(declared) == expected
