"""Soak: 8 reviewer sessions label at once in real headless Chromium against `artifix dashboard`, on SQLite and on
PostgreSQL (ARTIFIX_TEST_PG_URL; .ci/run provides it): no click is lost or stored twice, and the p95
click-to-stored latency is printed and written to soak_<backend>.json in the test's temporary folder.

The eight browsers are started once and serve both backends in turn. Both servers run the same seed, so the second
finds the first one's statistics and queue order in the shared cache, as a restarted dashboard does; each backend
gets a fresh store (a temporary SQLite file; a PostgreSQL schema of its own, dropped afterwards).

Each session sets its own reviewer name, then loops for LABEL_SECONDS: wait until its page is idle, click a
flag button of a sample in its review grid, and poll the store until that click's row is there (the latency).
At the end every session's clicks, in order, must equal the store's flag history for its reviewer, the current
labels must hold each session's last click per sample, and the audit log must hold one 'flag' entry per click.
"""

from __future__ import annotations

import json
import os
import random
import statistics
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from artifix.labels import LabelStore

from tests.test_dashboard_e2e import (CHROMIUM, DRIVER, STARTUP, _free_port, browser, click_flag, idle,  # noqa: F401
                                      wait_for)

from selenium.webdriver.common.by import By  # noqa: E402  (the e2e module skips when selenium/chromium are missing)
from selenium.webdriver.common.keys import Keys  # noqa: E402

SESSIONS = 8
LABEL_SECONDS = float(os.environ.get("ARTIFIX_SOAK_SECONDS", "20"))  # per backend in CI; ARTIFIX_SOAK_SECONDS=120 for a long soak
POLL = 0.05
SEED = 4242
# Each of the eight tabs spent about 12 s of CPU loading the page (animations, raster at 1600x1200): with these the seven
# concurrent page loads took 54 s instead of 78 s on 2 cores; the soak is about lost clicks and latency, not layout
SOAK_FLAGS = ("--force-prefers-reduced-motion", "--window-size=1000,800")  # one run for both backends: the second server reads the first one's statistics and queue from the cache


def _serve(tmp, store: str, seed: int):
    """Start `artifix dashboard` on a free port (a fresh run: its own seed); returns (url, process, log)."""
    import subprocess
    import sys

    from tests.test_dashboard_e2e import CACHE, ROOT

    port = _free_port()
    cmd = [sys.executable, "-m", "artifix", "dashboard", "--store", store, "--seed", str(seed), "--stats-n", "200",
           "--pool", "200", "--page-size", "6", "--port", str(port), "--cache", CACHE, "--classifier", str(tmp / "none.pt"),
           "--out", str(tmp / "repair")]
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    log = open(tmp / "server.log", "w")
    proc = subprocess.Popen(cmd, cwd=tmp, env=env, stdout=log, stderr=subprocess.STDOUT)
    import socket

    def up():
        assert proc.poll() is None, (tmp / "server.log").read_text()
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    wait_for(up, "the dashboard server to listen", STARTUP)
    return f"http://127.0.0.1:{port}/", proc, log


def grid_samples(drv) -> list[int]:
    """The sample ids whose flag buttons the idle page shows."""
    ids = []
    for e in drv.find_elements(By.CSS_SELECTOR, "[class*='st-key-flag-'][class*='-clean']"):
        cls = next(c for c in e.get_attribute("class").split() if c.startswith("st-key-flag-"))
        ids.append(int(cls.split("-")[3]))
    return ids


class Reviewer:
    """One browser session: its clicks [(sample, label)] and each click's seconds until it was in the store."""

    def __init__(self, drv, url: str, name: str, store_url: str, seed: int) -> None:
        self.url, self.name, self.rng = url, name, random.Random(seed)
        self.store = LabelStore(store_url)
        self.clicks: list[tuple[int, str]] = []
        self.latency: list[float] = []
        self.drv = drv

    def open(self) -> None:
        self.drv.get(self.url)
        wait_for(lambda: len(grid_samples(self.drv)) == 6 and idle(self.drv)
                 and self.drv.find_elements(By.CSS_SELECTOR, ".st-key-reviewer input"), "the review grid and the name box", STARTUP)
        box = self.drv.find_element(By.CSS_SELECTOR, ".st-key-reviewer input")
        box.send_keys(Keys.CONTROL, "a")
        box.send_keys(self.name, Keys.ENTER)
        wait_for(lambda: f"by {self.name}" in self.drv.page_source and idle(self.drv), f"{self.name} applied", STARTUP)

    def stored(self, run_id: int) -> int:
        return int((self.store.flag_history(run_id).reviewer == self.name).sum())

    def label_until(self, run_id: int, deadline: float) -> None:
        while time.monotonic() < deadline:
            wait_for(lambda: idle(self.drv), "the page to finish its run", STARTUP)
            ids = grid_samples(self.drv)
            if not ids:  # the whole pool is labelled: nothing left to click
                break
            sample, label = self.rng.choice(ids), self.rng.choice(["artifact", "clean", "unsure"])
            want = len(self.clicks) + 1
            click_flag(self.drv, sample, label)
            t0 = time.monotonic()
            self.clicks.append((sample, label))
            wait_for(lambda: self.stored(run_id) >= want, f"{self.name}'s click {want} in the store", STARTUP, every=POLL)
            self.latency.append(time.monotonic() - t0)

    def close(self) -> None:
        self.store.close()  # the browser stays open for the next backend


