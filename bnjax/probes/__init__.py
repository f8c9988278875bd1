"""bnjax.probes: exact Hessian and gradient-Lipschitz probes for any JAX model.

The contract: every probe takes ``loss_fn(params) -> scalar`` (batch, BN state and RNG
closed over) and a params pytree, plus a PRNG key where it samples. Probes are pure and
jit-compatible; they never change params, optimizer state or BN statistics; they return
arrays or small frozen dataclasses of arrays (pytrees). They give the same answer
whether the batch behind ``loss_fn`` sits on one device or is sharded over a mesh.
Call them inside ``jax.jit`` with params and batch as arguments of the jitted function.
Matmuls run at precision 'highest' unless the caller passes ``precision=``.

This package imports jax, numpy and matfree only, never the rest of bnjax.
"""

from bnjax.probes._common import named_blocks, restrict
from bnjax.probes.convolutions import convolutions_for_loops
from bnjax.probes.dataset import dataset_loss
from bnjax.probes.activations import (
  ActivationCurvature,
  ActivationStatistics,
  BatchNormTheorems,
  activation_curvature,
  activation_statistics,
  batchnorm_theorems,
)
from bnjax.probes.estimators import (
  DiagonalEstimate,
  TraceEstimate,
  hessian_diagonal,
  hessian_trace,
  hessian_trace_hutchpp,
)
from bnjax.probes.lanczos import (
  Eigenpairs,
  SpectralDensity,
  smooth_density,
  spectral_density,
  top_eigenvalues,
)
from bnjax.probes.operators import (
  SplitLoss,
  directional_curvature,
  ggn_loss,
  gnvp,
  hvp,
  hvp_operator,
)
from bnjax.probes.fisher import PerExampleLoss
from bnjax.probes.ics import ICS, ics
from bnjax.probes.landscape import Landscape, gradient_landscape
from bnjax.probes.sharpness import Sharpness, adaptive_sharpness, epsilon_sharpness
from bnjax.probes.surface import (
  Surface,
  eigen_directions,
  gradient_direction,
  interpolation_direction,
  loss_surface,
  normalize_direction,
  random_directions,
)

__all__ = [
  'hvp',
  'hvp_operator',
  'gnvp',
  'directional_curvature',
  'top_eigenvalues',
  'hessian_trace',
  'hessian_trace_hutchpp',
  'hessian_diagonal',
  'DiagonalEstimate',
  'dataset_loss',
  'ggn_loss',
  'SplitLoss',
  'PerExampleLoss',
  'convolutions_for_loops',
  'spectral_density',
  'smooth_density',
  'gradient_landscape',
  'ics',
  'restrict',
  'named_blocks',
  'activation_curvature',
  'batchnorm_theorems',
  'activation_statistics',
  'Eigenpairs',
  'TraceEstimate',
  'SpectralDensity',
  'Landscape',
  'ICS',
  'ActivationCurvature',
  'BatchNormTheorems',
  'ActivationStatistics',
  'loss_surface',
  'random_directions',
  'eigen_directions',
  'gradient_direction',
  'interpolation_direction',
  'normalize_direction',
  'Surface',
  'adaptive_sharpness',
  'epsilon_sharpness',
  'Sharpness',
]
