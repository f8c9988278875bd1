"""Programs as traced and lowered, kept across runs so a rerun skips tracing them.

JAX's persistent compilation cache keeps what XLA compiled, keyed by the lowered module,
so every run still traces and lowers its train chunk to find its entry: for the reduced
VGG with the paper's probes, 6 s of tracing and 1.5 s of lowering against 7-9 s of
reading the compiled program back. ``jit`` keeps the lowered module too (``jax.export``,
serialised StableHLO) in ``<compilation cache dir>/SUBDIR``. A later run with the same key
deserialises it (milliseconds) instead of tracing, and jits its call, which the persistent
cache then serves. The first run compiles that same call, so both share one entry.

The key is everything tracing reads: bnjax's source files, the versions of the libraries
it traces through, JAX's options (but its cache settings), the backend, the devices and
processes, ``BNJAX_ASSUME_BACKEND`` and ``XLA_FLAGS``, the caller's ``key`` (the config
without its seed: the program takes the seed as an argument, see
``scheduled_probes.registry``), the arguments' tree, shapes and dtypes, and the shardings
the program takes them in. Editing any bnjax file therefore traces anew. Delete the
subdirectory to drop every entry; ``config.compilation_cache='off'`` turns both caches off.

Why our own: JAX caches compiled programs, not traced ones, and ``jax.export`` serialises
a program but leaves where to keep it, and when it is stale, to the caller.
"""

import functools
import hashlib
import importlib.metadata
import logging
import os
import pathlib
import pickle
from typing import Any, Callable

import jax
from etils import epath

SUBDIR = 'bnjax-exported'
LIBRARIES = ('jax', 'jaxlib', 'flax', 'optax', 'matfree', 'ml_collections', 'numpy')


@functools.cache
def _code_key() -> str:
  """bnjax's source and the versions of the libraries it traces through."""
  digest = hashlib.sha256(source_digest(pathlib.Path(__file__).resolve().parent).encode())
  for library in LIBRARIES:
    try:
      digest.update(f'{library}=={importlib.metadata.version(library)}\0'.encode())
    except importlib.metadata.PackageNotFoundError:
      digest.update(f'{library} absent\0'.encode())
  return digest.hexdigest()


def _environment_key() -> str:
  """What every program's trace depends on besides its function's own key and arguments."""
  digest = hashlib.sha256(_code_key().encode())
  options = {k: v for k, v in jax.config.values.items() if 'cache' not in k}
  digest.update(repr(sorted(options.items(), key=lambda kv: kv[0])).encode())
  for var in ('BNJAX_ASSUME_BACKEND', 'XLA_FLAGS'):
    digest.update(f'{var}={os.environ.get(var)}\0'.encode())
  digest.update(repr((jax.default_backend(), jax.process_count(), jax.devices())).encode())
  return digest.hexdigest()


def source_digest(package: pathlib.Path) -> str:
  """sha256 of every .py file under ``package``, with its path."""
  digest = hashlib.sha256()
  for path in sorted(package.rglob('*.py')):
    digest.update(str(path.relative_to(package)).encode() + b'\0' + path.read_bytes() + b'\0')
  return digest.hexdigest()


def _broadcast(prefix: Any, tree: Any) -> list:
  """The leaves of ``prefix`` (e.g. shardings), one per leaf of ``tree`` it is a prefix of."""
  return jax.tree.leaves(jax.tree.map(lambda p, sub: jax.tree.map(lambda _: p, sub), prefix, tree))


