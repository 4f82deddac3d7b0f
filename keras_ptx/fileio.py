"""Writing files so that a reader never sees half of one: write beside, then rename over.

Local paths use the operating system (no TensorFlow import, so the data tools stay light);
URLs (``gs://``, ``ram://``, ...) go through ``tf.io.gfile``, where a rename is as atomic as
the filesystem allows. Paths are kept as strings (``pathlib`` would fold ``gs://b`` into
``gs:/b``) and joined with :func:`join`; the readers here accept both kinds. Temporary names
are hidden (a leading dot: readers that skip dotfiles, like the DICOM finder, never take a
killed write's leftover for a file) and hold ``.tmp-``.
On a local disk each new file (and a published folder's every file and folder) is flushed to
the disk before the rename, and the folder holding it after: a power cut or a kernel crash,
not only a killed process, leaves the old file or the new one, never an empty or torn one.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path

from keras_ptx.errors import UserError


# The temporary files of killed writes in a folder (a glob pattern; see temporary_name).
TEMPORARY_GLOB = ".*.tmp-*"
# What adds a filesystem scheme to TensorFlow, for the message refusing one it lacks.
SCHEME_PLUGINS = {"s3": "pip install tensorflow-io", "az": "pip install tensorflow-io",
                  "hdfs": "pip install tensorflow-io, and a Hadoop client",
                  "http": "pip install tensorflow-io", "https": "pip install tensorflow-io"}


def is_url(path) -> bool:
    """Whether ``path`` names a filesystem by scheme (``gs://bucket/x``) rather than a local path."""
    return "://" in str(path)


def check_openable(path, option: str) -> None:
    """UserError for a URL whose scheme this TensorFlow has no filesystem for (asked without
    touching the URL), naming the scheme and what would add it."""
    if not is_url(path):
        return
    from keras_ptx.tf_setup import tf

    scheme = str(path).split("://", 1)[0]
    if scheme not in tf.io.gfile.get_registered_schemes():
        hint = SCHEME_PLUGINS.get(scheme.lower())
        raise UserError(f"{option} {path}: this TensorFlow cannot open {scheme}:// URLs"
                        + (f" ({hint})" if hint else ""))


def join(*parts) -> str:
    """``os.path.join`` of ``parts`` as strings: keeps a URL's ``scheme://``."""
    return os.path.join(*(os.fspath(part) for part in parts))


def _gfile():
    from keras_ptx.tf_setup import tf

    return tf.io.gfile


def exists(path) -> bool:
    return _gfile().exists(str(path)) if is_url(path) else os.path.exists(path)


def read_bytes(path) -> bytes:
    if not is_url(path):
        return Path(path).read_bytes()
    with _gfile().GFile(str(path), "rb") as f:
        return f.read()


def read_text(path) -> str:
    return read_bytes(path).decode()


def read_json(path):
    """The JSON value in ``path``, None when there is no such file; ValueError when it is not
    JSON."""
    return json.loads(read_bytes(path)) if exists(path) else None


@contextlib.contextmanager
def local_copy(path):
    """A local file name holding ``path``'s content (``path`` itself when it is local), for
    readers that open files by name (h5py, ``numpy.load``)."""
    if not is_url(path):
        yield str(path)
        return
    folder = tempfile.mkdtemp()
    local = os.path.join(folder, os.path.basename(str(path).rstrip("/")))
    try:
        _gfile().copy(str(path), local)
        yield local
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def staging_folder(path) -> str:
    """Where to write a folder that :func:`publish_folder` then moves to ``path``: a hidden
    sibling on a local disk, a local temporary folder for a URL."""
    if is_url(path):
        return tempfile.mkdtemp(prefix=".staging-")
    return join(os.path.dirname(os.path.abspath(path)),
                f".{os.path.basename(path)}.partial-{uuid.uuid4().hex[:8]}")


def publish_folder(staged: str, path, last: str | None = None) -> None:
    """Move the local folder ``staged`` to ``path``: one rename on a local disk. To a URL,
    where a folder rename is not atomic (object stores) or moves no files (ram://), it is
    uploaded file by file, the top-level file ``last`` after all others, so that a reader
    waiting for that file sees the rest first."""
    if not is_url(path):
        for folder, _, names in os.walk(staged):
            for name in names:
                _flush(os.path.join(folder, name))
            _flush(folder)
        os.rename(staged, path)
        _flush(os.path.dirname(os.path.abspath(path)))
        return
    files = [os.path.relpath(os.path.join(folder, name), staged)
             for folder, _, names in os.walk(staged) for name in names]
    gfile = _gfile()
    for name in sorted(files, key=lambda name: name == last):
        target = join(path, name)
        gfile.makedirs(os.path.dirname(target))
        gfile.copy(os.path.join(staged, name), target)
    shutil.rmtree(staged)


def write_atomic(path, data: bytes | str) -> None:
    """Replace ``path`` with ``data`` (text is written as UTF-8) in one rename."""
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(data.encode() if isinstance(data, str) else data)


@contextlib.contextmanager
def atomic_path(path):
    """A local temporary file name to write ``path``'s content to; on a clean exit it replaces
    ``path`` (on error it is removed and ``path`` is untouched). For writers that need a file
    name of their own, such as Keras' ``save_weights`` or ``numpy.savez``: the temporary name
    keeps ``path``'s suffix, which such writers read the format from."""
    path = str(path)
    folder = tempfile.mkdtemp() if is_url(path) else os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(folder, temporary_name(path))
    try:
        yield tmp
        if is_url(path):
            _upload(tmp, path)
        else:
            replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        if is_url(path):
            shutil.rmtree(folder, ignore_errors=True)


def temporary_name(path) -> str:
    """A fresh file name (not a file: the writer creates it) to write ``path``'s content under
    before the rename: hidden, with ``.tmp-`` (:data:`TEMPORARY_GLOB` finds leftovers) and
    ``path``'s suffixes, which some writers read the format from."""
    name = os.path.basename(str(path).rstrip("/"))
    return f".{name}.tmp-{uuid.uuid4().hex[:8]}{''.join(Path(name).suffixes)}"


def replace(written, path) -> None:
    """Rename the complete file ``written`` over ``path`` (beside it, or both on one URL's
    filesystem); locally, with the file on the disk before the rename and the rename after."""
    written, path = str(written), str(path)
    if is_url(path):
        _gfile().rename(written, path, overwrite=True)
        return
    _flush(written)
    os.replace(written, path)
    _flush(os.path.dirname(os.path.abspath(path)))


def _flush(path: str) -> None:
    """Write ``path``'s (a file's or a folder's) data from the page cache to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _upload(local: str, url: str) -> None:
    gfile = _gfile()
    staged = join(os.path.dirname(url), temporary_name(url))
    gfile.copy(local, staged, overwrite=True)
    replace(staged, url)

