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
import glob
import json
import os
import shutil
import sys
import tempfile
import uuid
from pathlib import Path

from keras_ptx.errors import UserError


# The temporary files of killed writes in a folder (a glob pattern; see temporary_name).
TEMPORARY_GLOB = ".*.tmp-*"
# In the name of a folder being written before its rename (see staging_folder).
PARTIAL = ".partial-"
# A set of outputs being moved in (see replaced_together): names its staging folder.
SET_JOURNAL = ".outputs.commit"
SET_STAGING = "outputs"
# What adds a filesystem scheme to TensorFlow, for the message refusing one it lacks.
SCHEME_PLUGINS = {"s3": "pip install tensorflow-io", "az": "pip install tensorflow-io",
                  "hdfs": "pip install tensorflow-io, and a Hadoop client",
                  "http": "pip install tensorflow-io", "https": "pip install tensorflow-io"}


def is_url(path) -> bool:
    """Whether ``path`` names a filesystem by scheme (``gs://bucket/x``) rather than a local path."""
    return "://" in str(path)


def check_openable(path, option: str | None = None) -> None:
    """UserError for a URL whose scheme this TensorFlow has no filesystem for (asked without
    touching the URL), naming the option, the scheme and what would add it."""
    if not is_url(path):
        return
    from keras_ptx.tf_setup import tf

    scheme = str(path).split("://", 1)[0]
    if scheme not in tf.io.gfile.get_registered_schemes():
        hint = SCHEME_PLUGINS.get(scheme.lower())
        raise UserError(f"{_named(path, option)}: this TensorFlow cannot open {scheme}:// URLs"
                        + (f" ({hint})" if hint else ""))


def check_output(path, option: str, inputs: dict | None = None) -> None:
    """Refuse, before anything is written, an output ``path`` (given as ``option``) that this
    TensorFlow cannot open, that is, lies inside or holds one of ``inputs`` (option -> a path
    or several), or, on a local disk, that cannot be created and written."""
    check_openable(path, option)
    for name, value in (inputs or {}).items():
        for source in [value] if isinstance(value, (str, os.PathLike)) else value or ():
            relation = _relation(path, source)
            if relation:
                raise UserError(f"{option} {path}: {relation} {name} {source}, which this "
                                f"command reads; choose another {option}")
    if not is_url(path):
        check_writable(path, option)


def _relation(out, source) -> str | None:
    """How ``out`` overlaps ``source``: "is", "is inside", "holds", or None."""
    if is_url(out) != is_url(source):
        return None
    out, source = _canonical(out), _canonical(source)
    if out == source:
        return "is"
    if out.startswith(source.rstrip("/") + "/"):
        return "is inside"
    if source.startswith(out.rstrip("/") + "/"):
        return "holds"
    return None


def same_path(a, b) -> bool:
    """Whether ``a`` and ``b`` name one file or folder (symbolic links followed)."""
    return _relation(a, b) == "is"


def _canonical(path) -> str:
    return str(path).rstrip("/") if is_url(path) else os.path.realpath(path)


def check_writable(path, option: str) -> None:
    """UserError unless the local folder ``path`` exists or can be created, and takes new
    files: its nearest existing folder is probed with an unnamed temporary file, which no
    reader sees (permissions, a read-only disk and immutable folders all refuse it)."""
    wanted = folder = os.path.abspath(path)
    while not os.path.lexists(folder):
        folder = os.path.dirname(folder)
    if not os.path.isdir(folder):
        raise UserError(f"{option} {path}: " + ("not a folder" if folder == wanted
                                                   else f"{folder} is not a folder"))
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise UserError(f"{option} {path}: cannot write in {folder} ({exc.strerror})") from None


@contextlib.contextmanager
def reported_writes(option: str, path):
    """Failures to write (an OSError, TensorFlow's PermissionDeniedError) inside the block as
    a UserError naming the file (else ``option`` and ``path``) and the operating system's
    reason: a disk that fills up or a folder made read-only while a command runs."""
    try:
        yield
    except OSError as exc:
        where = exc.filename or _named(path, option)
        raise UserError(f"{where}: {exc.strerror or exc}") from None
    except Exception as exc:
        tf = sys.modules.get("tensorflow")
        if tf is None or not isinstance(exc, tf.errors.PermissionDeniedError):
            raise
        raise UserError(f"{_named(path, option)}: {exc.message}") from None


def _named(path, option: str | None) -> str:
    return f"{option} {path}" if option else str(path)


def join(*parts) -> str:
    """``os.path.join`` of ``parts`` as strings: keeps a URL's ``scheme://``."""
    return os.path.join(*(os.fspath(part) for part in parts))


def _gfile():
    from keras_ptx.tf_setup import tf

    return tf.io.gfile


def exists(path) -> bool:
    if not is_url(path):
        return os.path.exists(path)
    check_openable(path)
    return _gfile().exists(str(path))


