"""Moved to ``bnjax.scheduled_probes`` (the training-time probe schedule).

A temporary alias so that imports of ``bnjax.probing`` (tests/test_train.py) keep
working; remove it once they import ``bnjax.scheduled_probes``.
"""

from bnjax.scheduled_probes import PROBES, Probe, build, check  # noqa: F401
