"""Frechet distance between Gaussians fitted to features, from streaming float64 moments.

FD = ||mu1 - mu2||^2 + Tr(S1) + Tr(S2) - 2 Tr((S1 S2)^1/2).

The trace term never forms a matrix square root of a non-symmetric matrix (no scipy.linalg.sqrtm): for any
factor F with F F^T = S1, Tr((S1 S2)^1/2) = sum_i sqrt(lambda_i(F^T S2 F)), because F^T S2 F is symmetric
positive semi-definite and has the eigenvalues of S1 S2 (and of S1^1/2 S2 S1^1/2). F is the Cholesky factor
L of S1 when S1 is positive definite (the usual case, N > d: d^3/3 flops, and F^T S2 F costs two triangular
products), else V diag(sqrt(w)) from a symmetric eigh of S1 (tiny negative w clipped to 0). The
eigenvalues come from one symmetric eigenvalue problem without eigenvectors (negatives clipped). Every step
is backward stable, so near-singular covariances (N < d) are fine.

`FDReference` keeps F for a fixed reference set so that repeated distances (bootstrap, FD-inf) cost
one symmetric eigenvalue problem each, of size min(d, number of distinct samples). Given a CUDA (or MPS)
`device` it runs those distances there, in float64 torch (cuSOLVER), with the same formulas; on the CPU
it uses LAPACK through scipy. Both are float64 throughout: no reduced precision anywhere.
"""

from __future__ import annotations

import functools
import os
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence, TypeVar

import numpy as np
import scipy.linalg
import torch
from scipy.linalg import blas, lapack

from ..errors import UserError


_F = TypeVar("_F", bound=Callable[..., Any])


@functools.lru_cache(maxsize=1)
def _controller() -> Any:
    try:
        from threadpoolctl import ThreadpoolController  # optional (it ships with scikit-learn)
    except ImportError:  # pragma: no cover - threadpoolctl ships with scikit-learn
        return None
    return ThreadpoolController()


@contextmanager
def lapack_single_thread() -> Iterator[None]:
    """Run the symmetric eigen-solvers on one BLAS thread.

    OpenBLAS' threaded tridiagonal reduction collapses when the cores are shared: eigvalsh of a 1280 x
    1280 covariance took 6-9 s with 2 threads on 2 busy cores and 0.16 s with 1 thread (0.34 s vs
    12.5 s for eigh); the reduction is memory-bound, so one thread loses little on idle cores either.
    """
    ctrl = _controller()
    if ctrl is None:
        yield
        return
    with ctrl.limit(limits=1, user_api="blas"):
        yield


def _single_threaded(fn: _F) -> _F:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with lapack_single_thread():
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


class Moments:
    """Streaming, mergeable float64 moments of features: count `n`, `sum` (d,), `outer` = sum x x^T (d, d).

    Shards (batches, processes, ranks) merge exactly by adding their sums: `a.merge(b)` or `a + b`.
    """

    def __init__(self, dim: int) -> None:
        self.dim = int(dim)
        self.n = 0
        self.sum = np.zeros(self.dim, np.float64)
        self.outer = np.zeros((self.dim, self.dim), np.float64)

    def update(self, feats: Any) -> "Moments":
        """Add a batch of features (N, d)."""
        x = np.asarray(feats, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"features must have shape (N, {self.dim}), got {x.shape}")
        self.n += x.shape[0]
        self.sum += x.sum(axis=0)
        self.outer += x.T @ x
        return self

    def merge(self, other: "Moments") -> "Moments":
        """A new Moments holding both shards."""
        if other.dim != self.dim:
            raise ValueError(f"cannot merge moments of dimension {self.dim} and {other.dim}")
        out = Moments(self.dim)
        out.n = self.n + other.n
        out.sum = self.sum + other.sum
        out.outer = self.outer + other.outer
        return out

    __add__ = merge

    @property
    def mean(self) -> np.ndarray:
        return self.sum / max(self.n, 1)

    @property
    def cov(self) -> np.ndarray:
        """Unbiased covariance (divides by n - 1, like np.cov)."""
        if self.n < 2:
            raise UserError(f"Need at least 2 samples to fit a Gaussian to features, got {self.n}.")
        mu = self.mean
        c = (self.outer - self.n * np.outer(mu, mu)) / (self.n - 1)
        return (c + c.T) * 0.5

    @classmethod
    def of(cls, feats: Any) -> "Moments":
        """Moments of one array of features."""
        x = np.asarray(feats)
        return cls(x.shape[1]).update(x)

    def to_arrays(self, prefix: str = "moments_") -> dict[str, np.ndarray]:
        return {prefix + "n": np.array(self.n, np.int64), prefix + "sum": self.sum, prefix + "outer": self.outer}

    @classmethod
    def from_arrays(cls, arrays: Any, prefix: str = "moments_") -> "Moments":
        s = np.asarray(arrays[prefix + "sum"], np.float64)
        m = cls(s.shape[0])
        m.n, m.sum, m.outer = int(arrays[prefix + "n"]), s, np.asarray(arrays[prefix + "outer"], np.float64)
        return m


