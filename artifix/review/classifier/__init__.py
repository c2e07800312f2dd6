"""Artifact classifier: learn "artifact vs clean" from reviewer flags, localise artifacts, pick what to review next.

The classifier is a class-balanced L2 logistic regression on standardised pooled backbone features
(EfficientNet-Lite0 by default, 1280-d, from `artifix.metrics.features`). The pooled feature is the mean of
the backbone's last spatial grid (7x7 at 224 px, read with a forward hook), and the model is linear, so the
sample's logit is exactly the mean of per-cell logits: projecting each grid cell onto the weight vector gives
an exact class-activation map (CAM). `localize` upsamples it to image size and normalises it;
`pseudo_masks` keeps its top pixels as pseudo artifact masks for samples flagged without a painted region
(as Tousi et al., CVPR 2021). `differentiable_score` is the same model as a torch function of G's output
(for first-order unit effects).

One alternative model, "logreg+pixels" (the same regression on backbone features plus the means of simple
per-pixel statistics: colour, squared colour, saturation, value, local contrast; the pixel block is
up-weighted so that it carries as much variance as the backbone block), is cross-validated on the same
folds and kept only when its ROC-AUC beats the plain model by at least `min_gain`. Its pixel terms are means
of per-pixel quantities, so its localisation map (backbone CAM + per-pixel term) stays exact too.

Every number in `ArtifactClassifier.report` comes from out-of-fold predictions of a seeded stratified
k-fold (folds clipped to the smaller class); C is chosen by an inner cross-validation inside each outer
fold, so the AUC is not tuned on its own test folds (choosing between the two models still favours the
winner slightly). Mean pooling dilutes small local artifacts: with few labels the plain model needs
artifacts covering several grid cells. Classifiers save to one `.pt` file of tensors and a JSON string that
loads with `torch.load(weights_only=True)`.

The package: `backbone` (pooled features, the spatial grid, pixel statistics), `model` (ArtifactClassifier:
prediction, save / load), `training` (cross-validated training and calibration), `cam` (localisation maps,
pseudo masks, the differentiable score) and `review` (which samples to review next).
"""

from .backbone import GRID_MODULES, PIXEL_STAT_NAMES, PIXEL_STATS, FeatureSet, _backbone, compute_features, pixel_stats
from .cam import differentiable_score, localize, pseudo_masks
from .model import FORMAT, FORMAT_VERSION, MODELS, ArtifactClassifier, Precomputed
from .review import review_queue

_TRAINING = ("train_classifier", "reliability_table")  # in .training, which imports scikit-learn


def __getattr__(name: str):
    """`train_classifier` and `reliability_table`, imported on first use.

    Their module imports scikit-learn (about 1 s, with the scipy.stats it pulls in), which only training needs:
    scoring with a saved classifier, the dashboard's first page and `artifix --help` start without it.
    """
    if name in _TRAINING:
        from . import training  # on first use: scikit-learn, about 1 s (the docstring above)

        return getattr(training, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "FORMAT", "FORMAT_VERSION", "MODELS", "PIXEL_STATS", "PIXEL_STAT_NAMES", "GRID_MODULES", "Precomputed",
    "FeatureSet", "compute_features", "pixel_stats", "ArtifactClassifier", "train_classifier", "reliability_table",
    "localize", "pseudo_masks", "differentiable_score", "review_queue",
    "_backbone",  # the cached backbone of a classifier's feature space (artifix/repair.py reads its extractor)
]
