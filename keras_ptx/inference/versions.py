"""The version a ``--model`` path names in an export base (``<base>/<version>/``, the layout TF
Serving and OpenVINO Model Server read)."""
from __future__ import annotations

import os

from keras_ptx.fileio import check_openable, exists, join


def model_version(path, holding: str) -> str | None:
    """The ``--model`` ``path`` if it holds the file ``holding``, else its highest integer
    version holding it (a local base), else None; a URL this TensorFlow cannot open is refused
    naming --model."""
    path = str(path)
    check_openable(path, "--model")
    if exists(join(path, holding)):
        return path
    try:
        versions = sorted((int(name) for name in os.listdir(path) if name.isdigit()), reverse=True)
    except OSError:
        return None
    return next((join(path, str(version)) for version in versions
                 if exists(join(path, str(version), holding))), None)
