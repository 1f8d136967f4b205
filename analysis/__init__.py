"""Analysis: results loading, metrics, figures and the peering on/off report."""