def clip_eigenvalues(lam: np.ndarray) -> np.ndarray:
    """Eigenvalues of a PSD matrix with round-off removed: values below len * eps * max are set to 0.

    An exactly singular covariance (fewer samples than dimensions) has eigenvalues of order
    eps * max(lam) of either sign; their square roots (~1e-8 * sqrt(max) each) would add up to a
    visible error, so they are zeroed rather than only clipped at 0.
    """
    lam = np.asarray(lam, np.float64)
    if lam.size == 0:
        return lam
    tol = max(float(np.abs(lam).max()), 0.0) * lam.size * np.finfo(np.float64).eps
    return np.where(lam > tol, lam, 0.0)


def cholesky_factor(s: np.ndarray) -> np.ndarray | None:
    """Lower-triangular L with L L^T = S for a symmetric positive definite S, or None when S is not (numerically) PD."""
    s = np.asarray(s, np.float64)
    if s.ndim != 2 or s.shape[0] != s.shape[1] or s.shape[0] == 0:
        return None
    c, info = lapack.dpotrf(np.asfortranarray((s + s.T) * 0.5), lower=1, clean=1, overwrite_a=1)
    if info != 0 or not np.all(np.isfinite(c)):
        return None
    return c


def _factor(s: np.ndarray) -> tuple[np.ndarray, bool]:
    """(F, lower): the Cholesky factor (lower=True) when S is positive definite, else the eigh factor."""
    c = cholesky_factor(s)
    if c is not None:
        return c, True
    w, v = np.linalg.eigh((np.asarray(s, np.float64) + np.asarray(s, np.float64).T) * 0.5)
    return v * np.sqrt(clip_eigenvalues(w)), False


@_single_threaded
def psd_factor(s: np.ndarray) -> np.ndarray:
    """F with F F^T = S for a symmetric PSD S: its Cholesky factor if S is positive definite, else from eigh
    (round-off eigenvalues zeroed)."""
    return _factor(s)[0]


def _congruence(f: np.ndarray, s: np.ndarray, lower: bool) -> np.ndarray:
    """F^T S F (symmetrised), with triangular products when F is lower triangular."""
    if lower:
        b = blas.dtrmm(1.0, f, np.asfortranarray(s, np.float64), side=1, lower=1)  # S F
        m = blas.dtrmm(1.0, f, b, lower=1, trans_a=1, overwrite_b=1)  # F^T S F
    else:
        m = f.T @ np.asarray(s, np.float64) @ f
    return (m + m.T) * 0.5


def _eigvalsh(m: np.ndarray) -> np.ndarray:
    """Eigenvalues of a symmetric matrix on one thread: torch's LAPACK (MKL in the CPU wheel, about twice as fast as
    OpenBLAS' syevd at d = 2048), else scipy's syevd."""
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        return torch.linalg.eigvalsh(torch.from_numpy(np.ascontiguousarray(m, np.float64))).numpy()
    except RuntimeError:  # pragma: no cover - torch's LAPACK failed to converge
        w, _, info = lapack.dsyevd(m, compute_v=0, lower=1, overwrite_a=1)
        return w if info == 0 else np.linalg.eigvalsh(m)
    finally:
        torch.set_num_threads(threads)


@_single_threaded
def sqrtm_psd(s: np.ndarray) -> np.ndarray:
    """The symmetric PSD square root of a symmetric PSD matrix (via eigh)."""
    w, v = np.linalg.eigh((s + s.T) * 0.5)
    return (v * np.sqrt(clip_eigenvalues(w))) @ v.T


