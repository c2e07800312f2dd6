"""End to end in a real headless Chromium: `artifix dashboard` serves the app; the browser flags a sample and paints a
region on the streamlit-drawable-canvas; the test reads both back from the label store. Two browser sessions
labelling at once lose nothing. On the Paint page, a stroke on the canvas adds a concept's units in that region
and the edited sample appears beside the original.

Needs Debian's chromium + chromium-driver (.ci/run installs them and sets ARTIFIX_REQUIRE_BROWSER=1, so there a
missing browser fails instead of skipping).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from artifix.labels import LabelStore

ROOT = Path(__file__).resolve().parent.parent
CACHE = str(ROOT / ".artifix-cache")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
CHROME_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                "--no-first-run", "--disable-sync", "--window-size=1600,1200")
STARTUP = 600.0  # seconds the first page may take on a busy 2-core machine (generator, statistics, features): a hang guard only

if not (CHROMIUM and DRIVER):
    if os.environ.get("ARTIFIX_REQUIRE_BROWSER"):
        raise RuntimeError("ARTIFIX_REQUIRE_BROWSER is set but chromium / chromedriver are not installed (scripts/ci_system_deps.sh installs them)")
    pytest.skip("needs Debian chromium + chromium-driver (apt-get install chromium chromium-driver)", allow_module_level=True)

selenium = pytest.importorskip("selenium")
from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.options import Options  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.common.exceptions import StaleElementReferenceException  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(fn, what: str, timeout: float = 120.0, every: float = 0.25):
    """Poll fn() until it returns something truthy; fail with `what` after `timeout` seconds (a hang guard)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            v = fn()
        except Exception:  # noqa: BLE001  (a page mid-rerun may detach elements)
            v = None
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(every)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`artifix dashboard` on a free localhost port with a fresh label store and small settings."""
    tmp = tmp_path_factory.mktemp("dash")
    port = _free_port()
    store = tmp / "labels.sqlite"
    cmd = [sys.executable, "-m", "artifix", "dashboard", "--store", str(store), "--stats-n", "200", "--pool", "18",
           "--page-size", "6", "--dissect-n", "100", "--port", str(port), "--cache", CACHE, "--classifier", str(tmp / "clf.pt"), "--out", str(tmp / "repair")]
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    log = open(tmp / "server.log", "w")
    proc = subprocess.Popen(cmd, cwd=tmp, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        def up():
            assert proc.poll() is None, (tmp / "server.log").read_text()
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", port)) == 0

        wait_for(up, "the dashboard server to listen", STARTUP)
        yield f"http://127.0.0.1:{port}/", store, tmp
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()

        def closed():
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", port)) != 0

        # stopping `artifix dashboard` stops the server itself (it execs Streamlit): no orphan keeps the port
        wait_for(closed, "the server to stop with the command", 30)


def browser(extra: tuple[str, ...] = ()):
    """A headless Chromium session (`extra` flags after the usual ones: a later --window-size wins)."""
    o = Options()
    o.binary_location = CHROMIUM
    for a in (*CHROME_FLAGS, *extra):
        o.add_argument(a)
    return webdriver.Chrome(service=Service(DRIVER), options=o)


def open_review(drv, url: str | None, page_size: int = 6) -> list[int]:
    """Load the app (unless `url` is None: the page already open); the sample ids of the review grid (once all
    `page_size` tiles are drawn), in queue order."""
    if url is not None:
        drv.get(url)

    def batch():
        els = drv.find_elements(By.CSS_SELECTOR, "[class*='st-key-flag-'][class*='-clean']")
        ids = []
        for e in els:
            cls = next(c for c in e.get_attribute("class").split() if c.startswith("st-key-flag-"))
            ids.append(int(cls.split("-")[3]))
        return ids if len(ids) == page_size else None

    return wait_for(batch, "the review grid", STARTUP)


def idle(drv) -> bool:
    """Whether the app's script has finished its run in this browser session (what a person waits for by eye)."""
    return drv.find_element(By.CSS_SELECTOR, "[data-testid='stApp']").get_attribute("data-test-script-state") == "notRunning"


