"""Screenshots of each dashboard page for the README (docs/dashboard_*.png), taken in headless Chromium.

It works on a copy of an `artifix demo` folder (planted generator, the simulated reviewer's labels, approvals and
the repair report), so the pages show a real review:

    artifix demo --out /tmp/demo
    python scripts/dashboard_screenshots.py /tmp/demo docs/

Needs chromium + chromium-driver and selenium (requirements-dev.txt).
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--no-first-run", "--disable-sync", "--hide-scrollbars")


def wait_for(fn, what: str, timeout: float = 900.0):
    """Poll fn() until truthy."""
    end = time.monotonic() + timeout
    while True:
        try:
            v = fn()
        except Exception:  # noqa: BLE001
            v = None
        if v:
            return v
        if time.monotonic() > end:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.5)


def main() -> None:
    """Start the dashboard on a copy of the demo folder and save one PNG per page."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("demo", type=Path, help="an 'artifix demo --out' folder")
    ap.add_argument("out", type=Path, help="folder for dashboard_*.png")
    a = ap.parse_args()
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    work = Path(tempfile.mkdtemp(prefix="artifix-shots-"))
    demo = work / "demo"
    shutil.copytree(a.demo, demo)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "artifix", "dashboard", "--generator", "artifix.example:make_generator", "--checkpoint", str(demo / "planted.pt"), "--store", str(demo / "labels.sqlite"),
           "--out", str(demo / "cleaned"), "--reviewer", "demo-approver", "--approvers", "demo-approver", "--pool", "96",
           "--port", str(port), "--cache", str(ROOT / ".artifix-cache"), "--classifier", str(work / "clf.pt")]
    proc = subprocess.Popen(cmd, cwd=work, env={**os.environ, "PYTHONPATH": str(ROOT)})
    o = Options()
    o.binary_location = shutil.which("chromium") or "chromium"
    for f in FLAGS:
        o.add_argument(f)
    o.add_argument("--window-size=1600,1400")
    drv = webdriver.Chrome(service=Service(shutil.which("chromedriver") or "chromedriver"), options=o)
    a.out.mkdir(parents=True, exist_ok=True)
    try:
        url = f"http://127.0.0.1:{port}/"
        wait_for(lambda: drv.get(url) or True, "the server")
        wait_for(lambda: len(drv.find_elements(By.CSS_SELECTOR, "[class*='st-key-flag-'][class*='-clean']")) >= 12, "the review grid")
        ids = [int(next(c for c in e.get_attribute("class").split() if c.startswith("st-key-flag-")).split("-")[3])
               for e in drv.find_elements(By.CSS_SELECTOR, "[class*='st-key-flag-'][class*='-clean']")]
        # a few clicks so the grid shows labels, and one painted region
        for s, lab in zip(ids[1:4], ("clean", "unsure", "clean")):
            drv.find_element(By.CSS_SELECTOR, f".st-key-flag-{s}-{lab} button").click()
            time.sleep(2)
        host = wait_for(lambda: drv.execute_script(
            "return Array.from(document.querySelectorAll('*')).find(e => e.shadowRoot && e.shadowRoot.querySelector('canvas.upper-canvas'))"),
            "the canvas")
        up = host.shadow_root.find_element(By.CSS_SELECTOR, "canvas.upper-canvas")
        # paint over the sample's magenta blotch (the planted artifact) when there is one, else across the middle
        import io

        import numpy as np
        from PIL import Image

        shot = np.asarray(Image.open(io.BytesIO(up.screenshot_as_png)).convert("RGB")).astype(int)
        blotch = (shot[..., 0] > 170) & (shot[..., 1] < 110) & (shot[..., 2] > 170)
        ys, xs = np.nonzero(blotch)
        cx, cy = (int(xs.mean()), int(ys.mean())) if len(xs) else (shot.shape[1] // 2, shot.shape[0] // 2)
        w = max(int(xs.max() - xs.min()), 20) if len(xs) else 60
        x0 = cx - w // 2 - shot.shape[1] // 2
        ActionChains(drv).move_to_element_with_offset(up, x0, cy - shot.shape[0] // 2).click_and_hold() \
            .move_by_offset(w // 2, 0).move_by_offset(w - w // 2, 0).release().perform()
        wait_for(lambda: "saved region" in drv.page_source, "the saved region")
        time.sleep(2)
        drv.set_window_size(1600, 1500)
        drv.save_screenshot(str(a.out / "dashboard_review.png"))

        def page(name: str) -> None:
            drv.find_element(By.XPATH, f"//div[contains(@class,'st-key-page')]//label[contains(., '{name}')]").click()
            wait_for(lambda: any(h.text.startswith(name[:5]) for h in drv.find_elements(By.CSS_SELECTOR, "h1, h2")), f"the {name} page")
            time.sleep(2)

        page("Units")
        drv.find_element(By.CSS_SELECTOR, ".st-key-score button").click()
        wait_for(lambda: "Live ablation preview" in drv.page_source, "the scores", 1800)
        time.sleep(8)
        drv.set_window_size(1600, 1900)
        drv.save_screenshot(str(a.out / "dashboard_units.png"))
        page("Approvals")
        drv.set_window_size(1600, 1500)
        time.sleep(2)
        drv.save_screenshot(str(a.out / "dashboard_approvals.png"))
        page("Repair")
        drv.set_window_size(1600, 1900)
        time.sleep(4)
        drv.save_screenshot(str(a.out / "dashboard_repair.png"))
        print("wrote", *sorted(p.name for p in a.out.glob("dashboard_*.png")))
    finally:
        drv.quit()
        proc.terminate()
        proc.wait(30)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
