"""bnjax: Santurkar et al. (2018) in JAX/Flax, with exact curvature probes.

``bnjax.probes`` imports nothing else from bnjax, so other projects can use it alone.
"""

__version__ = '0.1.0'
