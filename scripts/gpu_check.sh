#!/usr/bin/env bash
# One short GPU check (about 2-5 minutes on one CUDA GPU, at most 8): the `cuda`-marked tests, then timings of
# sampling, features and FD on the GPU beside the CPU, and a summary. Run from the repository root:
#   bash scripts/gpu_check.sh            (PY=/path/to/python to choose the interpreter)
set -uo pipefail
PY=${PY:-python}
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" ARTIFIX_CACHE="${ARTIFIX_CACHE:-$PWD/.artifix-cache-gpu}"
"$PY" -c "import torch, sys; ok = torch.cuda.is_available(); print('torch', torch.__version__, 'cuda', torch.version.cuda, 'gpu', torch.cuda.get_device_name(0) if ok else None); sys.exit(0 if ok else 1)" \
  || { echo "gpu_check: no CUDA GPU visible to PyTorch; nothing to check."; exit 1; }

echo "== cuda-marked tests"
timeout 300 "$PY" -m pytest -q -m cuda tests/test_cuda.py -p no:cacheprovider 2>&1 | tail -n 15
TESTS=${PIPESTATUS[0]}

echo "== timings (GPU vs CPU)"
timeout 180 "$PY" - <<'PYEOF'
import time
import numpy as np
import torch
from artifix import devices
from artifix.model.generator import example_spec, load_generator, sample
from artifix.metrics.features import get_extractor
from artifix.metrics.fd import FDReference, Moments

def timed(fn, sync=True):
    fn()  # warm-up (kernels, caches)
    if sync: torch.cuda.synchronize()
    t = time.perf_counter(); out = fn()
    if sync: torch.cuda.synchronize()
    return time.perf_counter() - t, out

rows = []
for dev, n in (("cuda", 4096), ("cpu", 512)):
    g = load_generator(example_spec(), device=dev)
    t, imgs = timed(lambda: sample(g, seed=0, n=n, batch=256))
    rows.append((f"sampling example G ({dev})", n, t))
    devices.use(dev)
    ext = get_extractor("effnet-lite0", batch=128 if dev == "cuda" else 16, device=dev)
    m = min(n, 2048 if dev == "cuda" else 128)
    t, feats = timed(lambda: ext(imgs[:m]))
    rows.append((f"effnet-lite0 features ({dev}, PIL resize on CPU included)", m, t))
devices.use("cpu")
rng = np.random.default_rng(0)
real, fake = rng.normal(size=(10000, 1280)), rng.normal(size=(2000, 1280))
mr, mf = Moments.of(real), Moments.of(fake)
counts = [np.bincount(rng.integers(0, 2000, 2000), minlength=2000) for _ in range(50)]
for dev in ("cuda", None):
    ref = FDReference.of(mr, dev)
    def fd_boot():
        p = ref.prepare(fake)
        return ref.distance(mf.mean, mf.cov), [ref.weighted_distance(p, c) for c in counts]
    t, (v, reps) = timed(fd_boot)
    rows.append((f"FD 1280-d + 50 bootstrap replicates ({dev or 'cpu'})", 2000, t))
print(f"{'what':<62} {'n':>6} {'s':>8} {'per item ms':>12}")
for what, n, t in rows:
    print(f"{what:<62} {n:>6} {t:>8.3f} {1000 * t / n:>12.3f}")
print("peak GPU memory GiB", round(torch.cuda.max_memory_allocated() / 2**30, 2))
PYEOF
TIMES=$?
echo "== summary: cuda tests exit $TESTS, timings exit $TIMES"
exit $(( TESTS != 0 || TIMES != 0 ))
