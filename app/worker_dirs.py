"""A directory the worker processes of one `serve` run share, named to them by an environment
variable: `serve` makes it before the workers start and removes it after they are gone, so an
instance never sees an earlier run's files (app/metrics.py, app/security.py)."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator


@contextlib.contextmanager
def shared_directory(variable: str, prefix: str) -> Iterator[str]:
    """A new, empty directory under $TMPDIR, in `variable` for the processes started inside;
    the variable restored and the directory removed afterwards."""
    path = tempfile.mkdtemp(prefix=prefix)
    previous = os.environ.get(variable)
    os.environ[variable] = path
    try:
        yield path
    finally:
        if previous is None:
            del os.environ[variable]
        else:
            os.environ[variable] = previous
        shutil.rmtree(path, ignore_errors=True)
