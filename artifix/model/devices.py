"""Where tensors are computed: `--device auto|cpu|cuda|cuda:N|mps`, CUDA out-of-memory back-off, NaN checks.

One process-wide current device (`use(...)`, `current()`), set by the CLI from the `device` option (and by
API callers who want one), read wherever a tensor is made: the generator and its hooks, unit statistics,
feature extractors, the classifier and segmenter. Images leave the device only as uint8 (`to_cpu_uint8`).

- `auto` is CUDA when available (under torchrun: the rank's LOCAL_RANK GPU), else the CPU;
- `cuda` / `cuda:N` / `mps` that this machine does not have is one sentence and exit 2;
- latents are drawn on the CPU (numpy PCG64 streams) and then moved, so the same seeds give the same
  latents everywhere and the same images on the same device (GPU kernels may differ from CPU ones in
  the last float bits; compare runs on one device);
- no mixed precision: everything runs in the dtype the model and the metrics use now (float32, float64).

`backoff(fn, n, batch, what)` runs work in batches and, on CUDA out-of-memory, halves the batch and
retries (saying so once); `check_finite(out, indices)` names the sample indices of NaN/Inf images.

`tune_allocator()` (called by `use` and by every feature extractor) keeps the CPU's freed buffers for reuse: glibc
starts by giving blocks over 128 KB their own mapping and handing them back on free, so each batch of a network's
activations (megabytes per tensor) was mapped, zero-filled page by page and unmapped again: 2,000-3,000 page faults
per image for EfficientNet-Lite0 at batch 8 on 2 cores, 92-103 images/s. With blocks up to 32 MB taken from the heap
and up to 256 MB of freed heap kept (what glibc's own adaptive limits reach later in a long process, set at the
start), the same extractor runs at 107-115 images/s; the 1,176 faults per image left are its one activation over
32 MB (docs/speed.md). `ARTIFIX_MALLOPT=0` (`MALLOPT_ENV`), or the user's own MALLOC_MMAP_THRESHOLD_ /
MALLOC_TRIM_THRESHOLD_, leaves glibc's settings alone.
"""

from __future__ import annotations

import ctypes
import os
import sys
from typing import Callable, Iterator, Sequence, TypeVar

import torch

from .. import progress
from ..errors import UserError

T = TypeVar("T")
CHOICES = "auto, cpu, cuda, cuda:N or mps"
DEVICE_ENV = "ARTIFIX_DEVICE"  # the device when no --device is given (else auto); the test suite sets cpu
MALLOPT_ENV = "ARTIFIX_MALLOPT"  # 0: leave glibc's allocator settings as they are
_CURRENT: torch.device | None = None
_WARNED: set[str] = set()


MMAP_THRESHOLD = 32 << 20  # glibc's largest (DEFAULT_MMAP_THRESHOLD_MAX on 64-bit)
TRIM_THRESHOLD = 256 << 20
_TUNED: bool | None = None


def tune_allocator() -> bool:
    """Have glibc keep freed CPU buffers for reuse instead of unmapping them (once per process); False where it did not."""
    global _TUNED
    if _TUNED is not None:
        return _TUNED
    _TUNED = False
    if (os.environ.get(MALLOPT_ENV, "1") == "0" or not sys.platform.startswith("linux")
            or "MALLOC_MMAP_THRESHOLD_" in os.environ or "MALLOC_TRIM_THRESHOLD_" in os.environ):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # glibc only; musl and others have no mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    _TUNED = bool(mallopt(m_mmap_threshold, MMAP_THRESHOLD)) and bool(mallopt(m_trim_threshold, TRIM_THRESHOLD))
    return _TUNED


def _local_rank() -> int:
    try:
        return int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError:
        raise UserError(f"LOCAL_RANK must be an integer, got {os.environ.get('LOCAL_RANK')!r}.") from None


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def resolve(name: str | torch.device | None = None) -> torch.device:
    """The torch.device for `name` ('auto' when None); UserError in one sentence when this machine lacks it."""
    if isinstance(name, torch.device):
        name = str(name)
    text = str(name or os.environ.get(DEVICE_ENV) or "auto").strip().lower()
    if text == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", _local_rank() % max(1, torch.cuda.device_count()))
        return torch.device("cpu")
    if text == "cpu":
        return torch.device("cpu")
    if text == "mps":
        if not _mps_available():
            raise UserError("--device mps was asked for but this PyTorch has no usable Apple MPS device; use --device cpu.")
        return torch.device("mps")
    if text == "cuda" or text.startswith("cuda:"):
        idx_text = text[5:] if text.startswith("cuda:") else None
        if idx_text is not None and not idx_text.isdigit():
            raise UserError(f"--device {name!r} is not a device; use {CHOICES}.")
        if not torch.cuda.is_available():
            raise UserError(f"--device {text} was asked for but this machine has no CUDA GPU visible to PyTorch "
                            f"(torch {torch.__version__}); use --device cpu or install a CUDA build of PyTorch.")
        count = torch.cuda.device_count()
        idx = int(idx_text) if idx_text is not None else _local_rank() % count
        if idx >= count:
            raise UserError(f"--device {text} was asked for but this machine has {count} CUDA GPU(s) (cuda:0..cuda:{count - 1}).")
        return torch.device("cuda", idx)
    raise UserError(f"--device {name!r} is not a device; use {CHOICES}.")