def click_flag(drv, sample: int, label: str) -> None:
    """Click a flag button once the page is idle, as a person does (mid-run, the button may be a stale copy being replaced)."""
    def attempt() -> bool:
        if not idle(drv):
            return False
        try:
            drv.find_element(By.CSS_SELECTOR, f".st-key-flag-{sample}-{label} button").click()
        except StaleElementReferenceException:  # replaced between the idle check and the click: nothing was clicked
            return False
        return True

    wait_for(attempt, f"a click on {label} of sample {sample}", STARTUP)


def run_id(store_path: Path) -> int:
    with LabelStore(str(store_path)) as s:
        (run,) = s.runs()
        return run.id


def test_browser_flags_a_sample_and_paints_a_region(server):
    url, store_path, tmp = server
    drv = browser()
    try:
        batch = open_review(drv, url)
        assert len(batch) == 6
        rid = run_id(store_path)
        store = LabelStore(str(store_path))
        # one click flags a sample, saved at once
        click_flag(drv, batch[1], "clean")
        wait_for(lambda: store.label(rid, batch[1]) == "clean", "the clean flag in the label store")
        # paint a stroke on the drawable canvas (the paint panel shows the first sample of the batch), once the rerun
        # the click started has finished: a canvas drawn mid-rerun may be replaced, stroke and all, as a person sees
        wait_for(lambda: idle(drv), "the page to finish its run", STARTUP)
        host = wait_for(lambda: drv.execute_script(
            "return Array.from(document.querySelectorAll('*')).find(e => e.shadowRoot && e.shadowRoot.querySelector('canvas.upper-canvas'))"),
            "the drawing canvas")
        upper = host.shadow_root.find_element(By.CSS_SELECTOR, "canvas.upper-canvas")
        assert upper.size == {"width": 320, "height": 320}  # 64 px image x 5
        (ActionChains(drv).move_to_element_with_offset(upper, -100, -60).click_and_hold()
         .move_by_offset(40, 0).move_by_offset(40, 0).move_by_offset(40, 0).release().perform())
        wait_for(lambda: len(store.mask_records(rid)) > 0, "the painted mask in the label store")
        mask = store.mask(rid, batch[0])
        assert store.label(rid, batch[0]) == "artifact"  # a painted sample is an artifact sample
        ys, xs = np.nonzero(mask)
        # the stroke went from canvas (60, 100) to (180, 100): image x 12..36, y 20, 4 image pixels wide
        assert 17 <= ys.min() and ys.max() <= 23 and 9 <= xs.min() <= 14 and 33 <= xs.max() <= 39
        assert 60 <= mask.sum() <= 200
        rec = store.mask_records(rid)
        assert set(rec.reviewer) == {store.flags(rid).set_index("sample").loc[batch[0], "reviewer"]}
        # the page shows the saved region and the counters include it
        wait_for(lambda: "saved region" in drv.page_source, "the saved-region caption")
        shot = tmp / "dashboard_e2e.png"
        drv.save_screenshot(str(shot))
        with Image.open(shot) as im:
            assert im.size[0] >= 1200
        out_dir = os.environ.get("ARTIFIX_SCREENSHOT_DIR")
        if out_dir:
            shutil.copy(shot, Path(out_dir) / "dashboard_e2e.png")
    finally:
        drv.quit()


