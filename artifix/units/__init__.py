"""Per-unit evidence: activation statistics (stats), the IoU@IQR tally, unit scoring, selection of units to remove, the highest-activating samples and the cautions a ranking carries."""
