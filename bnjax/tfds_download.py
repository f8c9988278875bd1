"""Downloading a tfds dataset: ``builder.download_and_prepare()`` with a one-line error
when the network cannot be reached (a machine without internet), instead of the
traceback of requests' retries."""

# Exception types (by name: requests, urllib3, urllib and tfds each have their own) that
# mean the download host could not be reached, as opposed to a disk or format problem.
_NETWORK_ERRORS = (
  'ConnectionError',
  'ConnectTimeout',
  'ReadTimeout',
  'Timeout',
  'ProxyError',
  'MaxRetryError',
  'NewConnectionError',
  'NameResolutionError',
  'URLError',
  'SSLError',
  'gaierror',
  'DownloadError',
)


def _network_failure(e: BaseException) -> BaseException | None:
  """The first exception in ``e``'s chain that says the network could not be reached."""
  seen = set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    if any(c.__name__ in _NETWORK_ERRORS for c in type(e).__mro__):
      return e
    e = e.__cause__ or e.__context__
  return None


def download_and_prepare(builder, name: str, data_dir: str | None) -> None:
  """builder.download_and_prepare(), with a one-line DataError when the download fails."""
  try:
    builder.download_and_prepare()
  except Exception as e:  # pylint: disable=broad-except
    cause = _network_failure(e)
    if cause is None:
      raise
    # pylint: disable-next=g-import-not-at-top (image_sources imports us)
    from bnjax.image_sources import DataError

    reason = (str(cause).splitlines() or [''])[0][:160]
    raise DataError(
      f'downloading tfds dataset {name!r} failed: the network is unreachable from here '
      f'({type(cause).__name__}: {reason}); on a machine with internet run '
      f'`python -m bnjax.data prepare {name} --data_dir=DIR`, copy DIR to this machine and '
      'point TFDS_DATA_DIR (or --config.data.tfds_data_dir) at it'
    ) from e