def trace_sqrt_product(s1: np.ndarray, s2: np.ndarray) -> float:
    """Tr((S1 S2)^1/2) for symmetric PSD S1, S2, from eigenvalues of F^T S2 F (F F^T = S1): the d x d route.

    The Cholesky factor and the triangular products are BLAS-3 (default threads); the eigenvalues run on one thread.
    """
    s1 = np.asarray(s1, np.float64)
    c = cholesky_factor(s1)
    if c is not None:
        f, lower = c, True
    else:
        with lapack_single_thread():
            f, lower = _factor(s1)
    lam = _eigvalsh(_congruence(f, s2, lower))
    return float(np.sqrt(clip_eigenvalues(lam)).sum())


def centred(x: np.ndarray) -> np.ndarray:
    """Rows of x (N, d) minus their mean, in float64."""
    x = np.asarray(x, np.float64)
    return x - x.mean(axis=0, keepdims=True)


def trace_sqrt_product_features(x: np.ndarray, y: np.ndarray) -> float:
    """Tr((S1 S2)^1/2) for the covariances of feature matrices x (n, d) and y (m, d), exact in both regimes.

    With A, B the centred x, y, S1 = A^T A / (n-1) and S2 = B^T B / (m-1), the nonzero eigenvalues of S1 S2 are the
    squared singular values of A B^T / sqrt((n-1)(m-1)), so the trace term is the nuclear norm of that n x m matrix:
    when min(n, m) < d one n x m SVD (values only) replaces the d x d eigenproblem; otherwise the d x d route runs.
    """
    x, y = np.asarray(x), np.asarray(y)
    n, m, d = x.shape[0], y.shape[0], x.shape[1]
    if n < 2 or m < 2:
        raise UserError(f"Need at least 2 samples to fit a Gaussian to features, got {min(n, m)}.")
    if min(n, m) >= d:
        return trace_sqrt_product(Moments.of(x).cov, Moments.of(y).cov)
    cross = (centred(x) @ centred(y).T) / np.sqrt((n - 1.0) * (m - 1.0))
    return float(scipy.linalg.svdvals(cross, overwrite_a=True, check_finite=False).sum())


