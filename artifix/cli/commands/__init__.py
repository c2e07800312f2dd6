"""Command handlers: thin glue between the CLI registry and the library stages.

Each module registers its handlers with `registry.command` when imported; they are imported here in the order
`artifix --help` lists them: `sampling` (sample, layers), `review` (flags, score, demo, classify), `repairing`
(metrics, repair), `dissection` (dissect, paint), `ops` (gate, stats, dashboard) and `natural` (select, ab). `common` holds what the
handlers share: loading the generator, the layer, the label store's run, the classifier.
"""

from . import sampling, review, repairing, dissection, ops, natural  # noqa: F401  (importing registers the handlers, in this order)