def jit(
  fn: Callable,
  *,
  key: str,
  directory: str | os.PathLike | None,
  in_shardings: tuple,
  out_shardings: Any,
  donate_argnums: tuple[int, ...] = (),
  name: str | None = None,
) -> Callable:
  """``jax.jit(fn, ...)`` whose traced programs are kept in ``directory/SUBDIR``.

  ``key``: what the program depends on beyond bnjax's code and the arguments (e.g. the
  config's JSON without its seed). ``directory``: the compilation cache's (None: a plain
  ``jax.jit``). ``in_shardings`` / ``out_shardings``: as ``jax.jit``'s, prefixes of the
  arguments and results. A program that cannot be exported (say, a host callback) runs
  as a plain ``jax.jit``, with a warning. Only process 0 writes, as JAX's cache does.
  """
  how = dict(in_shardings=in_shardings, out_shardings=out_shardings, donate_argnums=donate_argnums)
  plain = jax.jit(fn, **how)
  if directory is None:
    return plain
  store = epath.Path(directory) / SUBDIR  # as JAX's cache: a local path or gs://
  name = name or getattr(fn, '__name__', 'program')
  programs = {}  # (treedef, shapes and dtypes) -> (out treedef, jitted call on leaves) or None

  def program_for(args, leaves, treedef):
    # Looked up at every call, so only what can change: the shardings are in_shardings'.
    signature = (treedef, tuple((x.shape, x.dtype) for x in leaves))
    if signature not in programs:
      # Read back, not traced, whatever shardings the arguments come in (a restored state).
      shardings = _broadcast(in_shardings, args)
      text = f'{_environment_key()}\0{key}\0{signature}\0{shardings}'
      path = store / f'{name}-{hashlib.sha256(text.encode()).hexdigest()}.pkl'
      entry = _load(path) or _export(plain, args, path, shardings, name)
      programs[signature] = entry and _jit_leaves(entry, args, shardings, name, how)
    return programs[signature]

  @functools.wraps(fn)
  def call(*args):
    leaves, treedef = jax.tree.flatten(args)
    program = program_for(args, leaves, treedef)
    if program is None:
      return plain(*args)
    out_tree, jitted = program
    return jax.tree.unflatten(out_tree, jitted(*leaves))

  return call


def _jit_leaves(entry: tuple, args: tuple, in_shardings: list, name: str, how: dict):
  """(out treedef, ``exported.call`` jitted on the leaves of ``args``) from ``entry`` (out
  treedef, Exported): ``in_shardings`` one per leaf, ``how``'s (``jax.jit``'s) output
  shardings and donation spread over the leaves."""
  out_tree, exported = entry

  def leaves_call(*leaves):
    return exported.call(*leaves)

  leaves_call.__name__ = leaves_call.__qualname__ = name  # names the compiled cache entry
  arg_of_leaf = [i for i, a in enumerate(args) for _ in jax.tree.leaves(a)]
  jitted = jax.jit(
    leaves_call,
    in_shardings=in_shardings,
    out_shardings=_broadcast(
      how['out_shardings'], jax.tree.unflatten(out_tree, [0] * out_tree.num_leaves)
    ),
    donate_argnums=tuple(j for j, i in enumerate(arg_of_leaf) if i in how['donate_argnums']),
  )
  return out_tree, jitted


def _load(path: epath.Path):
  """(out treedef, Exported) from ``path``; None if absent or unreadable."""
  if not path.exists():
    return None
  try:
    out_tree, serialized = pickle.loads(path.read_bytes())
    exported = jax.export.deserialize(bytearray(serialized))
  except Exception as e:  # pylint: disable=broad-except  # a torn or old entry: trace again
    logging.warning(
      'traced program %s unreadable (%s: %s); tracing again', path, type(e).__name__, e
    )
    return None
  logging.info('traced program read from %s: tracing skipped', path)
  return out_tree, exported


def _export(plain, args: tuple, path: epath.Path, in_shardings: list, name: str):
  """(out treedef, Exported): ``plain`` traced and lowered on ``args`` as a function of
  their leaves (``in_shardings``: one per leaf), written to ``path`` (process 0,
  atomically); None if it cannot be exported."""
  leaves, in_tree = jax.tree.flatten(args)
  out_tree = []

  def flat(*leaves):
    out = plain(*jax.tree.unflatten(in_tree, leaves))
    flat_out, tree = jax.tree.flatten(out)
    out_tree.append(tree)
    return flat_out

  specs = [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in leaves]
  try:
    exported = jax.export.export(jax.jit(flat, in_shardings=in_shardings))(*specs)
    serialized = exported.serialize()
  except Exception as e:  # pylint: disable=broad-except  # e.g. a host callback
    logging.warning(
      'program %s not exportable (%s: %s); traced on every run', name, type(e).__name__, e
    )
    return None
  if jax.process_index() == 0:
    try:
      path.parent.mkdir(parents=True, exist_ok=True)
      partial = path.parent / f'{path.name}.{os.getpid()}.tmp'
      partial.write_bytes(pickle.dumps((out_tree[0], bytes(serialized))))
      partial.replace(path)  # readers see the whole entry or none
      logging.info('traced program kept in %s', path)
    except OSError as e:
      logging.warning('traced program not kept (%s); traced again next run', e)
  return out_tree[0], exported