def frechet_distance(mu1: np.ndarray, s1: np.ndarray, mu2: np.ndarray, s2: np.ndarray) -> float:
    """Frechet distance between N(mu1, S1) and N(mu2, S2); tiny negative round-off is clipped to 0."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    if mu1.shape != mu2.shape:
        raise UserError(f"Cannot compare features of dimension {mu1.shape[0]} and {mu2.shape[0]}; "
                        "both sets must use the same feature space.")
    diff = mu1 - mu2
    fd = diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * trace_sqrt_product(s1, s2)
    return max(float(fd), 0.0)


def fd_moments(a: Moments, b: Moments) -> float:
    """Frechet distance between the Gaussians of two Moments."""
    return frechet_distance(a.mean, a.cov, b.mean, b.cov)


def fd_features(x: np.ndarray, y: np.ndarray) -> float:
    """Frechet distance between the Gaussians of two feature arrays (N, d) and (M, d), exact in both regimes.

    Fewer samples than dimensions: the trace term is an n x m nuclear norm (`trace_sqrt_product_features`) and no
    d x d matrix is formed; otherwise the covariances go through the d x d route.
    """
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise UserError(f"Cannot compare features of shapes {x.shape} and {y.shape}; both sets must use the same feature space.")
    if min(x.shape[0], y.shape[0]) >= x.shape[1]:
        return fd_moments(Moments.of(x), Moments.of(y))
    diff = np.asarray(x, np.float64).mean(0) - np.asarray(y, np.float64).mean(0)
    fd = diff @ diff + _trace_cov(x) + _trace_cov(y) - 2.0 * trace_sqrt_product_features(x, y)
    return max(float(fd), 0.0)


def _trace_cov(x: np.ndarray) -> float:
    """Trace of the unbiased covariance of the rows of x, from the centred rows (no d x d matrix)."""
    a = centred(x)
    return float(np.einsum("ij,ij->", a, a) / (a.shape[0] - 1))


class FDReference:
    """A fixed reference Gaussian prepared for many distances: FD(weighted samples of X, reference)."""

    def __init__(self, mean: np.ndarray, cov: np.ndarray, device: str | torch.device | None = None) -> None:
        self.mean = np.asarray(mean, np.float64)
        self.cov = np.asarray(cov, np.float64)
        self.trace = float(np.trace(self.cov))
        with lapack_single_thread():
            self.factor, self.lower = _factor(self.cov)  # F F^T = S_ref
        self.device = None if device is None else torch.device(device)  # None: numpy/LAPACK; else float64 torch there
        if self.device is not None:
            self._t_factor = torch.from_numpy(np.ascontiguousarray(self.factor)).to(self.device)
            self._t_mean = torch.from_numpy(self.mean).to(self.device)

    @classmethod
    def of(cls, m: Moments, device: str | torch.device | None = None) -> "FDReference":
        return cls(m.mean, m.cov, device)

    def _t(self, a: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.ascontiguousarray(a, np.float64), device=self.device)

    def _distance_torch(self, mean: np.ndarray, cov: np.ndarray) -> float:
        f, s = self._t_factor, self._t(cov)
        m = f.T @ s @ f
        lam = torch.linalg.eigvalsh((m + m.T) * 0.5).cpu().numpy()
        diff = self._t(mean) - self._t_mean
        fd = float(diff @ diff) + float(torch.trace(s)) + self.trace - 2.0 * np.sqrt(clip_eigenvalues(lam)).sum()
        return max(float(fd), 0.0)

    def _weighted_torch(self, p: "PreparedSamples", counts: np.ndarray) -> float:
        idx = np.flatnonzero(counts)
        w64 = counts[idx].astype(np.float64)
        n = float(w64.sum())
        if n < 2:
            raise UserError("Need at least 2 samples to fit a Gaussian to features.")
        w, ti = self._t(w64), torch.as_tensor(idx, device=self.device)
        x, y, sq = p.tx.index_select(0, ti), p.ty.index_select(0, ti), p.tsq.index_select(0, ti)
        mu = (w @ x) / n
        yc = (y - (w @ y) / n) * w.sqrt()[:, None]
        g = yc @ yc.T if yc.shape[0] < yc.shape[1] else yc.T @ yc
        lam = (torch.linalg.eigvalsh(g) / (n - 1)).cpu().numpy()
        tr = float((w @ sq - n * (mu @ mu)) / (n - 1))
        diff = mu - self._t_mean
        fd = float(diff @ diff) + tr + self.trace - 2.0 * np.sqrt(clip_eigenvalues(lam)).sum()
        return max(float(fd), 0.0)

    @_single_threaded
    def distance(self, mean: np.ndarray, cov: np.ndarray) -> float:
        """FD between N(mean, cov) and the reference."""
        if self.device is not None:
            return self._distance_torch(mean, cov)
        diff = np.asarray(mean, np.float64) - self.mean
        lam = _eigvalsh(_congruence(self.factor, cov, self.lower))
        fd = diff @ diff + np.trace(cov) + self.trace - 2.0 * np.sqrt(clip_eigenvalues(lam)).sum()
        return max(float(fd), 0.0)

    def prepare(self, x: np.ndarray) -> "PreparedSamples":
        """Precompute what weighted distances of rows of `x` need (x F, squared norms)."""
        x = np.asarray(x, np.float64)
        if self.device is not None:
            tx = self._t(x)
            ty = tx @ self._t_factor
            return PreparedSamples(x=x, y=None, sq=None, tx=tx, ty=ty, tsq=(tx * tx).sum(1))  # type: ignore[arg-type]
        y = x @ self.factor
        gram = None
        if x.shape[0] <= GRAM_ROWS and 0.7 * x.shape[0] < y.shape[1]:  # resamples have < d distinct rows: their Gram
            # matrices are gathered from this one (rows centred on their mean), no GEMM per replicate
            y0 = y - y.mean(axis=0, keepdims=True)
            gram = y0 @ y0.T
        return PreparedSamples(x=x, y=y, sq=np.einsum("ij,ij->i", x, x), gram=gram)

    @_single_threaded
    def weighted_distance(self, p: "PreparedSamples", counts: np.ndarray) -> float:
        """FD between the resample that takes row i of x `counts[i]` times, and the reference.

        The resample's covariance (divided by sum(counts) - 1) enters only through the nonzero eigenvalues
        of F^T S F, computed from the smaller of the (k x k) Gram or (d x d) scatter matrix of the
        k distinct rows. The Gram matrix is gathered from the one `prepare` computed, then centred on the resample's
        mean: with G = Y0 Y0^T (Y0 the rows minus their mean) and g = G w / n, the weighted centred Gram is
        sqrt(w_i w_j) (G_ij - g_i - g_j + w.g / n), an identity (no approximation).
        """
        counts = np.asarray(counts)
        if self.device is not None:
            return self._weighted_torch(p, counts)
        return self._weighted_cpu(p, counts)

    def _weighted_cpu(self, p: "PreparedSamples", counts: np.ndarray) -> float:
        idx = np.flatnonzero(counts)
        w = counts[idx].astype(np.float64)
        n = w.sum()
        if n < 2:
            raise UserError("Need at least 2 samples to fit a Gaussian to features.")
        mu = (w @ p.x[idx]) / n
        if p.gram is not None and len(idx) < p.y.shape[1]:
            g = _centred_gram(p.gram[np.ix_(idx, idx)], w)
        else:
            y = p.y[idx]
            yc = (y - (w @ y) / n) * np.sqrt(w)[:, None]
            g = yc @ yc.T if yc.shape[0] < yc.shape[1] else yc.T @ yc
        lam = np.linalg.eigvalsh(g) / (n - 1)
        tr = (w @ p.sq[idx] - n * (mu @ mu)) / (n - 1)
        diff = mu - self.mean
        fd = diff @ diff + tr + self.trace - 2.0 * np.sqrt(clip_eigenvalues(lam)).sum()
        return max(float(fd), 0.0)

    def weighted_distances(self, p: "PreparedSamples", counts: np.ndarray) -> np.ndarray:
        """`weighted_distance` for each column of counts (n, B), replicates spread over threads (LAPACK releases the GIL)."""
        counts = np.asarray(counts)
        cols = range(counts.shape[1])
        workers = max(1, min(2, os.cpu_count() or 1, counts.shape[1]))
        if self.device is not None or workers == 1:
            return np.array([self.weighted_distance(p, counts[:, b]) for b in cols])
        with lapack_single_thread(), ThreadPoolExecutor(max_workers=workers, thread_name_prefix="artifix-fd") as pool:
            return np.array(list(pool.map(lambda b: self._weighted_cpu(p, counts[:, b]), cols)))


def _centred_gram(g: np.ndarray, w: np.ndarray) -> np.ndarray:
    """sqrt(w_i w_j) (G_ij - g_i - g_j + w.g / n) with g = G w / n, n = sum(w): the Gram matrix of the weighted rows
    centred on their weighted mean, from the Gram matrix G of the rows (any common shift of the rows cancels)."""
    n = w.sum()
    gw = (g @ w) / n
    m = g - gw[:, None] - gw[None, :] + (w @ gw) / n
    sw = np.sqrt(w)
    m *= sw[:, None]
    m *= sw[None, :]
    return (m + m.T) * 0.5


GRAM_ROWS = 4096  # prepare() keeps the n x n Gram matrix of up to this many rows (4096: 128 MB)


@dataclass
class PreparedSamples:
    x: np.ndarray
    y: np.ndarray
    sq: np.ndarray
    gram: np.ndarray | None = None  # Y0 Y0^T, Y0 = y minus its mean (CPU, n <= GRAM_ROWS)
    tx: torch.Tensor | None = None  # the same on the FDReference's device (float64), when it has one
    ty: torch.Tensor | None = None
    tsq: torch.Tensor | None = None


def fd_inf(x: np.ndarray, ref: FDReference, ns: Sequence[int] | None = None, points: int = 10,
           seed: int = 0) -> dict[str, Any]:
    """Extrapolate FD to infinitely many samples (Chong & Forsyth): fit FD_N = a + b / N, report a.

    FD_N is computed for `points` sample counts N from N_max/5 to N_max = len(x) (or the given `ns`),
    each on a seeded random subset (without replacement) of the rows of `x`, against `ref`.
    """
    n = x.shape[0]
    if ns is None:
        lo = max(2, n // 5)
        ns = sorted({int(round(v)) for v in np.linspace(lo, n, points)})
    ns = [int(v) for v in ns if 2 <= v <= n]
    if len(ns) < 2:
        raise UserError(f"FD-inf needs at least two sample counts to fit; got {n} samples.")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, 0xFD1F]))
    p = ref.prepare(x)
    fds = []
    for m in ns:
        counts = np.zeros(n, np.int64)
        counts[rng.choice(n, size=m, replace=False)] = 1
        fds.append(ref.weighted_distance(p, counts))
    inv = 1.0 / np.asarray(ns, np.float64)
    slope, intercept = np.polyfit(inv, np.asarray(fds), 1)
    pred = intercept + slope * inv
    ss_res = float(((np.asarray(fds) - pred) ** 2).sum())
    ss_tot = float(((np.asarray(fds) - np.mean(fds)) ** 2).sum())
    return {"value": float(intercept), "slope": float(slope), "ns": ns, "fds": [float(v) for v in fds],
            "r2": 1.0 - ss_res / ss_tot if ss_tot > 0 else 1.0}
