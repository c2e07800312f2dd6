"""Screenshots of each dashboard page for the README (docs/dashboard_*.png), taken in headless Chromium.

It works on a copy of an `artifix demo` folder (planted generator, the simulated reviewer's labels, approvals and
the repair report), so the pages show a real review. The demo makes no A/B study, so this script exports one from
the demo's repair (`artifix ab export`) for the A/B page:

    artifix demo --out /tmp/demo
    python scripts/dashboard_screenshots.py /tmp/demo docs/

Writes dashboard_review.png, dashboard_units.png, dashboard_approvals.png, dashboard_repair.png and dashboard_ab.png
(dashboard_paint.png comes from `ARTIFIX_SCREENSHOT_DIR=docs pytest tests/test_dashboard_e2e.py -k concept`).
Needs chromium + chromium-driver and selenium (requirements-dev.txt).

Every action waits until the page is idle (Streamlit's script has finished its run), as a person waits by eye: an
element found mid-rerun may be a copy about to be replaced, and a stroke painted on such a canvas is lost with it.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--no-first-run", "--disable-sync", "--hide-scrollbars")
GRID = "[class*='st-key-flag-'][class*='-clean']"
CANVAS_HOST = ("return Array.from(document.querySelectorAll('*'))"
               ".find(e => e.shadowRoot && e.shadowRoot.querySelector('canvas.upper-canvas'))")


class Page:
    """The browser on the dashboard, with waits that leave a screenshot and the page text behind when they time out."""

    def __init__(self, drv: Any, debug: Path) -> None:
        self.drv, self.debug = drv, debug

    def wait_for(self, fn: Callable[[], Any], what: str, timeout: float = 900.0) -> Any:
        """Poll fn() until truthy; on timeout save what the browser shows and stop."""
        end = time.monotonic() + timeout
        while True:
            try:
                v = fn()
            except Exception:  # noqa: BLE001  (a page mid-rerun detaches elements)
                v = None
            if v:
                return v
            if time.monotonic() > end:
                self.drv.save_screenshot(str(self.debug / "timeout.png"))
                (self.debug / "timeout.txt").write_text(self.drv.find_element("css selector", "body").text)
                raise SystemExit(f"timed out waiting for {what}; the page as it was: {self.debug}/timeout.png, timeout.txt")
            time.sleep(0.25)

    def idle(self) -> bool:
        """Whether the app's script has finished its run in this browser session."""
        app = self.drv.find_element("css selector", "[data-testid='stApp']")
        return app.get_attribute("data-test-script-state") == "notRunning"

    def settle(self, what: str, timeout: float = 900.0) -> None:
        """Wait until the page is idle, and still idle a second later (a click's rerun may not have started yet)."""
        self.wait_for(lambda: self.idle() and (time.sleep(1.0) or self.idle()), what, timeout)

    def click(self, css: str, what: str) -> None:
        """Click the element at `css` once the page is idle (re-found each try: a rerun replaces elements)."""
        self.wait_for(lambda: self.idle() and (self.drv.find_element("css selector", css).click() or True), what)

    def page(self, name: str, header: str | None = None) -> None:
        """Switch to the sidebar page `name` and wait until it has drawn (its header starts with `header`)."""
        label = f"//div[contains(@class,'st-key-page')]//label[contains(., '{name}')]"
        self.wait_for(lambda: self.idle() and (self.drv.find_element("xpath", label).click() or True), f"a click on {name}")
        self.wait_for(lambda: any(h.text.startswith(header or name[:5]) for h in self.drv.find_elements("css selector", "h1, h2")),
                      f"the {name} page")
        self.settle(f"the {name} page to finish its run")

    def shot(self, path: Path, height: int) -> None:
        """A screenshot of the top of the page at window height `height`."""
        self.drv.set_window_size(1600, height)
        self.drv.execute_script("window.scrollTo(0, 0)")
        self.settle("the page after resizing")
        time.sleep(1.0)  # images decoded, layout done
        png = Image.open(io.BytesIO(self.drv.get_screenshot_as_png())).convert("RGB")
        # 256 colours: the page is flat UI plus small samples; keeps each file a few hundred KB
        png.quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(path, optimize=True)
        print("wrote", path, f"{path.stat().st_size // 1024} KB", flush=True)


def stroke_across_blotch(rgb: "np.ndarray", margin: int = 6) -> tuple[int, int, int]:
    """(x0, x1, y) in canvas pixels of a horizontal stroke across the largest magenta blotch (the planted artifact),
    else across the middle; kept `margin` pixels inside the canvas (a stroke that starts outside it draws nothing)."""
    import numpy as np
    from scipy import ndimage

    h, w = rgb.shape[:2]
    blotch = (rgb[..., 0] > 170) & (rgb[..., 1] < 110) & (rgb[..., 2] > 170)
    parts, n = ndimage.label(blotch)
    if n:
        biggest = 1 + int(np.argmax(ndimage.sum(blotch, parts, range(1, n + 1))))
        ys, xs = np.nonzero(parts == biggest)
        x0, x1, y = int(xs.min()), int(xs.max()), int(np.median(ys))
        if x1 - x0 < 20:
            x0, x1 = (x0 + x1) // 2 - 10, (x0 + x1) // 2 + 10
    else:
        x0, x1, y = w // 2 - 30, w // 2 + 30, h // 2
    clamp = lambda v, hi: min(max(v, margin), hi - 1 - margin)  # noqa: E731
    return clamp(x0, w), clamp(x1, w), clamp(y, h)


