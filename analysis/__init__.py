"""Analysis: results loading, metrics, figures and the peering on/off report.

Public entry points: `load_runs` (results -> tidy DataFrames), the metric functions in
`analysis.metrics`, `analysis.figures.make_figures`, `analysis.report.write_report` and
`summary_table` (the short on/off table the experiment runner prints). Importing this
package does not import matplotlib.
"""

from analysis.load import LoadError, Runs, load_runs
from analysis.report import summary_table

__all__ = ["LoadError", "Runs", "load_runs", "summary_table"]
