"""Explore learned routing: a model at one point of training as tidy tables and one figure,
a second one for a difference, and the widgets of notebooks/07_explore_routing.ipynb.

* `snapshots.py`: `Source`, what can be opened: a run directory (its initialisation at step
  0, each kept checkpoint, its final model) or one weights file (our `ckpt_*.pt`, an upstream
  `final_model.pt`, a `.ptz`); `load_snapshot` (through `golf_core.loading.load_model`);
  `snapshot_tables`: `golf_core.analysis.routing_tables` (skip weights, resid_mix, lanes,
  embeddings, params and any extra table a family adds) plus `quant_error`, the int-N error
  after each virtual layer (`golf_core.quant.recurrence_error`, any family: its layer
  schedule or PR #1204's `v2p`); `difference` / `changes`: both values and a - b on matched
  rows, the largest first (a ratio over a ~0 reference, `is_ratio` above RATIO_LIMIT, is
  not ranked).
* `figure.py`: `snapshot_figure(tables, other)`, every table as one panel (B dashed or
  hollow, the lane matrix as A - B; a table it does not know gets a generic panel).
* `widgets.py`: `Explorer`, ipywidgets pickers (run or file, family, step; a second run or
  file and step; B's "no second snapshot" is the option NO_COMPARE) that redraw the figure
  and the tables; `Explorer.from_parameters` loads the notebook's default selection (a bad
  parameter raises ExploreError naming it).
"""

from golf_core.explore.figure import panel_keys, snapshot_figure
from golf_core.explore.snapshots import (
    FAMILY_LABELS,
    FINAL,
    RATIO_LIMIT,
    ROW_KEYS,
    ExploreError,
    Snapshot,
    Source,
    changes,
    difference,
    error_batch,
    file_source,
    is_ratio,
    list_sources,
    load_snapshot,
    quant_error_table,
    resolve_source,
    run_source,
    snapshot_tables,
)
from golf_core.explore.widgets import NO_COMPARE, Explorer

__all__ = [
    "FAMILY_LABELS", "FINAL", "NO_COMPARE", "RATIO_LIMIT", "ROW_KEYS", "ExploreError",
    "Explorer", "Snapshot", "Source", "changes", "difference", "error_batch", "file_source",
    "is_ratio", "list_sources", "load_snapshot", "panel_keys", "quant_error_table",
    "resolve_source", "run_source", "snapshot_figure", "snapshot_tables",
]  # fmt: skip
