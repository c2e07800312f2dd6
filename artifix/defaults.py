"""The one table of defaults. API functions, CLI flags and `artifix.toml` keys all read it.

Each option lives in a section (the TOML table name) and has one name used everywhere:
`[generator] latent = "100,1,1"` in TOML, `--latent 100,1,1` on the command line,
`defaults.get("generator", "latent")` in code.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class Option:
    """One setting: its section, name, default, parser for CLI/TOML strings, and help text."""

    section: str
    name: str
    default: Any
    help: str
    parse: Callable[[str], Any] = str
    flag: bool = False  # a boolean switch (store_true) on the command line
    choices: tuple[str, ...] | None = None  # a closed set of values (argparse `choices`, completion, docs)
    env: str | None = None  # an environment variable read when neither a flag nor artifix.toml sets the option

    @property
    def cli(self) -> str:
        """The command-line flag, e.g. `--trust-pickle`."""
        return "--" + self.name.replace("_", "-")


def _bool(s: str) -> bool:
    v = str(s).strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {s!r}")


def _json_list(s: Any) -> Any:
    """A TOML list passes through; command-line text is parsed as a JSON list (or one object)."""
    if not isinstance(s, str):
        return s
    try:
        v = json.loads(s)
    except json.JSONDecodeError as e:
        raise ValueError(f"not JSON: {e.msg} at column {e.colno}") from None
    v = [v] if isinstance(v, dict) else v
    if not isinstance(v, list) or not all(isinstance(c, dict) for c in v):
        raise ValueError("expected a JSON list of objects such as '[{\"metric\": \"fd\"}]'")
    return v


OPTIONS: tuple[Option, ...] = (
    # -- generator spec
    Option("generator", "generator", None,
           "generator factory 'package.module:callable' or 'path/file.py:callable', or a TorchScript file; "
           "default: the bundled example"),
    Option("generator", "checkpoint", None, "checkpoint file (.pt/.pth state dict or dict holding one, or .safetensors)"),
    Option("generator", "key", None, "key of the state dict inside the checkpoint (auto-detected when omitted)"),
    Option("generator", "kwargs", None, "JSON object of keyword arguments for the factory, e.g. '{\"ngf\": 32}'"),
    Option("generator", "latent", "100,1,1", "latent shape per sample, e.g. '100' or '512' or '100,1,1'"),
    Option("generator", "truncation", None, "truncate latents to |z| <= T by resampling (normal distribution); StyleGAN and rosinality: "
           "the W-space truncation psi (w_avg + psi (w - w_avg))", float),
    Option("generator", "classes", 0, "number of classes of a conditional generator (0 = unconditional)", int),
    Option("generator", "class_mode", "index", "how the class reaches G's second argument: 'index' or 'onehot'",
           choices=("index", "onehot")),
    Option("generator", "range", "[-1,1]", "generator output range: '[-1,1]' or '[0,1]'", choices=("[-1,1]", "[0,1]")),
    Option("generator", "trust_pickle", False,
           "allow full pickle loading of the checkpoint (runs code inside it; only for files you trust)", _bool, flag=True),
    Option("generator", "adapter", None,
           "generator family: module, torchscript, stylegan, rosinality, proggan or one an installed plugin registers "
           "(entry-point group 'artifix.adapters'); default: detected from the files"),
    Option("generator", "code_path", None,
           "folder of your model code put on sys.path (e.g. a stylegan2-ada-pytorch or stylegan3 checkout with dnnlib and torch_utils)"),
    # -- sampling
    Option("sample", "seed", 0, "sampling seed: sample i is a pure function of (seed, i)", int),
    Option("sample", "n", 64, "number of samples", int),
    Option("sample", "start", 0, "index of the first sample", int),
    Option("sample", "batch", 64, "batch size (results do not depend on it)", int),
    Option("sample", "class_id", None, "sample only this class (conditional generators)", int),
    Option("sample", "grid", "samples.png", "write a grid PNG of the samples here"),
    Option("sample", "images", None, "also write each sample as <index>.png into this folder"),
    Option("sample", "layer", None, "generator layer to trace or edit (dotted module path as in 'artifix layers')"),
    Option("sample", "ablate", None, "comma-separated units of --layer to ablate while sampling, e.g. '3,17'"),
    Option("sample", "alpha", 1.0, "ablation strength in [0, 1] for --ablate", float),
    # -- metrics
    Option("metrics", "n", 2000, "generated samples per metric (the N in the metric names)", int),
    Option("metrics", "features", "effnet-lite0", "feature space: 'effnet-lite0', 'inception' or 'torchscript:PATH'"),
    Option("metrics", "metrics", "fd,kid,swd", "comma-separated metrics to compute"),
    Option("metrics", "real", None, "reference data: image folder (recursive), StyleGAN dataset_tool .zip, .npz/.npy uint8 array, "
           "artifix statistics file or pytorch-fid/clean-fid mu/sigma .npz (FID Inception space only); default: the example's scenes"),
    Option("metrics", "real_class", None, "use only the reference images of this class (dataset.json labels of a .zip or folder)", int),
    Option("metrics", "images", None, "metrics of this folder of images instead of a generator's samples (needs --real)"),
    Option("metrics", "inception_weights", None, "path to pt_inception-2015-12-05 weights (or $ARTIFIX_INCEPTION_WEIGHTS)"),
    Option("metrics", "bootstrap", 200, "bootstrap resamples for confidence intervals", int),
    Option("metrics", "confidence", 0.95, "confidence level of intervals", float),
    Option("metrics", "kid_subsets", 100, "KID: number of random subsets", int),
    Option("metrics", "kid_subset_size", 1000, "KID: subset size (clipped to the sample count)", int),
    Option("metrics", "fd_inf", False, "also extrapolate FD to infinite N (FID-inf)", _bool, flag=True),
    Option("metrics", "metrics_seed", 0, "metrics seed: KID subsets, bootstrap resamples, SWD patches and directions", int),
    Option("metrics", "real_n", None, "reference images to use (default: all of a folder or array; n for the example scenes)", int),
    Option("metrics", "real_resize", False,
           "resize a reference folder of mixed image sizes to its first image's size (PIL bicubic)", _bool, flag=True),
    Option("metrics", "swd_n", 2048, "SWD: number of images per set (ProGAN used 16384; memory grows 75 KB per image and level)", int),
    Option("metrics", "swd_bootstrap", 20, "SWD: bootstrap replicates for its interval (each costs about an eighth of an SWD)", int),
    Option("metrics", "feature_batch", 8, "images per forward pass of the feature network (0 = auto: 4 per torch thread)", int),
    Option("metrics", "torchscript_size", 224, "torchscript features: input size in pixels (0 = the images' own size)", int),
    Option("metrics", "torchscript_range", "[0,1]", "torchscript features: input range '[0,1]', '[-1,1]' or '[0,255]'",
           choices=("[0,1]", "[-1,1]", "[0,255]")),
    # -- label store
    Option("labels", "store", "artifix-labels.sqlite", "label store: a SQLite file or an SQLAlchemy URL (postgresql://...)"),
    Option("labels", "reviewer", None, "reviewer name recorded with labels and decisions (default: $USER)"),
    Option("labels", "approvers", None, "comma-separated reviewers allowed to approve unit removals (default: anyone)"),
    # -- unit scoring
    Option("score", "stats_n", 2000, "samples streamed for per-unit statistics (quantiles, firing rates, top-k)", int),
    Option("score", "exact_top", 20, "units whose causal effect is measured by exact ablation", int),
    Option("score", "top", 10, "units to show, propose for review and draw unit cards for", int),
    Option("score", "collateral_weight", 2.0, "weight of the clean-sample pixel change subtracted from the causal effect", float),
    Option("score", "rare_rate", 0.3, "firing rate at or below which a unit counts as rarely activated (cold-start prior)", float),
    # -- repair
    Option("repair", "auto", False, "remove the top --k units of the ranking instead of the approved ones", _bool, flag=True),
    Option("repair", "k", 3, "units to remove with --auto", int),
    Option("repair", "repair_n", 1000, "samples for the before/after metrics (same seeds before and after)", int),
    Option("repair", "layers", None, "comma-separated layers to repair together, in order (default: --layer); with --auto "
           "each layer is ranked with the earlier layers' units already removed"),
    Option("repair", "high_pool", None, "pool of samples from which the high-activation subset (the repair_n samples where "
           "the removed units fire most) is drawn (default: 4 x repair_n; 0 = skip that subset)", int),
    Option("repair", "optimise_alpha", False, "optimise a strength alpha in [0, 1] per unit (continuous intervention) "
           "instead of removing the units fully", _bool, flag=True),
    Option("repair", "alpha_steps", 30, "gradient steps of the alpha optimisation", int),
    Option("repair", "alpha_lr", 0.1, "Adam learning rate of the alpha optimisation", float),
    Option("repair", "alpha_l2", 0.05, "L2 penalty on alpha (mean of alpha^2) against the flagged samples' artifact probability", float),
    Option("repair", "alpha_batch", 8, "flagged samples per alpha optimisation step", int),
    Option("repair", "sweep", False, "remove the ranked units one at a time and keep the first k while each still helps "
           "beyond its paired confidence interval", _bool, flag=True),
    Option("repair", "sweep_n", 500, "samples per step of the k sweep", int),
    Option("repair", "collateral_n", 200, "samples on which the segmenter measures what else the removed units draw "
           "(needs --segmenter; the example has one bundled; 0 = skip)", int),
    # -- shared run settings
    Option("run", "out", None, "output folder"),
    Option("run", "cache", ".artifix-cache", "cache folder for reference statistics and rendered data "
           "(unset by flag or artifix.toml: $ARTIFIX_CACHE, else this default)", env="ARTIFIX_CACHE"),
    Option("run", "threads", 0, "torch CPU threads (0 = torch's default)", int),
    Option("run", "device", None, "compute device: auto (CUDA when available; under torchrun the rank's LOCAL_RANK GPU), "
           "cpu, cuda, cuda:N or mps (default: $ARTIFIX_DEVICE, else auto)"),
    # -- artifact classifier (artifix/review/classifier/)
    Option("classify", "classifier", "artifix-classifier.pt", "the artifact classifier file written by 'classify train'"),
    Option("classify", "backbone", "effnet-lite0", "classifier backbone with a spatial feature grid (for localisation maps)"),
    Option("classify", "cv_folds", 5, "outer cross-validation folds (clipped to the smaller class count)", int),
    Option("classify", "cv_seed", 0, "seed of the stratified fold split", int),
    Option("classify", "inner_folds", 3, "inner cross-validation folds used to choose C", int),
    Option("classify", "c_grid", "0.0001,0.001,0.01,0.1,1", "comma-separated inverse L2 strengths C to choose from"),
    Option("classify", "candidates", "logreg,logreg+pixels",
           "models to cross-validate; the first is the baseline, others are kept only if their CV AUC is higher by --min-gain"),
    Option("classify", "min_gain", 0.005, "CV ROC-AUC an alternative model must gain over the baseline to be kept", float),
    Option("classify", "decision_threshold", "f1",
           "decision threshold on p(artifact): 'f1' or 'youden' (chosen on out-of-fold predictions) or a number"),
    Option("classify", "calibration_bins", 5, "bins of the reliability (calibration) table", int),
    Option("classify", "top_fraction", 0.1, "fraction of pixels of each localisation map kept as the pseudo artifact mask", float),
    Option("classify", "review_k", 32, "number of samples in the review queue", int),
    # -- concept dissection and painting (artifix/concepts/dissect.py, artifix/concepts/segmenter.py)
    Option("dissect", "layers", None,
           "comma-separated layers to dissect, e.g. 'main.5,main.8' (default for the example: main.2,main.5,main.8,main.11)"),
    Option("dissect", "dissect_n", 500, "generated samples to dissect (samples 0..N-1 of --seed)", int),
    Option("dissect", "segmenter", None,
           "segmenter: a TorchScript file mapping float images [0,1] NCHW to class logits, or a SceneSegmenter state dict; "
           "default: the bundled scene segmenter"),
    Option("dissect", "segmenter_classes", None,
           "comma-separated class names of --segmenter, one per logit channel (default: from <segmenter>.json)"),
    Option("dissect", "iou_min", 0.05, "a unit is interpretable when its best concept's IoU exceeds this", float),
    Option("dissect", "concepts", None,
           "comma-separated concepts for the top-unit tables and the causal check (default: tree,building when the segmenter knows them)"),
    Option("dissect", "ace_layer", None, "layer of the causal check (default: --layer, else main.5 for the example, else the last of --layers)"),
    Option("dissect", "ace_units", 20, "units of a concept ablated in the causal check (and as many random units as control)", int),
    Option("dissect", "ace_n", 200, "samples for the causal check (0 = skip it)", int),
    Option("dissect", "concept", None, "paint: the concept whose top units are added or removed"),
    Option("dissect", "units", None, "paint: comma-separated units to add or remove instead of a concept's top --ace-units"),
    Option("dissect", "region", None, "paint: the region 'x0,y0,x1,y1' in image pixels (default: the whole image)"),
    Option("dissect", "mode", "add", "paint: 'add' or 'remove'", choices=("add", "remove")),
    Option("dissect", "index", 0, "paint: index of the sample to paint", int),
    # -- release gate (artifix/gate/)
    Option("gate", "criteria", None,
           "gate criteria: [[gate.criteria]] tables in artifix.toml, or a JSON list of objects on the command line", _json_list),
    Option("gate", "baseline", None, "baseline release checkpoint, sampled on the same seeds as the candidate (paired comparison)"),
    Option("gate", "baseline_report", None,
           "stored gate report of the baseline release (unpaired comparison; write one with --measure-only)"),
    Option("gate", "n", 1000, "samples per generator (the N in the metric names)", int),
    Option("gate", "confidence", 0.95, "required confidence of a criterion that does not set its own", float),
    Option("gate", "measure_only", False,
           "measure the candidate and write the report without judging it (to store as a baseline report)", _bool, flag=True),


    # -- set selection and layer comparison (artifix/units/selection.py, 'artifix select')
    Option("select", "select_layers", None, "layers to compare: 'all' (every ReLU layer) or a comma list (default: --layer)"),
    Option("select", "pool", 16, "candidate units per layer (the best by flagged-vs-clean AUC of the spatial max)", int),
    Option("select", "max_units", 10, "most units the set selection may choose per layer", int),
    Option("select", "pair_pool", 8, "when no single unit helps, every pair of this many best candidates is tried", int),
    Option("select", "select_weight", 1.0, "weight of the clean samples' mean pixel change against the flagged samples' artifact drop", float),
    Option("select", "select_check", 0.5, "share of the flagged and clean samples held out: candidates are chosen on the rest, "
           "each step is kept only if it helps on these (0 = test on the chosen samples, optimistic)", float),
    Option("select", "select_flagged", 40, "flagged (and as many clean) samples the selection evaluates (0 = all)", int),
    Option("select", "high_q", 0, "per-unit high-activation score: top-q samples per unit (0 = off; 'artifix score' and 'select')", int),
    Option("select", "unit_set", None, "repair: remove the unit set (and use the layer) that 'artifix select' wrote to this unit_set.json"),
    # -- blind A/B preference study (artifix/review/ab.py, 'artifix ab')
    Option("ab", "manifest", None, "the repair's manifest.json (its edits and random-unit control)"),
    Option("ab", "study", "artifix-ab", "the A/B study folder a reviewer sees"),
    Option("ab", "ab_key", None, "the study's key file (default: <study>-key.json next to the folder)"),
    Option("ab", "ab_n", 40, "before/after pairs of the repair", int),
    Option("ab", "ab_control_n", 20, "before/after pairs of the random-unit control, mixed in blind", int),
    Option("ab", "ab_pool", 1000, "samples from which each edit's high-activation pairs are drawn", int),
    Option("ab", "ab_seed", 0, "seed of the pair order and sides", int),

    # -- dashboard (dashboard/app.py, started by 'artifix dashboard')
    Option("dashboard", "host", "127.0.0.1", "address the dashboard binds to (localhost only by default; 0.0.0.0 exposes it)"),
    Option("dashboard", "port", 8501, "port of the dashboard", int),
    Option("dashboard", "pool", 256, "samples (from --start) the review queue chooses from", int),
    Option("dashboard", "page_size", 12, "samples shown at once in the review grid", int),
    Option("dashboard", "preview_n", 6, "flagged and clean samples in the live before/after ablation preview", int),
    Option("dashboard", "trust_labels", 10, "flagged and clean samples each below which a unit ranking carries a caution", int),
    Option("dashboard", "canvas", "drawable-canvas", "region painter: 'drawable-canvas' (streamlit-drawable-canvas) or 'box' (sliders)",
           choices=("drawable-canvas", "box")),
)

_BY_KEY: dict[tuple[str, str], Option] = {(o.section, o.name): o for o in OPTIONS}


def option(section: str, name: str) -> Option:
    """The option `section.name`; KeyError if it is not in the table."""
    return _BY_KEY[(section, name)]


def get(section: str, name: str) -> Any:
    """The default value of `section.name`."""
    return _BY_KEY[(section, name)].default


def section(section: str) -> dict[str, Any]:
    """All defaults of one section as a dict."""
    return {o.name: o.default for o in OPTIONS if o.section == section}
