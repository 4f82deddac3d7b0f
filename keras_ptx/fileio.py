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
import errno
import fcntl
import glob
import json
import os
import re
import shutil
import socket
import sys
import tempfile
import time
import urllib.parse
import uuid
from pathlib import Path

from keras_ptx.errors import UserError


# The temporary files of killed writes in a folder (a glob pattern; see temporary_name).
TEMPORARY_GLOB = ".*.tmp-*"
# The name of a folder being written before its rename (see staging_folder):
# .<name>.partial-<host>-<pid>-<8 hex digits>, the host and process that write it.
PARTIAL = ".partial-"
STAGED_NAME = re.compile(r"\.(?P<name>.+)\.partial-(?P<host>[\w.-]+)-(?P<pid>\d+)-[0-9a-f]{8}")
# The staging folders of exports from before STAGED_NAME (no host, no process): a killed
# export's once older than LEGACY_STAGED_AGE seconds.
LEGACY_STAGED_NAME = re.compile(r"\.\d+\.partial-[0-9a-f]{8}")
LEGACY_STAGED_AGE = 3600
# A set of outputs being moved in (see replaced_together): the journal names its staging
# folder (first line) and the names it no longer holds (a line each); the lock file makes one
# process at a time recover or move in a set.
SET_JOURNAL = ".outputs.commit"
SET_LOCK = ".outputs.lock"
SET_STAGING = "outputs"
# The errors of writes that hold no file name (a full disk, a folder made read-only).
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG, errno.EACCES,
                          errno.EPERM})
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
    """Refuse, before anything is written, an output ``path`` given as ``option`` when:
    this TensorFlow cannot open its URL scheme; it is, lies inside or holds one of ``inputs``
    (option -> a path or several); or, on a local disk (``file://`` URLs included), its folder
    cannot be created or written."""
    check_openable(path, option)
    for name, value in (inputs or {}).items():
        for source in [value] if isinstance(value, (str, os.PathLike)) else value or ():
            relation = _relation(path, source)
            if relation:
                raise UserError(f"{option} {path}: {relation} {name} {source}, which this "
                                f"command reads; choose another {option}")
    if not is_url(_local(path)):
        check_writable(path, option)


def _relation(out, source) -> str | None:
    """How ``out`` overlaps ``source``: "is", "is inside", "holds", or None."""
    if is_url(_local(out)) != is_url(_local(source)):
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
    path = _local(path)
    return path.rstrip("/") if is_url(path) else os.path.realpath(path)


def _local(path) -> str:
    """``path`` as a string, a ``file://`` URL as the local path TensorFlow opens for it (its
    host ignored)."""
    path = str(path)
    return urllib.parse.urlsplit(path).path or "/" if path.startswith("file://") else path


def check_writable(path, option: str) -> None:
    """UserError unless the local folder ``path`` (or ``file://`` URL) exists or can be
    created, and takes new files: its nearest existing folder is probed with an unnamed
    temporary file, which no reader sees (permissions, a read-only disk and immutable folders
    all refuse it)."""
    wanted = folder = os.path.abspath(_local(path))
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
    """Failures inside the block as a UserError with the operating system's reason: an
    OSError naming its file (a file that vanished, a folder made read-only while a command
    runs), a write error naming none (:data:`WRITE_ERRNOS`: a disk that fills up) as one of
    ``option`` ``path``, and TensorFlow's PermissionDeniedError."""
    try:
        yield
    except OSError as exc:
        if not exc.filename and exc.errno not in WRITE_ERRNOS:
            raise
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
    JSON, or nested too deeply to read."""
    if not exists(path):
        return None
    try:
        return json.loads(read_bytes(path))
    except RecursionError:
        raise ValueError("nested too deeply") from None


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
    sibling on a local disk named with this host and process (:data:`STAGED_NAME`;
    :func:`remove_stale_partials` deletes it once the process is gone), a local temporary
    folder for a URL."""
    if is_url(path):
        return tempfile.mkdtemp(prefix=".staging-")
    return join(os.path.dirname(os.path.abspath(path)), staged_name(os.path.basename(path)))


def staged_name(name: str, pid: int | None = None) -> str:
    """The name (:data:`STAGED_NAME`) of a new staging folder for ``name``, written by process
    ``pid`` of this host (default: this process)."""
    pid = os.getpid() if pid is None else pid
    return f".{name}{PARTIAL}{_host()}-{pid}-{uuid.uuid4().hex[:8]}"


