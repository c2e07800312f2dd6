"""IoU@IQR tallies: how well each unit's thresholded map agrees with binary masks, counted streaming.

One tally serves both unit-region scores: artifact masks (`scoring.iou_iqr`, two classes: clean / artifact
pixel) and concept label maps (`dissect.dissect`, one class per segmenter concept). For every unit u, candidate
threshold t and class c it counts |r_u > t & s_c| (intersection), |r_u > t| and |s_c|, where r_u is the unit's
map upsampled bilinearly (align_corners=False, as `F.interpolate`) to the masks' resolution. From the counts
come, per (unit, class, threshold), IoU = |A & S| / |A | S| and the information quality ratio
IQR = I(A; S) / H(A, S) (GAN Dissection's threshold criterion), and per (unit, class) the IoU at the
IQR-optimal threshold.

Each activation is binned by how many of its unit's thresholds lie strictly below it, and one `bincount` per
batch over (unit, class, bin) gives every count, so a run never holds N x C x H x W. Counts are int64: tallies
of shards merge by addition (`merge_`, `all_reduce_` across torch.distributed ranks) to exactly the counts of
one pass.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import dist

TOP_FRACTIONS = torch.logspace(-3, 0, 25)  # 0.1 % .. 100 %, as GAN Dissection's threshold search


def _entropy_terms(p: torch.Tensor) -> torch.Tensor:
    """-p log p with 0 log 0 = 0."""
    return torch.where(p > 0, -p * torch.log(p.clamp(min=1e-30)), torch.zeros_like(p))


def iqr_from_counts(n11: torch.Tensor, na: torch.Tensor, ns: torch.Tensor, total: float) -> torch.Tensor:
    """Information quality ratio I(A;S)/H(A,S) from joint counts (n11 = |A&S|, na = |A|, ns = |S|)."""
    n10, n01 = na - n11, ns - n11
    n00 = total - na - ns + n11
    p = torch.stack([n11, n10, n01, n00]).double() / total
    pa = na.double() / total
    ps = torch.as_tensor(ns, dtype=torch.float64).expand_as(pa) / total
    h_joint = _entropy_terms(p).sum(0)
    h_a = _entropy_terms(pa) + _entropy_terms(1 - pa)
    h_s = _entropy_terms(ps) + _entropy_terms(1 - ps)
    mi = (h_a + h_s - h_joint).clamp(min=0)
    return torch.where(h_joint > 0, mi / h_joint.clamp(min=1e-30), torch.zeros_like(mi))


def bilinear_matrix(size: int, out: int) -> torch.Tensor:
    """The (out, size) matrix of 1-D bilinear resizing (align_corners=False, as F.interpolate): separable 2-D upsampling."""
    if size == out:
        return torch.eye(out)
    eye = torch.eye(size)[:, None, :, None]  # `size` one-hot signals, each (1, size, 1)
    return F.interpolate(eye, size=(out, 1), mode="bilinear", align_corners=False)[:, 0, :, 0].T.contiguous()


class IouTally:
    """Streaming joint counts of (unit above threshold t) and (pixel of class c) for the units of one layer.

    thresholds: (C, T) candidate thresholds per unit; classes: K, the number of mask classes (2 for a bool mask).
    """

    def __init__(self, thresholds: torch.Tensor, classes: int) -> None:
        thr = thresholds.float()
        self.sorted, order = thr.sort(1)  # ascending per unit
        self.order = order  # sorted position -> original threshold column
        self.units, self.t = thr.shape
        self.k = int(classes)
        self.hist = torch.zeros(self.units * self.k * (self.t + 1), dtype=torch.int64)
        self.class_pixels = torch.zeros(self.k, dtype=torch.int64)

    @property
    def pixels(self) -> int:
        """Number of mask pixels tallied so far."""
        return int(self.class_pixels.sum())

    def _to(self, device: torch.device) -> None:
        """Move the counts and thresholds to `device` (the tally runs where the activations are)."""
        if self.hist.device != device:
            self.hist, self.class_pixels = self.hist.to(device), self.class_pixels.to(device)
            self.sorted, self.order = self.sorted.to(device), self.order.to(device)

    def update(self, acts: torch.Tensor, labels: torch.Tensor, budget: int = 1 << 22) -> None:
        """Fold in activations (B, C, h, w) and class labels or bool masks (B, H, W); activations are upsampled to (H, W)."""
        b, c = acts.shape[:2]
        self._to(acts.device)
        labels = labels.to(acts.device)
        if c != self.units:
            raise ValueError(f"expected {self.units} units, got {c}")
        hh, ww = labels.shape[-2:]
        lab = labels.reshape(b, -1).long()
        if lab.numel() and (int(lab.min()) < 0 or int(lab.max()) >= self.k):
            raise ValueError("labels out of range")
        self.class_pixels += torch.bincount(lab.reshape(-1), minlength=self.k)
        base = (torch.arange(c, device=acts.device) * (self.k * (self.t + 1)))[:, None]  # (C, 1)
        chunk = max(1, budget // max(c * hh * ww, 1))  # bounds the (C, chunk*H*W) work tensors
        ry, rx = bilinear_matrix(acts.shape[-2], hh).to(acts.device), bilinear_matrix(acts.shape[-1], ww).to(acts.device)
        for i in range(0, b, chunk):
            a = acts[i:i + chunk].float()
            n = a.shape[0]
            vals = torch.einsum("Hh,nchw,Ww->cnHW", ry, a, rx).reshape(c, -1)  # upsampled, (C, n*H*W)
            bins = torch.searchsorted(self.sorted, vals, side="left")  # number of thresholds strictly below the value
            idx = base + lab[i:i + n].reshape(1, -1) * (self.t + 1) + bins
            self.hist += torch.bincount(idx.reshape(-1), minlength=self.hist.numel())

    def merge_(self, other: "IouTally") -> "IouTally":
        """Add another shard's counts (same thresholds and classes) into this tally; returns self."""
        if (other.units, other.t, other.k) != (self.units, self.t, self.k) or not torch.equal(other.sorted.cpu(), self.sorted.cpu()):
            raise ValueError("tallies with different units, thresholds or classes cannot be merged")
        self.hist += other.hist.to(self.hist.device)
        self.class_pixels += other.class_pixels.to(self.class_pixels.device)
        return self

    def all_reduce_(self) -> "IouTally":
        """Sum the counts over torch.distributed ranks (no-op in one process); integer counts, so the sum is exact."""
        self.hist = dist.all_reduce_sum(self.hist)
        self.class_pixels = dist.all_reduce_sum(self.class_pixels)
        return self

    def counts(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(n11 (C, K, T), na (C, T), ns (K,)) as float64, thresholds in the original column order."""
        h = self.hist.cpu().reshape(self.units, self.k, self.t + 1).double()
        # value > sorted threshold j  <=>  its bin (count of thresholds below it) > j
        above = h.flip(-1).cumsum(-1).flip(-1)[..., 1:]  # (C, K, T): sum over bins > j
        n11 = torch.empty_like(above)
        n11.scatter_(2, self.order.cpu()[:, None, :].expand_as(above), above)
        return n11, n11.sum(1), self.class_pixels.cpu().double()

    def scores(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(IoU, IQR), each (C, K, T) float64: every unit against every class at every candidate threshold."""
        n11, na, ns = self.counts()
        na3 = na[:, None, :].expand_as(n11)
        union = na3 + ns[None, :, None] - n11
        iou = torch.where(union > 0, n11 / union.clamp(min=1e-30), torch.zeros_like(n11))
        return iou, iqr_from_counts(n11, na3, ns[None, :, None], float(self.pixels))

    def result(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(IoU (C, K), IQR (C, K), best threshold column (C, K)) at each (unit, class)'s IQR-optimal threshold."""
        iou, iqr = self.scores()
        best = iqr.argmax(2)  # (C, K); ties: the first column
        return iou.gather(2, best[..., None])[..., 0], iqr.gather(2, best[..., None])[..., 0], best