def backends():
    pg = os.environ.get("ARTIFIX_TEST_PG_URL")
    return ["sqlite", pytest.param("postgresql", marks=pytest.mark.skipif(not pg, reason="ARTIFIX_TEST_PG_URL is not set"))]


@pytest.fixture(scope="module")
def browsers():
    """Eight headless Chromium sessions, started at once and shared by both backends."""
    out: list = [None] * SESSIONS

    def start(i: int) -> None:  # reduced motion and a smaller window: the eight renderers' CPU was most of the soak
        out[i] = browser(extra=SOAK_FLAGS)

    threads = [threading.Thread(target=start, args=(i,)) for i in range(SESSIONS)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    try:
        assert all(d is not None for d in out), "a browser did not start"
        yield out
    finally:
        for d in out:
            if d is not None:
                d.quit()


@pytest.fixture
def store_url(backend, tmp_path):
    """A fresh store: a SQLite file, or a PostgreSQL schema of its own (dropped afterwards) in the scratch database."""
    if backend == "sqlite":
        yield str(tmp_path / "labels.sqlite")
        return
    import sqlalchemy as sa

    base = sa.engine.make_url(os.environ["ARTIFIX_TEST_PG_URL"])
    schema = f"soak_{os.urandom(4).hex()}"
    admin = sa.create_engine(base)
    with admin.begin() as c:
        c.execute(sa.text(f"CREATE SCHEMA {schema}"))
    try:
        yield base.update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(hide_password=False)
    finally:
        with admin.begin() as c:
            c.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


@pytest.mark.parametrize("backend", backends())
def test_eight_sessions_label_at_once_and_lose_nothing(backend, store_url, browsers, tmp_path):
    token = os.urandom(3).hex()
    seed = SEED
    phases = {"start": time.monotonic()}
    url, proc, log = _serve(tmp_path, store_url, seed)
    phases["server listening"] = time.monotonic()
    reviewers: list[Reviewer] = []
    try:
        reviewers = [Reviewer(d, url, f"soak{i}-{token}", store_url, i) for i, d in enumerate(browsers)]
        errors: list[BaseException] = []

        def guarded(fn, *args):
            try:
                fn(*args)
            except BaseException as e:  # noqa: BLE001
                errors.append(e)

        reviewers[0].open()  # the first page fills the server's shared caches (statistics, queue); the others then load at once
        phases["first page"] = time.monotonic()
        threads = [threading.Thread(target=guarded, args=(r.open,)) for r in reviewers[1:]]
        [t.start() for t in threads]
        [t.join() for t in threads]
        phases[f"{SESSIONS - 1} more pages"] = time.monotonic()
        assert not errors, errors
        with LabelStore(store_url) as s:
            (run,) = [r for r in s.runs() if r.seed == seed]
        t_start = time.monotonic()
        deadline = t_start + LABEL_SECONDS
        threads = [threading.Thread(target=guarded, args=(r.label_until, run.id, deadline)) for r in reviewers]
        [t.start() for t in threads]
        [t.join() for t in threads]
        wall = time.monotonic() - t_start
        assert not errors, errors
        with LabelStore(store_url) as s:
            hist, current, audit = s.flag_history(run.id), s.reviewer_flags(run.id), s.audit(run.id)
        lat = np.concatenate([r.latency for r in reviewers])
        for r in reviewers:
            mine = hist[hist.reviewer == r.name]
            assert list(zip(mine["sample"].astype(int), mine["label"])) == r.clicks, r.name  # none lost, none twice, in order
            last = dict(r.clicks)
            cur = current[current.reviewer == r.name]
            assert dict(zip(cur["sample"].astype(int), cur["label"])) == last, r.name
            logged = audit[(audit.actor == r.name) & (audit.action == "set_flag")]
            assert [(int(d["sample"]), d["label"]) for d in logged.detail] == r.clicks, r.name  # the audit log agrees
        clicks = sum(len(r.clicks) for r in reviewers)
        result = {"backend": backend, "sessions": SESSIONS, "clients": "headless Chromium (selenium), one per session",
                  "label_seconds": LABEL_SECONDS, "wall_seconds": round(wall, 1), "clicks": clicks,
                  "clicks_per_second": round(clicks / wall, 2), "lost": 0, "duplicated": 0,
                  "latency_s": {"p50": round(float(np.percentile(lat, 50)), 3), "p95": round(float(np.percentile(lat, 95)), 3),
                                "max": round(float(lat.max()), 3), "mean": round(statistics.fmean(lat), 3)},
                  "cpus": os.cpu_count(),
                  "phase_seconds": {k: round(t - prev, 1) for (k, t), prev in zip(list(phases.items())[1:], phases.values())}}
        (tmp_path / f"soak_{backend}.json").write_text(json.dumps(result, indent=2) + "\n")
        out_dir = os.environ.get("ARTIFIX_SOAK_DIR")
        if out_dir:
            Path(out_dir).mkdir(parents=True, exist_ok=True)
            (Path(out_dir) / f"soak_{backend}.json").write_text(json.dumps(result, indent=2) + "\n")
        print(f"\nsoak {backend}: {json.dumps(result)}")
        assert clicks >= SESSIONS  # every session got to label
    finally:
        for r in reviewers:
            try:
                r.close()
            except Exception:  # noqa: BLE001
                pass
        proc.terminate()
        try:
            proc.wait(30)
        except Exception:  # noqa: BLE001
            proc.kill()
        log.close()