def read_bytes(path) -> bytes:
    if not is_url(path):
        return Path(path).read_bytes()
    check_openable(path)
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
    sibling on a local disk, named with this process's id (:func:`remove_stale_partials`
    deletes it once the process is gone), a local temporary folder for a URL."""
    if is_url(path):
        return tempfile.mkdtemp(prefix=".staging-")
    return join(os.path.dirname(os.path.abspath(path)),
                f".{os.path.basename(path)}{PARTIAL}{os.getpid()}-{uuid.uuid4().hex[:8]}")


def remove_stale_partials(folder) -> None:
    """Delete the staging folders (:func:`staging_folder`) in the local ``folder`` whose
    process is no longer running: what killed writers left."""
    if is_url(folder) or not os.path.isdir(folder):
        return
    for entry in os.scandir(folder):
        if entry.name.startswith(".") and PARTIAL in entry.name and \
                not _running(entry.name.rsplit(PARTIAL, 1)[1].split("-", 1)[0]):
            shutil.rmtree(entry.path, ignore_errors=True)


def _running(pid: str) -> bool:
    if not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:         # another user's process
        pass
    return True


def publish_folder(staged: str, path, last: str | None = None) -> None:
    """Move the local folder ``staged`` to ``path``: one rename on a local disk. To a URL,
    where a folder rename is not atomic (object stores) or moves no files (ram://), it is
    uploaded file by file, the top-level file ``last`` after all others, so that a reader
    waiting for that file sees the rest first."""
    if not is_url(path):
        _flush_tree(staged)
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


@contextlib.contextmanager
def replaced_together(folder, names):
    """A local folder to write outputs of ``folder`` into (files or folders, some of
    ``names``); on a clean exit they replace their namesakes in ``folder`` as one set (a
    folder replaced whole), on error none is. Locally a journal names the staged set before
    the first rename, so that a kill while moving it in is finished by the next call for
    ``folder`` (:func:`recover_set`), which also deletes what killed writers left: staged sets
    and the temporary files of ``names``. To a URL each file is uploaded whole, one by one."""
    if is_url(folder):
        staged = tempfile.mkdtemp(prefix=".staging-")
        try:
            yield staged
            for parent, _, files in os.walk(staged):
                for name in files:
                    target = join(folder, os.path.relpath(os.path.join(parent, name), staged))
                    _gfile().makedirs(os.path.dirname(target))
                    _upload(os.path.join(parent, name), target)
        finally:
            shutil.rmtree(staged, ignore_errors=True)
        return
    recover_set(folder, names)
    os.makedirs(folder, exist_ok=True)
    staged = staging_folder(join(folder, SET_STAGING))
    os.mkdir(staged)
    try:
        yield staged
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    _flush_tree(staged)
    write_atomic(join(folder, SET_JOURNAL), os.path.basename(staged))
    _move_in(folder, staged)


def recover_set(folder, names=()) -> None:
    """Finish moving in the set of :func:`replaced_together` that a kill interrupted; delete
    killed writers' staged sets and the temporary files of ``names`` in the local ``folder``."""
    if is_url(folder) or not os.path.isdir(folder):
        return
    journal = join(folder, SET_JOURNAL)
    if os.path.exists(journal):
        staged = Path(journal).read_text().strip()
        if staged.startswith(f".{SET_STAGING}{PARTIAL}") and "/" not in staged and \
                os.path.isdir(join(folder, staged)):
            _move_in(folder, join(folder, staged))
        else:
            os.remove(journal)
    remove_stale_partials(folder)
    for name in names:
        for leftover in glob.glob(join(glob.escape(str(folder)), f".{glob.escape(name)}.tmp-*")):
            os.remove(leftover)


def _move_in(folder, staged: str) -> None:
    """Rename every entry of ``staged`` over its namesake in ``folder`` (an old folder moved
    into ``staged`` first), then delete ``staged`` and the journal: repeatable after a kill."""
    for name in sorted(os.listdir(staged)):
        new, target = join(staged, name), join(folder, name)
        if name.startswith("."):
            continue                            # a folder already replaced
        if os.path.isdir(new) and os.path.isdir(target) and not os.path.islink(target):
            os.rename(target, join(staged, f".replaced-{name}"))
        os.replace(new, target)
    _flush(str(folder))
    shutil.rmtree(staged)
    os.remove(join(folder, SET_JOURNAL))


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


def _flush_tree(folder: str) -> None:
    """:func:`_flush` every file and folder below ``folder``, and ``folder``."""
    for parent, _, names in os.walk(folder):
        for name in names:
            _flush(os.path.join(parent, name))
        _flush(parent)


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


def utf8_text(data: bytes, path, kind: str, error: type[UserError] = UserError) -> str:
    """``data`` (the content of ``path``, a ``kind`` such as "config") decoded as UTF-8, a
    byte-order mark dropped; ``error`` naming the path, the byte and its line if it is not
    UTF-8 text."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = exc.object[:exc.start].count(b"\n") + 1
        raise error(f"{path}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} on line "
                    f"{line}); a {kind} must be saved as UTF-8") from None
