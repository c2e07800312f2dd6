"""Time the Review page's first load in headless Chromium: `artifix dashboard` started -> the grid's tiles drawn.

On the bundled example at its defaults: a cold start (an empty cache folder: unit statistics, reference features and the queue
order are all computed), then --warm warm starts (the caches the cold start wrote). The browser is started before the
clock, as a reviewer's is already running. Hold both CPU slots while it runs.
Usage: python scripts/dashboard_first_load.py [--pool 256] [--warm 3] [--cache DIR (its queue orders are deleted first)]
"""

from __future__ import annotations

import argparse
import json
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
         "--no-first-run", "--disable-sync", "--window-size=1600,1200")


def one_start(work: Path, pool: int, page: int, cache: str, root: Path = ROOT) -> dict:
    """Start `artifix dashboard`, open the page, return seconds to listen, to the first element, to the full grid."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "artifix", "dashboard", "--store", str(work / "labels.sqlite"), "--pool", str(pool),
           "--page-size", str(page), "--port", str(port), "--cache", cache, "--classifier", str(work / "clf.pt")]
    o = Options()
    o.binary_location = shutil.which("chromium") or "chromium"
    for f in FLAGS:
        o.add_argument(f)
    drv = webdriver.Chrome(service=Service(shutil.which("chromedriver") or "chromedriver"), options=o)
    drv.get("about:blank")  # the browser is up before the clock starts, as a reviewer's is (its launch is not timed)
    time.sleep(3)  # and settled: a fresh Chromium still used 0.8 CPU-seconds in the second after about:blank
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=work, env={**os.environ, "PYTHONPATH": str(root)}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.1)
        t_listen = time.monotonic() - t0
        t1 = time.monotonic()
        drv.get(f"http://127.0.0.1:{port}/")
        first = grid = None
        while grid is None:
            if first is None and drv.find_elements(By.CSS_SELECTOR, "[data-testid='stAlert'], [data-testid='stStatusWidget'], [data-testid='stExpander'], h2"):
                first = time.monotonic() - t1
            if len(drv.find_elements(By.CSS_SELECTOR, "[class*='st-key-flag-'][class*='-clean']")) >= page:
                grid = time.monotonic() - t1
            time.sleep(0.1)
        return {"listen_s": round(t_listen, 2), "first_content_s": round(first or grid, 2), "grid_s": round(grid, 2),
                "total_from_start_s": round(t_listen + grid, 2)}
    finally:
        drv.quit()
        proc.terminate()
        proc.wait(30)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pool", type=int, default=256)
    ap.add_argument("--page-size", type=int, default=12)
    ap.add_argument("--cache", default=None, help="cache folder (default: a new empty one, so the first start is cold)")
    ap.add_argument("--warm", type=int, default=3, help="warm starts after the first one (the noise between starts is ~1 s)")
    ap.add_argument("--root", type=Path, default=ROOT, help="the checkout to serve (e.g. an older one, for a before/after)")
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="artifix-load-"))
    cache = a.cache or str(work / "cache")
    for f in (Path(cache) / "dashboard").glob("queue-*.json"):
        f.unlink()  # the first start computes the order
    first = "cold start (empty cache folder)" if a.cache is None else "first start (queue order not cached)"
    runs = {first: one_start(work, a.pool, a.page_size, cache, a.root)}
    for i in range(1, a.warm + 1):
        runs[f"warm start {i} (caches on disk)"] = one_start(work, a.pool, a.page_size, cache, a.root)
    print(json.dumps(runs, indent=2))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