def paint_blotch(p: Page) -> None:
    """Paint one stroke on the paint panel's canvas, across its sample's largest magenta blotch if it has one."""
    import numpy as np
    from selenium.webdriver.common.action_chains import ActionChains

    p.settle("the page to finish its run before painting")
    host = p.wait_for(lambda: p.drv.execute_script(CANVAS_HOST), "the canvas")
    up = host.shadow_root.find_element("css selector", "canvas.upper-canvas")
    rgb = np.asarray(Image.open(io.BytesIO(up.screenshot_as_png)).convert("RGB")).astype(int)
    h, w = rgb.shape[:2]
    x0, x1, y = stroke_across_blotch(rgb)
    print(f"painting canvas x {x0}..{x1} at y {y} (canvas {w}x{h})", flush=True)
    # selenium's offsets are from the element's centre
    ActionChains(p.drv).move_to_element_with_offset(up, x0 - w // 2, y - h // 2).click_and_hold() \
        .move_by_offset((x1 - x0) // 2, 0).move_by_offset(x1 - x0 - (x1 - x0) // 2, 0).release().perform()


def start_dashboard(demo: Path, work: Path, port: int) -> subprocess.Popen:
    """`artifix dashboard` on the demo's planted generator, store and repair, as the demo's approver."""
    cmd = [sys.executable, "-m", "artifix", "dashboard", "--generator", "artifix.example:make_generator",
           "--checkpoint", str(demo / "planted.pt"), "--store", str(demo / "labels.sqlite"), "--out", str(demo / "cleaned"),
           "--reviewer", "demo-approver", "--approvers", "demo-approver", "--pool", "96", "--port", str(port),
           "--cache", str(ROOT / ".artifix-cache"), "--classifier", str(work / "clf.pt"), "--study", str(work / "artifix-ab")]
    return subprocess.Popen(cmd, cwd=work, env={**os.environ, "PYTHONPATH": str(ROOT)})


def export_ab(demo: Path, work: Path) -> None:
    """A blind A/B study of the demo's repair (12 repair pairs, 6 control pairs), for the A/B page."""
    subprocess.run([sys.executable, "-m", "artifix", "ab", "export", "--generator", "artifix.example:make_generator",
                    "--checkpoint", str(demo / "planted.pt"), "--manifest", str(demo / "cleaned" / "manifest.json"),
                    "--study", str(work / "artifix-ab"), "--ab-n", "12", "--ab-control-n", "6", "--ab-pool", "400"],
                   cwd=work, env={**os.environ, "PYTHONPATH": str(ROOT)}, check=True)


def review(p: Page, store: Any, out: Path) -> None:
    """The Review page with a few labels given in the browser and one painted region."""
    run_id = store.runs()[0].id
    ids = p.wait_for(lambda: [int(next(c for c in e.get_attribute("class").split() if c.startswith("st-key-flag-")).split("-")[3])
                              for e in p.drv.find_elements("css selector", GRID)] or None, "the review grid")
    p.settle("the first page to finish its run")
    for s, lab in zip(ids[1:4], ("clean", "unsure", "clean")):
        p.click(f".st-key-flag-{s}-{lab} button", f"a click on {lab} of sample {s}")
        p.wait_for(lambda: store.label(run_id, s) == lab, f"'{lab}' of sample {s} in the label store", 120)
    before = len(store.mask_records(run_id))
    paint_blotch(p)
    p.wait_for(lambda: len(store.mask_records(run_id)) > before, "the painted region in the label store", 120)
    p.wait_for(lambda: "saved region" in p.drv.page_source, "the saved-region caption", 120)
    p.shot(out / "dashboard_review.png", 1500)


def main() -> None:
    """Start the dashboard on a copy of the demo folder and save one PNG per page."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("demo", type=Path, help="an 'artifix demo --out' folder")
    ap.add_argument("out", type=Path, help="folder for dashboard_*.png")
    a = ap.parse_args()
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    sys.path.insert(0, str(ROOT))
    from artifix.labels import LabelStore

    work = Path(tempfile.mkdtemp(prefix="artifix-shots-"))
    demo = work / "demo"
    shutil.copytree(a.demo, demo)
    export_ab(demo, work)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = start_dashboard(demo, work, port)
    o = Options()
    o.binary_location = shutil.which("chromium") or "chromium"
    for f in FLAGS:
        o.add_argument(f)
    o.add_argument("--window-size=1600,1400")
    drv = webdriver.Chrome(service=Service(shutil.which("chromedriver") or "chromedriver"), options=o)
    a.out.mkdir(parents=True, exist_ok=True)
    p = Page(drv, Path(tempfile.gettempdir()))
    store = LabelStore(str(demo / "labels.sqlite"))
    try:
        p.wait_for(lambda: drv.get(f"http://127.0.0.1:{port}/") or True, "the server")
        review(p, store, a.out)
        p.page("Units")
        p.click(".st-key-score button", "a click on Score units")
        p.wait_for(lambda: "Live ablation preview" in drv.page_source, "the scores", 1800)
        p.settle("the unit card and the preview", 1800)
        p.shot(a.out / "dashboard_units.png", 1900)
        p.page("Approvals")
        p.shot(a.out / "dashboard_approvals.png", 1500)
        p.page("Repair")
        p.shot(a.out / "dashboard_repair.png", 1900)
        p.page("A/B", "Blind A/B")
        p.wait_for(lambda: "Pair 1 of" in drv.page_source, "the first blind pair")
        p.shot(a.out / "dashboard_ab.png", 1100)
    finally:
        store.close()
        drv.quit()
        proc.terminate()
        proc.wait(30)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