def _host() -> str:
    """This machine's name as :data:`STAGED_NAME` holds it."""
    return re.sub(r"[^\w.-]", "_", socket.gethostname()) or "_"


def remove_stale_partials(folder) -> None:
    """Delete what killed writers left in the local ``folder``: the staging folders
    (:data:`STAGED_NAME`) of this host's processes that are no longer running, and those of
    exports from before (:data:`LEGACY_STAGED_NAME`) once older than an hour. Other hosts'
    (a shared disk) and any other name are kept."""
    if is_url(folder) or not os.path.isdir(folder):
        return
    for entry in os.scandir(folder):
        if entry.is_dir(follow_symlinks=False) and _stale(entry):
            shutil.rmtree(entry.path, ignore_errors=True)


def _stale(entry: os.DirEntry) -> bool:
    staged = STAGED_NAME.fullmatch(entry.name)
    if staged:
        return staged["host"] == _host() and not _running(int(staged["pid"]))
    return bool(LEGACY_STAGED_NAME.fullmatch(entry.name)) and \
        time.time() - entry.stat(follow_symlinks=False).st_mtime > LEGACY_STAGED_AGE


def _running(pid: int) -> bool:
    """Whether process ``pid`` of this host is running."""
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError, ValueError):     # none, or no process id
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
    ``names``); on a clean exit they replace the set of ``names`` in ``folder`` as one (a
    folder replaced whole, the names not written deleted), on error none is. Locally a journal
    names the staged set before the first rename, so that a kill while moving it in is
    finished by the next call for ``folder`` (:func:`recover_set`), which also deletes what
    killed writers left: staged sets and the temporary files of ``names``; one process at a
    time recovers or moves in (an flock of :data:`SET_LOCK`). To a URL each file is uploaded
    whole, one by one, and nothing is deleted."""
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
    os.makedirs(folder, exist_ok=True)
    recover_set(folder, names)
    staged = staging_folder(join(folder, SET_STAGING))
    os.mkdir(staged)
    try:
        yield staged
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    _flush_tree(staged)
    dropped = [name for name in names if name not in os.listdir(staged)]
    with _set_lock(folder):
        write_atomic(join(folder, SET_JOURNAL), "\n".join([os.path.basename(staged), *dropped]))
        _move_in(folder, staged, dropped)


def recover_set(folder, names=()) -> None:
    """Finish moving in the set of :func:`replaced_together` that a kill interrupted; delete
    killed writers' staged sets and the temporary files of ``names`` and of the journal in the
    local ``folder``."""
    if is_url(folder) or not os.path.isdir(folder):
        return
    with _set_lock(folder):
        journal = join(folder, SET_JOURNAL)
        if os.path.exists(journal):
            staged, *dropped = Path(journal).read_text(errors="replace").split("\n")
            named = STAGED_NAME.fullmatch(staged)
            if named and named["name"] == SET_STAGING and os.path.isdir(join(folder, staged)):
                _move_in(folder, join(folder, staged), dropped)
            else:
                os.remove(journal)
        remove_stale_partials(folder)
        for name in (*names, SET_JOURNAL):
            for leftover in glob.glob(join(glob.escape(str(folder)),
                                           f".{glob.escape(name)}.tmp-*")):
                os.remove(leftover)


@contextlib.contextmanager
def _set_lock(folder):
    """Hold the local ``folder``'s :data:`SET_LOCK` (an flock) while the block runs."""
    fd = os.open(join(folder, SET_LOCK), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _move_in(folder, staged: str, dropped=()) -> None:
    """Rename every entry of ``staged`` over its namesake in ``folder`` (an old folder moved
    into ``staged`` first) and move the ``dropped`` names of ``folder`` into ``staged``, then
    delete ``staged`` and the journal: repeatable after a kill."""
    for name in sorted(os.listdir(staged)):
        new, target = join(staged, name), join(folder, name)
        if name.startswith("."):
            continue                            # a folder already replaced
        if os.path.isdir(new) and os.path.isdir(target) and not os.path.islink(target):
            os.rename(target, join(staged, f".replaced-{name}"))
        os.replace(new, target)
    for name in dropped:
        if _plain_name(name) and os.path.lexists(join(folder, name)):
            os.rename(join(folder, name), join(staged, f".replaced-{name}"))
    _flush(str(folder))
    shutil.rmtree(staged)
    os.remove(join(folder, SET_JOURNAL))


def _plain_name(name: str) -> bool:
    """Whether ``name`` names an entry of a folder (not itself, its parent, or deeper)."""
    return bool(name) and name not in (".", "..") and "/" not in name and "\0" not in name


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