def test_two_browser_sessions_labelling_at_once_lose_nothing(server):
    url, store_path, _ = server
    drivers = [browser(), browser()]
    try:
        batches = [open_review(d, url) for d in drivers]
        rid = run_id(store_path)
        store = LabelStore(str(store_path))
        names = ["ana", "ben"]
        for d, name in zip(drivers, names):  # each session names its reviewer in the sidebar
            box = d.find_element(By.CSS_SELECTOR, ".st-key-reviewer input")
            box.send_keys(Keys.CONTROL, "a")
            box.send_keys(name, Keys.ENTER)
        wait_for(lambda: all(f"by {n}" in d.page_source for d, n in zip(drivers, names)), "both reviewer names applied")
        before = len(store.flag_history(rid))
        common = sorted(set(batches[0]) & set(batches[1]))
        assert len(common) == 6  # the same queue in both sessions
        plans = [[(s, "artifact" if i % 2 else "unsure") for i, s in enumerate(common)],
                 [(s, "clean") for s in common]]  # both sessions label the same samples, at the same time
        errors = []

        def latest(name: str, s: int) -> str | None:
            f = store.reviewer_flags(rid, name)
            hit = f[f["sample"] == s]
            return None if hit.empty else str(hit["label"].iloc[0])

        def work(d, name, plan):
            try:
                for s, lab in plan:
                    click_flag(d, s, lab)
                    wait_for(lambda: latest(name, s) == lab, f"{name}'s {lab} on sample {s}")
            except Exception as e:  # noqa: BLE001
                errors.append(e)

        threads = [threading.Thread(target=work, args=(d, n, p)) for d, n, p in zip(drivers, names, plans)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        hist = store.flag_history(rid).iloc[before:]
        for name, plan in zip(names, plans):
            mine = hist[hist.reviewer == name]
            assert list(zip(mine["sample"], mine["label"])) == plan  # every click of each session, in order
        per_reviewer = store.reviewer_flags(rid)
        assert len(per_reviewer[per_reviewer.reviewer.isin(names)]) == 2 * len(common)
    finally:
        for d in drivers:
            d.quit()


def png_of(el) -> np.ndarray:
    """What the browser shows of element `el`, as RGB (int)."""
    import io

    with Image.open(io.BytesIO(el.screenshot_as_png)) as im:
        return np.asarray(im.convert("RGB")).astype(int)


def test_browser_paints_a_concept_in_a_region(server):
    url, _, tmp = server
    drv = browser()
    try:
        drv.get(url)
        wait_for(lambda: drv.find_elements(By.XPATH, "//div[contains(@class,'st-key-page')]//label[contains(., 'Paint')]"),
                 "the page list", STARTUP)
        wait_for(lambda: idle(drv), "the first page to finish its run", STARTUP)
        drv.find_element(By.XPATH, "//div[contains(@class,'st-key-page')]//label[contains(., 'Paint')]").click()
        wait_for(lambda: any(h.text == "Paint" for h in drv.find_elements(By.CSS_SELECTOR, "h2")), "the Paint page")
        wait_for(lambda: "Draw the region" in drv.page_source, "the invitation to draw", STARTUP)
        host = wait_for(lambda: drv.execute_script(
            "return Array.from(document.querySelectorAll('*')).find(e => e.shadowRoot && e.shadowRoot.querySelector('canvas.upper-canvas'))"),
            "the drawing canvas")
        upper = host.shadow_root.find_element(By.CSS_SELECTOR, "canvas.upper-canvas")
        assert upper.size == {"width": 320, "height": 320}  # 64 px image x 5
        # a blob in the upper-left sky of sample 0: three strokes at canvas y 45, 75, 105 from x 40 to 140
        # (the brush is 6 image px = 30 canvas px wide, so the region is about canvas x 25..155, y 30..120)
        for dy in (-115, -85, -55):
            (ActionChains(drv).move_to_element_with_offset(upper, -120, dy).click_and_hold()
             .move_by_offset(25, 0).move_by_offset(25, 0).move_by_offset(25, 0).move_by_offset(25, 0).release().perform())
            time.sleep(0.5)
        after = wait_for(lambda: drv.find_element(By.CSS_SELECTOR, ".st-key-paint-after img"), "the edited sample", STARTUP)
        wait_for(lambda: idle(drv), "the page to finish its run", STARTUP)
        after = drv.find_element(By.CSS_SELECTOR, ".st-key-paint-after img")
        before = drv.find_element(By.CSS_SELECTOR, ".st-key-paint-before img")
        assert after.size["width"] == before.size["width"] == 320
        text = drv.find_element(By.CSS_SELECTOR, ".st-key-paint-summary").text
        assert "Add the top 20 'tree' units of main.5" in text  # the defaults: layer main.5, concept tree, 20 units, add
        a, b = png_of(after), png_of(before)
        diff = np.abs(a - b).max(-1)
        region = np.zeros(diff.shape, bool)  # inside the painted blob, away from its outlined border
        region[50:100, 50:130] = True
        far = np.zeros(diff.shape, bool)
        far[220:, :] = True  # the lower third, far below the strokes
        assert diff[region].mean() > 40 and diff[region].mean() > 4 * diff[far].mean()
        drv.execute_script("window.scrollTo(0, 0)")
        shot = tmp / "dashboard_paint.png"
        drv.save_screenshot(str(shot))
        out_dir = os.environ.get("ARTIFIX_SCREENSHOT_DIR")
        if out_dir:
            shutil.copy(shot, Path(out_dir) / "dashboard_paint.png")
    finally:
        drv.quit()


def test_paint_on_a_lower_tile_brings_the_canvas_into_view(server):
    url, _, _ = server
    drv = browser()
    try:
        drv.set_window_size(1600, 700)
        open_review(drv, url)
        wait_for(lambda: idle(drv), "the first page to finish its run", STARTUP)
        batch = open_review(drv, None)  # re-read once idle: a rerun after the first draw may bring another batch
        sel = f".st-key-paint-{batch[-1]} button"  # the last tile, on the lower row
        scroll = "const e = document.querySelector(arguments[0]); if (!e) return false; e.scrollIntoView({block: 'end'}); return true"
        wait_for(lambda: drv.execute_script(scroll, sel), "the Paint button of the lower tile", STARTUP)
        time.sleep(0.5)

        def canvas_box():
            host = drv.execute_script(
                "return Array.from(document.querySelectorAll('*')).find(e => e.shadowRoot && e.shadowRoot.querySelector('canvas.upper-canvas'))")
            return drv.execute_script("const r = arguments[0].getBoundingClientRect(); return [r.top, r.bottom, window.innerHeight]", host)

        top, _, height = wait_for(canvas_box, "the canvas of the first tile", STARTUP)  # a rerun may detach it
        assert top < 0, "the test needs the canvas above the viewport before the click"
        wait_for(lambda: idle(drv), "the page to finish its run", STARTUP)
        wait_for(lambda: drv.find_element(By.CSS_SELECTOR, sel).click() or True, "a click on Paint")  # re-found: a rerun replaces it
        wait_for(lambda: f"Artifact region of sample #{batch[-1]}" in drv.page_source, "the paint panel of the lower tile")

        def in_view():
            t, b, h = canvas_box()
            return t >= 0 and b <= h

        wait_for(in_view, "the canvas scrolled into the viewport", 60)
    finally:
        drv.quit()


def test_browser_ab_study_hides_the_key_until_the_end_and_records_every_answer(server):
    """The A/B page in a real browser: one blind pair at a time, no result until the last answer, every click stored."""
    from artifix.review import ab

    url, store, tmp = server
    rng = np.random.default_rng(1)
    before = {"repair": rng.integers(0, 60, (2, 8, 8, 3), dtype=np.uint8), "control": rng.integers(0, 60, (1, 8, 8, 3), dtype=np.uint8)}
    after = {k: (v + 180).astype(np.uint8) for k, v in before.items()}
    res = ab.export_study(before, after, {"repair": [1, 2], "control": [3]}, tmp / "artifix-ab", seed=5)  # the page's default folder
    study = ab.load_study(tmp / "artifix-ab")
    choices = ["right", "same", "left"]
    drv = browser()
    try:
        drv.get(url)
        label = "//div[contains(@class,'st-key-page')]//label[contains(., 'A/B')]"
        wait_for(lambda: drv.find_elements(By.XPATH, label), "the page list", STARTUP)
        wait_for(lambda: idle(drv), "the first page to finish its run", STARTUP)
        drv.find_element(By.XPATH, label).click()
        for i, p in enumerate(study["pairs"]):
            wait_for(lambda: f"Pair {i + 1} of 3" in drv.page_source and idle(drv), f"pair {i + 1}", STARTUP)
            assert "win rate" not in drv.page_source.lower() and "Done." not in drv.page_source
            drv.find_element(By.CSS_SELECTOR, f".st-key-ab-{p['pair']}-{choices[i]} button").click()
        wait_for(lambda: "Done." in drv.page_source and idle(drv), "the result after the last answer", STARTUP)
        assert "win rate" in drv.page_source.lower()
    finally:
        drv.quit()
    with LabelStore(str(store)) as s:
        df = s.ab_answers(res["study"])
    assert dict(zip(df.pair, df.answer)) == {p["pair"]: c for p, c in zip(study["pairs"], choices)}
