"""keras_ptx.fileio: a file is replaced whole or not at all, locally and on a tf.io.gfile URL,
and on a local disk it is on the disk before the rename is."""
import errno
import os

import numpy as np
import pytest

from keras_ptx.errors import UserError
from keras_ptx.fileio import (TEMPORARY_GLOB, atomic_path, check_output, is_url, join,
                              publish_folder, read_json, reported_writes, staging_folder,
                              temporary_name, write_atomic)
from keras_ptx.tf_setup import tf


def test_write_atomic_replaces_the_file_and_leaves_nothing_else(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text("old")
    write_atomic(path, "new\n")
    assert path.read_text() == "new\n"
    write_atomic(path, b"\x00bytes")
    assert path.read_bytes() == b"\x00bytes"
    assert os.listdir(tmp_path) == ["metrics.json"]


@pytest.fixture
def disk_events(monkeypatch):
    """Every fsync (of the path its descriptor names) and rename, in order."""
    events = []
    fsync, replace, rename = os.fsync, os.replace, os.rename

    def synced(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        fsync(fd)

    monkeypatch.setattr(os, "fsync", synced)
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append(("rename", str(a), str(b))),
                                                     replace(a, b)))
    monkeypatch.setattr(os, "rename", lambda a, b: (events.append(("rename", str(a), str(b))),
                                                    rename(a, b)))
    return events


def test_a_new_file_reaches_the_disk_before_its_rename_and_the_rename_after(tmp_path,
                                                                           disk_events):
    path = tmp_path / "best.weights.h5"
    write_atomic(path, b"weights")
    (_, tmp), rename, folder = disk_events
    assert rename == ("rename", tmp, str(path)) and folder == ("fsync", str(tmp_path))


def test_a_published_folder_reaches_the_disk_whole_before_its_rename(tmp_path, disk_events):
    final = tmp_path / "export" / "1"
    final.parent.mkdir()
    staged = staging_folder(final)
    os.makedirs(os.path.join(staged, "variables"))
    for name in ("saved_model.pb", "variables/variables.index"):
        with open(os.path.join(staged, name), "w") as f:
            f.write(name)
    publish_folder(staged, final)
    *flushed, rename, parent = disk_events
    assert sorted(path for _, path in flushed) == sorted(
        [staged, os.path.join(staged, "saved_model.pb"), os.path.join(staged, "variables"),
         os.path.join(staged, "variables", "variables.index")])
    assert rename == ("rename", staged, str(final)) and parent == ("fsync", str(final.parent))
    assert (final / "variables" / "variables.index").read_text() == "variables/variables.index"


def test_a_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "history.csv"
    path.write_text("epoch\n0\n")
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_path(path) as tmp:
            with open(tmp, "w") as f:
                f.write("epoch\n")
            raise RuntimeError("disk full")
    assert path.read_text() == "epoch\n0\n"
    assert os.listdir(tmp_path) == ["history.csv"]


def test_the_temporary_name_keeps_the_suffix_writers_read_the_format_from(tmp_path):
    with atomic_path(tmp_path / "swa-epoch-003.npz") as tmp:
        assert tmp.endswith(".npz") and os.path.dirname(tmp) == str(tmp_path)
        assert os.path.basename(tmp).startswith(".")   # hidden from readers that skip dotfiles
        np.savez(tmp, a=np.arange(3))           # numpy would add .npz to a name without it
    assert np.load(tmp_path / "swa-epoch-003.npz")["a"].tolist() == [0, 1, 2]
    assert os.listdir(tmp_path) == ["swa-epoch-003.npz"]


def test_temporary_names_are_hidden_fresh_and_found_by_the_leftover_glob(tmp_path):
    names = {temporary_name(tmp_path / "train-00000-of-00002.tfrecord") for _ in range(3)}
    assert len(names) == 3 and all(n.startswith(".") and n.endswith(".tfrecord") for n in names)
    for name in names:
        (tmp_path / name).touch()
    (tmp_path / "train-00000-of-00002.tfrecord").touch()
    assert {p.name for p in tmp_path.glob(TEMPORARY_GLOB)} == names


@pytest.mark.parametrize("folder", ["local", "ram://fileio-test/json"])
def test_read_json_reads_local_files_and_urls_and_none_for_no_file(tmp_path, folder):
    folder = str(tmp_path / folder) if folder == "local" else folder
    tf.io.gfile.makedirs(folder)
    write_atomic(join(folder, "a.json"), '{"k": [1, 2]}\n')
    write_atomic(join(folder, "bad.json"), "{")
    assert read_json(join(folder, "a.json")) == {"k": [1, 2]}
    assert read_json(join(folder, "missing.json")) is None
    with pytest.raises(ValueError):
        read_json(join(folder, "bad.json"))
    write_atomic(join(folder, "deep.json"), "[" * 100000)
    with pytest.raises(ValueError, match="nested too deeply"):
        read_json(join(folder, "deep.json"))


def test_a_file_url_is_checked_as_the_local_path_it_names(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "file").write_text("")
    with pytest.raises(UserError, match="is --model"):
        check_output(f"file://{tmp_path}/run/", "--out", {"--model": str(tmp_path / "run")})
    with pytest.raises(UserError, match=f"--out file://{tmp_path}/file: not a folder"):
        check_output(f"file://{tmp_path}/file", "--out")


@pytest.mark.parametrize("error,reported", [
    (OSError(errno.ENOSPC, "No space left on device"), "--out o: No space left on device"),
    (OSError(errno.EIO, "Input/output error", "/in/a.dcm"), "/in/a.dcm: Input/output error"),
    (OSError(errno.EIO, "Input/output error"), None),          # no file: not blamed on --out
])
def test_reported_writes_names_the_file_or_blames_out_only_for_write_errors(error, reported):
    with pytest.raises(UserError if reported else OSError) as caught:
        with reported_writes("--out", "o"):
            raise error
    assert reported is None or str(caught.value) == reported


def test_a_url_is_written_through_gfile():
    url = "ram://fileio-test/run/metrics.json"
    assert is_url(url) and not is_url("/tmp/run/metrics.json")
    tf.io.gfile.makedirs("ram://fileio-test/run")
    write_atomic(url, "{}\n")
    with tf.io.gfile.GFile(url) as f:
        assert f.read() == "{}\n"
    assert tf.io.gfile.listdir("ram://fileio-test/run") == ["metrics.json"]


def test_a_scheme_this_tensorflow_cannot_open_is_refused_up_front(tmp_path, monkeypatch):
    """Never a local folder named after the URL, and nothing written (TensorFlow is asked which
    schemes it has; the URL itself is never touched)."""
    from click.testing import CliRunner
    from keras_ptx.cli import main
    from keras_ptx.errors import UserError
    from keras_ptx.fileio import check_openable
    with pytest.raises(UserError, match=r"^--data s3://b/x: this TensorFlow cannot open s3:// "
                                        r"URLs \(pip install tensorflow-io\)$"):
        check_openable("s3://b/x", "--data")
    check_openable("ram://b/x", "--data")
    check_openable(tmp_path / "local", "--data")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "dicoms").mkdir()
    for args in (["build-tfrecords", "--dicom-dir", "dicoms", "--out", "s4://bucket/records"],
                 ["evaluate", "--model", ".", "--data", "s4://bucket/records"],
                 ["export", "--model", ".", "--out", "s4://bucket/exports"]):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 2 and "cannot open s4:// URLs" in result.output, result.output
    assert sorted(os.listdir(tmp_path)) == ["dicoms"]