def use(name: str | torch.device | None) -> torch.device:
    """Make `name` (resolved) the current device for everything that follows; returns it."""
    global _CURRENT
    _CURRENT = resolve(name)
    tune_allocator()
    if _CURRENT.type == "cuda":
        torch.cuda.set_device(_CURRENT)
    return _CURRENT


def current() -> torch.device:
    """The current device: the last `use(...)`, else $ARTIFIX_DEVICE, else auto (CUDA when available)."""
    global _CURRENT
    if _CURRENT is None:
        _CURRENT = resolve(None)
    return _CURRENT


def of(module: torch.nn.Module) -> torch.device:
    """The device of a module's first parameter or buffer (the CPU for a module without tensors)."""
    for t in module.parameters():
        return t.device
    for t in module.buffers():
        return t.device
    return torch.device("cpu")


def to_cpu_uint8(x: torch.Tensor) -> torch.Tensor:
    """A uint8 tensor moved to the CPU (the only form in which images leave the device)."""
    if x.dtype != torch.uint8:
        raise TypeError(f"only uint8 images leave the device, got {x.dtype}")
    return x.cpu()


# ------------------------------------------------------------------------------------------ OOM back-off


def is_oom(e: BaseException) -> bool:
    """True for a CUDA (or MPS) out-of-memory error."""
    if isinstance(e, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(e, RuntimeError) and "out of memory" in str(e).lower() and ("cuda" in str(e).lower() or "mps" in str(e).lower())


def say_once(key: str, text: str) -> None:
    """Print `text` on stderr the first time `key` is seen in this process."""
    if key in _WARNED:
        return
    _WARNED.add(key)
    if not progress.QUIET:
        print(text, file=sys.stderr, flush=True)


def _free_cache() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def backoff(fn: Callable[[int, int], T], n: int, batch: int, what: str = "work") -> Iterator[T]:
    """Yield fn(start, count) for consecutive chunks covering 0..n-1, `batch` at a time.

    On out-of-memory the failing chunk is retried with half the batch (down to 1), and every later chunk
    uses the smaller batch; the first halving for `what` is reported once on stderr. A chunk that fails
    at batch 1 re-raises. Results do not depend on the batch where fn's outputs do not.
    """
    start, size = 0, max(1, int(batch))
    while start < n:
        count = min(size, n - start)
        try:
            out = fn(start, count)
        except (torch.cuda.OutOfMemoryError, RuntimeError) as e:
            if not is_oom(e) or count <= 1:
                raise
            del e
            _free_cache()
            size = max(1, count // 2)
            say_once("oom:" + what, f"artifix: out of GPU memory in {what}; retrying with batch {size} "
                                    "(pass a smaller --batch / --feature-batch to skip this).")
            continue
        yield out
        start += count


# ------------------------------------------------------------------------------------------ NaN / Inf


def nonfinite_rows(x: torch.Tensor) -> list[int]:
    """Row positions of a batch tensor holding any NaN or Inf."""
    bad = ~torch.isfinite(x.reshape(x.shape[0], -1)).all(1)
    return torch.nonzero(bad).view(-1).cpu().tolist()


def check_finite(x: torch.Tensor, indices: Sequence[int], what: str = "the generator") -> None:
    """UserError naming the sample indices (up to 10) whose rows of x hold NaN or Inf."""
    rows = nonfinite_rows(x)
    if not rows:
        return
    idx = [int(indices[r]) for r in rows]
    shown = ", ".join(map(str, idx[:10])) + (f" and {len(idx) - 10} more" if len(idx) > 10 else "")
    raise UserError(f"{what} produced NaN or Inf values for sample(s) {shown} (of {len(indices)} in this batch); "
                    "the run stopped there: check the checkpoint, --truncation and --range.")
