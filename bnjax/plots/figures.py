"""Every figure by name: the paper's (``paper.py``) and beyond it (``beyond.py``).

Each is a function of groups of runs (``runs.group_runs``: one configuration at its
seeds) -> matplotlib Figure, raising ``NoData`` when the runs lack what it needs.
"""

from bnjax.plots.analysis import ANALYSIS
from bnjax.plots.beyond import BEYOND
from bnjax.plots.panels import NoData
from bnjax.plots.paper import PAPER

FIGURES = {**PAPER, **BEYOND, **ANALYSIS}

__all__ = ['BEYOND', 'FIGURES', 'NoData', 'PAPER']
