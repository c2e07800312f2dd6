"""Kernel Inception Distance: unbiased MMD^2 with the cubic polynomial kernel k(x, y) = (x.y / d + 1)^3.

Protocol: `subsets` seeded random subsets of `subset_size` samples (without replacement) from each set;
KID = mean of the subsets' unbiased MMD^2, reported with their standard deviation.

All subset sums are quadratic forms a^T K b of indicator vectors, so they are computed in one pass
over row blocks of the kernel matrix without storing it (memory: `chunk` x N float64) and without
recomputing kernel values for each subset; bootstrap replicates of the full-sample estimate (count
vectors c: c^T K c) ride along in the same pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import UserError

CHUNK = 1024


def polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """k(x, y) = (x.y / d + 1)^3 for all pairs of rows, float64."""
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 between two small sample sets (reference implementation: full kernel matrices)."""
    kxx, kyy, kxy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
    m, n = len(x), len(y)
    return float((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
                 - 2.0 * kxy.mean())


def quadratic_forms(x: np.ndarray, y: np.ndarray, a: np.ndarray, b: np.ndarray,
                    chunk: int = CHUNK) -> np.ndarray:
    """diag(A^T K(x, y) B) for weight matrices A (N, S) and B (M, S), streaming over row blocks of K."""
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    out = np.zeros(a.shape[1], np.float64)
    for s in range(0, x.shape[0], chunk):
        rows = slice(s, s + chunk)
        if not a[rows].any():
            continue
        out += np.einsum("ij,ij->j", a[rows], polynomial_kernel(x[rows], y) @ b)
    return out


def self_kernel_diag(x: np.ndarray) -> np.ndarray:
    """k(x_i, x_i) for every row."""
    x = np.asarray(x, np.float64)
    return (np.einsum("ij,ij->i", x, x) / x.shape[1] + 1.0) ** 3


@dataclass
class KIDPlan:
    """Seeded subsets for one KID protocol: fake indicators (N, S), real indicators (M, S), size m."""

    fake: np.ndarray
    real: np.ndarray
    size: int

    @classmethod
    def make(cls, n_fake: int, n_real: int, subsets: int, subset_size: int, seed: int) -> "KIDPlan":
        m = int(min(subset_size, n_fake, n_real))
        if m < 2:
            raise UserError(f"KID needs at least 2 samples in each set, got {n_fake} generated and {n_real} reference.")
        rng = np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, 0x41D]))
        fake = np.zeros((n_fake, subsets))
        real = np.zeros((n_real, subsets))
        for s in range(subsets):  # one draw of fake then real per subset, as the classic loop does
            fake[rng.choice(n_fake, size=m, replace=False), s] = 1.0
            real[rng.choice(n_real, size=m, replace=False), s] = 1.0
        return cls(fake, real, m)


@dataclass
class RealKernelTerms:
    """Real-only parts of MMD^2: per-subset mean off-diagonal k(r, r') and the full-sample one."""

    subsets: np.ndarray
    full: float

    @classmethod
    def compute(cls, real: np.ndarray, plan: KIDPlan, chunk: int = CHUNK) -> "RealKernelTerms":
        n = real.shape[0]
        w = np.concatenate([plan.real, np.ones((n, 1))], axis=1)
        q = quadratic_forms(real, real, w, w, chunk) - self_kernel_diag(real) @ w
        m = plan.size
        return cls(q[:-1] / (m * (m - 1)), float(q[-1] / (n * (n - 1))))


def kid_terms(fake: np.ndarray, real: np.ndarray, plan: KIDPlan, real_terms: RealKernelTerms,
              counts: np.ndarray | None = None, chunk: int = CHUNK) -> tuple[np.ndarray, np.ndarray]:
    """Per-subset unbiased MMD^2 (S,) and, for each column of `counts` (N, B), the full-sample unbiased
    MMD^2 of the resample that takes fake row i counts[i, b] times (B,), in one streaming pass."""
    n, n_real = fake.shape[0], real.shape[0]
    counts = np.zeros((n, 0)) if counts is None else np.asarray(counts, np.float64)
    s = plan.fake.shape[1]
    wf = np.concatenate([plan.fake, counts], axis=1)
    ff = quadratic_forms(fake, fake, wf, wf, chunk) - self_kernel_diag(fake) @ wf
    wr = np.concatenate([plan.real, np.ones((n_real, 1))], axis=1)
    # cross terms: subset s pairs plan.fake[:, s] with plan.real[:, s]; all resamples pair with all real rows
    cross = np.zeros(s + counts.shape[1])
    for start in range(0, n, chunk):
        rows = slice(start, start + chunk)
        kr = polynomial_kernel(fake[rows], real) @ wr  # (r, S + 1)
        cross[:s] += np.einsum("ij,ij->j", plan.fake[rows], kr[:, :s])
        cross[s:] += counts[rows].T @ kr[:, s]
    m = plan.size
    subsets = ff[:s] / (m * (m - 1)) + real_terms.subsets - 2.0 * cross[:s] / (m * m)
    tot = counts.sum(axis=0)
    boot = ff[s:] / (tot * (tot - 1)) + real_terms.full - 2.0 * cross[s:] / (tot * n_real) if counts.shape[1] else np.zeros(0)
    return subsets, boot


def kid(fake: np.ndarray, real: np.ndarray, subsets: int = 100, subset_size: int = 1000,
        seed: int = 0) -> tuple[float, float]:
    """KID (mean, std over subsets) between fake and real features."""
    plan = KIDPlan.make(fake.shape[0], real.shape[0], subsets, subset_size, seed)
    vals, _ = kid_terms(fake, real, plan, RealKernelTerms.compute(real, plan))
    return float(vals.mean()), float(vals.std())
