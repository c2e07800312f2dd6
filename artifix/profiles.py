"""Profiles: the generator-specific defaults, resolved once when a generator is opened.

A `Profile` says what artifix may assume about one family of generators: the layer to diagnose when
`--layer` is not given, the layers to dissect and the layer of the causal check, the segmenter for
concepts, the reference ("real") images that come with it, and a bundled review. The generic profile
assumes nothing: every such choice must then come from the user's flags. The bundled example is one profile
(`artifix.example.model.example_profile`); this registry is the only generic module that knows it. The library's
own defaults (`segmenter.load_segmenter()` without a path, `metrics.load_real(None)`) are those of
`default_profile()`, the profile of the generator artifix opens when none is given.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from .example.model import FACTORY as EXAMPLE_FACTORY, example_profile


@dataclass(frozen=True)
class BundledReview:
    """A recorded review that ships with a generator: flags, approvals and a classifier, valid for one (G, layer, seed)."""

    directory: Path
    fingerprint: str
    layer: str
    seed: int
    reviewer: str
    approved: tuple[tuple[int, str], ...]  # (unit, note)

    @property
    def flags_file(self) -> Path:
        """The review's flags (CSV)."""
        return self.directory / "flags.csv"

    @property
    def classifier_file(self) -> Path:
        """The classifier trained on the review's flags."""
        return self.directory / "classifier.pt"

    def fits(self, fingerprint: str, layer: str, seed: int) -> bool:
        """Whether this review was recorded for exactly this generator, layer and seed."""
        return (fingerprint, layer, int(seed)) == (self.fingerprint, self.layer, int(self.seed))


@dataclass(frozen=True)
class ReferenceImages:
    """Reference ("real") images that ship with a generator: how the metrics and provenance name them, and the images."""

    describe: Mapping[str, Any]  # the metrics' source description, e.g. {"kind": "scenes", "seed": 2} (plus "n")
    batches: Callable[[int], Iterator[Any]]  # n -> uint8 NHWC arrays holding the first n reference images, in order
    label: str  # the provenance kind, e.g. "bundled scenes"
    note: str = ""  # the provenance note: where the images come from


@dataclass(frozen=True)
class Profile:
    """Generator-specific defaults; the generic profile (`GENERIC`) has none."""

    name: str
    default_layer: str | None = None
    dissect_layers: tuple[str, ...] = ()
    ace_layer: str | None = None
    segmenter: Path | None = None  # the segmenter used when --segmenter is not given
    reference: ReferenceImages | None = None  # what the metrics compare to when --real is not given
    review: BundledReview | None = None

    @property
    def has_reference(self) -> bool:
        """Whether metrics may run without --real (on this profile's reference images)."""
        return self.reference is not None

    def to_json(self) -> dict[str, Any]:
        """A JSON-able summary (for manifests and reports)."""
        return {"name": self.name, "default_layer": self.default_layer, "dissect_layers": list(self.dissect_layers),
                "ace_layer": self.ace_layer, "segmenter": None if self.segmenter is None else str(self.segmenter),
                "has_reference": self.has_reference, "review": None if self.review is None else str(self.review.directory)}


GENERIC = Profile("generic")

# factory ("module:callable") -> builder; the spec's factory picks the profile
_REGISTRY: dict[str, Callable[[], Profile]] = {}


def register_profile(factory: str, builder: Callable[[], Profile]) -> None:
    """Make `builder()` the profile of generators built by `factory` ('module:callable')."""
    _REGISTRY[str(factory)] = builder


def profile_for(spec: Any) -> Profile:
    """The profile of a generator spec: a registered one for its factory, else the generic profile."""
    builder = _REGISTRY.get(str(getattr(spec, "generator", "") or ""))
    return builder() if builder is not None else GENERIC


def default_profile() -> Profile:
    """The profile of the generator artifix opens when none is given (the bundled example): the library's defaults."""
    return _REGISTRY[DEFAULT_FACTORY]()


def _example() -> Profile:
    d = example_profile()
    r = d.pop("review", None)
    review = None if r is None else BundledReview(Path(r["directory"]), str(r["fingerprint"]), str(r["layer"]), int(r.get("seed", 0)),
                                                  str(r["reviewer"]), tuple((int(a["unit"]), str(a.get("note", ""))) for a in r["approved"]))
    ref = d.pop("reference", None)
    return Profile(d.pop("name"), review=review, reference=None if ref is None else ReferenceImages(**ref), **d)


DEFAULT_FACTORY = EXAMPLE_FACTORY  # `generator.load_generator()` without a spec opens the bundled example
register_profile(EXAMPLE_FACTORY, _example)
