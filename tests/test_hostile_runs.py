"""The hostile-input matrix for run directories and outputs (#33): damaged runs, outputs that
are inputs, unwritable outputs, URLs of schemes this TensorFlow lacks, --overwrite of what
keras_ptx did not write, killed predicts and exports, and batch sizes past the data.

One run (a freshly initialised B0 at 64 px), one records folder and a few DICOMs are shared by
the module; a case damages a copy. Each refusal is checked with tests/hostile.py: exit 2, one
short ``Error:`` line naming the input and what is wrong, and nothing written anywhere.
"""
import dataclasses
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from hostile import assert_refused, assert_unchanged, run, snapshot
from test_ensemble import _write_run
from test_train import write_records

from keras_ptx import fileio, rundir
from keras_ptx.config import dump_config, load_config
from keras_ptx.inference import predict as predict_module
from keras_ptx.synthetic.dicom_writer import write_dicom

REPO = Path(__file__).resolve().parents[1]
OUTPUT_SET = ("submission.csv", "predictions.csv", "errors.csv")


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """The module's inputs: run/ (a run dir), records/ (train and val), dicoms/, config.yaml."""
    root = tmp_path_factory.mktemp("shared")
    _write_run(root / "run", seed=1)
    write_records(root / "records", "train", 4, seed=1)
    write_records(root / "records", "val", 6, seed=2)
    rng = np.random.default_rng(0)
    for k in range(3):
        write_dicom(root / "dicoms" / f"{k}.dcm", rng.integers(0, 255, (64, 64), dtype=np.uint8),
                    image_id=f"1.2.3.{k}", study_uid="1.2.3", series_uid="1.2.3.9",
                    patient_id=f"p{k}", patient_name="X")
    config = rundir.load_run_config(root / "run")
    dump_config(dataclasses.replace(config, train=dataclasses.replace(config.train, batch_size=2)),
                root / "config.yaml")
    return root


@pytest.fixture
def case(shared, tmp_path):
    """A copy of the run in this test's folder, with the shared inputs beside it."""
    shutil.copytree(shared / "run", tmp_path / "run")
    return tmp_path


def _args(command, root, shared):
    """``command``'s arguments reading the run in ``root`` and writing into ``root``."""
    return {"evaluate": ["--model", root / "run", "--data", shared / "records"],
            "predict": ["--model", root / "run", "--dicom-dir", shared / "dicoms",
                        "--out", root / "out"],
            "export": ["--model", root / "run", "--out", root / "export"],
            "serve-dicom": ["--model", root / "run", "--spool", root / "spool", "--allow-any",
                            "--send-to", "PACS@127.0.0.1:1"]}[command]


@pytest.fixture
def node_never_starts(monkeypatch):
    """A node that gets past its checks fails loudly (exit 1) instead of serving forever."""
    from keras_ptx.node.service import Node

    def start(self):
        raise AssertionError("the node started: its input was not refused")
    monkeypatch.setattr(Node, "start", start)


def _truncate(path):
    path.write_bytes(path.read_bytes()[:4096])


def _other_network(run_dir):
    config = load_config(run_dir / rundir.CONFIG, ["model.decoder_filters=[64,32,16,8,4]"])
    dump_config(config, run_dir / rundir.CONFIG)


# damage -> (change to RUN_DIR, fragments of the Error line)
DAMAGES = {
    "weights truncated": (lambda d: _truncate(d / rundir.BEST_WEIGHTS),
                          [rundir.BEST_WEIGHTS, "not a readable weights file", "truncated"]),
    "weights random": (lambda d: (d / rundir.BEST_WEIGHTS).write_bytes(os.urandom(20000)),
                       [rundir.BEST_WEIGHTS, "not a readable weights file"]),
    "weights missing": (lambda d: (d / rundir.BEST_WEIGHTS).unlink(),
                        [f"no {rundir.BEST_WEIGHTS}"]),
    "config emptied": (lambda d: (d / rundir.CONFIG).write_text(""),
                       [rundir.CONFIG, "it is empty"]),
    "config of another network": (_other_network,
                                  ["does not fit the network of", rundir.CONFIG, "layer"]),
    "config binary": (lambda d: (d / rundir.CONFIG).write_bytes(b"\xff\xfe\x00model: {"),
                      [rundir.CONFIG, "UTF-8"]),
    "config a list": (lambda d: (d / rundir.CONFIG).write_text("- model\n"),
                      [rundir.CONFIG, "mapping"]),
    "ensemble.json of itself": (
        lambda d: (d / rundir.ENSEMBLE).write_text(json.dumps({"members": [str(d)]})),
        [rundir.ENSEMBLE, "leads back to"]),
    "ensemble.json not JSON": (lambda d: (d / rundir.ENSEMBLE).write_text("{members"),
                               [rundir.ENSEMBLE, "not valid JSON"]),
    "ensemble.json without members": (lambda d: (d / rundir.ENSEMBLE).write_text('{"m": 1}'),
                                      [rundir.ENSEMBLE, "no list of members"]),
    "ensemble.json nested too deeply": (lambda d: (d / rundir.ENSEMBLE).write_text("[" * 100000),
                                        [rundir.ENSEMBLE, "not valid JSON", "nested too deeply"]),
}


@pytest.mark.parametrize("damage", DAMAGES)
@pytest.mark.parametrize("command", ["evaluate", "predict", "export", "serve-dicom"])
def test_a_damaged_run_is_refused_by_name(command, damage, case, shared, node_never_starts):
    change, fragments = DAMAGES[damage]
    change(case / "run")
    before = snapshot(case)
    assert_refused(run(command, _args(command, case, shared)), *fragments)
    assert_unchanged(before, case)


# command -> (arguments, with OUT where the output goes; where the output is)
def _overlaps(root, shared):
    model = root / "run"
    return {
        "evaluate --out is a --model": (
            "evaluate", ["--model", model, "--model", model, "--data", shared / "records",
                         "--out", model], "is --model"),
        "evaluate --out inside a --model": (
            "evaluate", ["--model", model, "--data", shared / "records", "--out", model / "e"],
            "is inside --model"),
        "evaluate --out holds a --model": (
            "evaluate", ["--model", model, "--data", shared / "records", "--out", root],
            "holds --model"),
        "evaluate --out inside --data": (
            "evaluate", ["--model", model, "--data", shared / "records",
                         "--out", shared / "records" / "e"], "is inside --data"),
        "predict --out is the --model": (
            "predict", ["--model", model, "--dicom-dir", shared / "dicoms", "--out", model],
            "is --model"),
        "predict --out inside --dicom-dir": (
            "predict", ["--model", model, "--dicom-dir", shared / "dicoms",
                        "--out", shared / "dicoms" / "out"], "is inside --dicom-dir"),
        "predict --dicom-out inside the --model": (
            "predict", ["--model", model, "--dicom-dir", shared / "dicoms", "--out",
                        root / "out", "--dicom-out", model / "dicom"], "--dicom-out"),
        "export --out inside the --model": (
            "export", ["--model", model, "--out", model / "export"], "is inside --model"),
        "train --out is --data": (
            "train", ["--config", shared / "config.yaml", "--data", shared / "records",
                      "--out", shared / "records"], "is --data"),
        "train --out holds --data": (
            "train", ["--config", shared / "config.yaml", "--data", shared / "records",
                      "--out", shared], "holds --data"),
        "train --overwrite of its train.init_from": (
            "train", ["--config", shared / "config.yaml", "--data", shared / "records",
                      "--out", model, "--overwrite", "--set", f"train.init_from={model}"],
            "is train.init_from"),
        "train --out holds model.weights": (
            "train", ["--config", shared / "config.yaml", "--data", shared / "records",
                      "--out", model, "--overwrite",
                      "--set", f"model.weights={model / rundir.BEST_WEIGHTS}"],
            "holds model.weights"),
        "train-folds --out is train.init_from": (
            "train-folds", ["--config", shared / "config.yaml", "--data", shared / "records",
                            "--out", model, "--set", f"train.init_from={model}"],
            "is train.init_from"),
        "predict --out a file:// URL of the --model": (
            "predict", ["--model", model, "--dicom-dir", shared / "dicoms",
                        "--out", f"file://{model}"], "is --model"),
        "train-folds --out inside --data": (
            "train-folds", ["--config", shared / "config.yaml", "--data", shared / "records",
                            "--out", shared / "records" / "cv"], "is inside --data"),
        "build-tfrecords --out inside --dicom-dir": (
            "build-tfrecords", ["--dicom-dir", shared / "dicoms",
                                "--out", shared / "dicoms" / "rec"], "is inside --dicom-dir"),
    }


OVERLAPS = list(_overlaps(Path("r"), Path("s")))


@pytest.mark.parametrize("name", OVERLAPS)
def test_an_output_that_is_inside_or_holds_an_input_is_refused(name, case, shared):
    command, args, fragment = _overlaps(case, shared)[name]
    before = snapshot(case.parent)
    assert_refused(run(command, args), fragment, "choose another")
    assert_unchanged(before, case.parent)


def test_an_ensemble_that_would_list_itself_is_refused_through_its_members(case, shared):
    """evaluate --model E --out A, where E lists A: A would list E, which lists A."""
    (case / "ens").mkdir()
    (case / "ens" / rundir.ENSEMBLE).write_text(json.dumps({"members": [str(case / "run")]}))
    before = snapshot(case)
    assert_refused(run("evaluate", ["--model", case / "ens", "--data", shared / "records",
                                    "--out", case / "run"]), "is --model")
    assert_unchanged(before, case)


def _other_ensemble(folder):
    folder.mkdir()
    (folder / rundir.ENSEMBLE).write_text(json.dumps({"members": [str(folder.parent / "b")]}))


@pytest.mark.parametrize("folder,fragment", [
    (lambda f: shutil.copytree(f.parent / "run", f), "holds config.yaml, so it is a run"),
    (lambda f: (f.mkdir(), (f / rundir.FOLDS).write_text('{"folds": 2, "trained": [0]}')),
     "holds folds.json, so it is a run or fold folder"),
    (_other_ensemble, "the ensemble folder of other models"),
])
def test_evaluate_refuses_an_out_that_is_another_model(folder, fragment, case, shared):
    """--model OUT of predict and export would silently become this ensemble."""
    folder(case / "other")
    before = snapshot(case)
    assert_refused(run("evaluate", ["--model", case / "run", "--data", shared / "records",
                                    "--out", case / "other"]),
                   f"--out {case / 'other'}", fragment, "choose another --out")
    assert_unchanged(before, case)


def _url_cases(root, shared, scheme):
    model, records, dicoms, config = root / "run", shared / "records", shared / "dicoms", \
        shared / "config.yaml"
    url = f"{scheme}://bucket/x"
    train = {"--config": config, "--data": records, "--out": root / "t"}
    return {
        "evaluate": ({"--model": model, "--data": records, "--out": root / "e"},
                     ["--model", "--data", "--out"]),
        "predict": ({"--model": model, "--dicom-dir": dicoms, "--out": root / "o",
                     "--dicom-out": root / "d"}, ["--model", "--dicom-dir", "--out",
                                                 "--dicom-out"]),
        "export": ({"--model": model, "--out": root / "x"}, ["--model", "--out"]),
        "train": (train, ["--config", "--data", "--out"]),
        "train-folds": (train, ["--data", "--out"]),
    }, url


URL_CASES = [(command, option, scheme)
             for scheme in ("s3", "http")
             for command, (_, options) in _url_cases(Path("r"), Path("s"), scheme)[0].items()
             for option in options]


@pytest.mark.parametrize("command,option,scheme", URL_CASES)
def test_a_url_of_a_scheme_this_tensorflow_lacks_is_refused_for_every_path_option(
        command, option, scheme, case, shared):
    cases, url = _url_cases(case, shared, scheme)
    values = {**cases[command][0], option: url}
    before = snapshot(case)
    assert_refused(run(command, [part for pair in values.items() for part in pair]), url,
                   "a local folder is needed" if option == "--dicom-dir"
                   else f"cannot open {scheme}:// URLs")
    assert_unchanged(before, case)


def _unwritable(folder, how):
    """Make ``folder`` refuse new files: read-only (not for root), or immutable (root only)."""
    if how == "read-only":
        if os.geteuid() == 0:
            pytest.skip("root writes into read-only folders")
        folder.chmod(0o555)
        return lambda: folder.chmod(0o755)
    if os.geteuid() != 0 or not shutil.which("chattr"):
        pytest.skip("chattr +i needs root")
    if subprocess.run(["chattr", "+i", folder], capture_output=True).returncode:
        pytest.skip("this filesystem has no immutable flag")
    return lambda: subprocess.run(["chattr", "-i", folder], check=True)


@pytest.mark.parametrize("how", ["read-only", "immutable"])
@pytest.mark.parametrize("command", ["train", "predict", "export", "evaluate"])
def test_an_unwritable_output_is_refused_before_any_work(command, how, case, shared):
    out = case / "out"
    out.mkdir()
    args = {"train": ["--config", shared / "config.yaml", "--data", shared / "records",
                      "--out", out],
            "predict": ["--model", case / "run", "--dicom-dir", shared / "dicoms", "--out", out],
            "export": ["--model", case / "run", "--out", out],
            "evaluate": ["--model", case / "run", "--data", shared / "records", "--out", out]}
    before = snapshot(case)
    restore = _unwritable(out, how)
    try:
        outcome = run(command, args[command])
    finally:
        restore()
    assert_refused(outcome, f"--out {out}: cannot write in {out}")
    assert_unchanged(before, case)


# --- --overwrite deletes only what keras_ptx wrote ------------------------------------------

def _foreign(folder):
    folder.mkdir()
    (folder / "config.yaml").write_text("services: {}\n")
    (folder / "thesis.txt").write_text("four years\n")
    (folder / "src").mkdir()
    (folder / "src" / "main.c").write_text("int main;\n")


def _other_framework(folder):
    """A run of another framework: sections named like keras_ptx's, with keys of its own."""
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "logs").mkdir()
    (folder / "checkpoints" / "epoch-9.pt").write_text("weights")
    (folder / "config.yaml").write_text("model:\n  name: resnet50\ntrain:\n  epochs: 90\n")


def _linked(name):
    """A copy of the run whose ``name`` (logs, or a file in checkpoints/) links elsewhere."""
    def make(folder):
        shutil.copytree(folder.parent / "run", folder)
        (folder.parent / "shared").mkdir()
        (folder.parent / "shared" / "events").write_text("another run's")
        (folder / name).parent.mkdir(exist_ok=True)
        (folder / name).symlink_to(folder.parent / "shared")
    return make


@pytest.mark.parametrize("folder,fragment", [
    (_foreign, "not a run directory: it holds src, thesis.txt, which a run does not"),
    (lambda f: (f.mkdir(), (f / "config.yaml").write_text("services: {}\n")),
     "not a run directory (no keras_ptx config.yaml)"),
    (_other_framework, "not a run directory (no keras_ptx config.yaml)"),
    (_linked("logs"), "logs is a symbolic link"),
    (_linked("checkpoints/best.weights.h5"), "best.weights.h5 is a symbolic link"),
    (lambda f: (shutil.copytree(f.parent / "run", f), (f / "notes.md").write_text("mine")),
     "holds notes.md"),
])
def test_train_overwrite_refuses_a_folder_that_is_not_a_run(folder, fragment, case, shared):
    folder(case / "mine")
    before = snapshot(case)
    assert_refused(run("train", ["--config", shared / "config.yaml", "--data",
                                 shared / "records", "--out", case / "mine", "--overwrite"]),
                   f"--out {case / 'mine'}", fragment, "refusing to delete it")
    assert_unchanged(before, case)


def test_overwrite_deletes_a_run_even_one_whose_config_no_longer_validates(case):
    (case / "run" / rundir.EVAL).mkdir()
    (case / "run" / ".history.csv.tmp-1234").write_text("")
    config = case / "run" / rundir.CONFIG
    config.write_text(config.read_text().replace("prune_level: 1", "prune_level: 99"))
    with pytest.raises(rundir.RunDirError):
        rundir.load_run_config(case / "run")
    rundir.remove_run(case / "run")
    assert not (case / "run").exists()


def test_make_synthetic_overwrite_refuses_a_dataset_it_did_not_write(tmp_path):
    siim = tmp_path / "siim"
    (siim / "dicom-images-train" / "s").mkdir(parents=True)
    (siim / "dicom-images-train" / "s" / "1.dcm").write_bytes(b"real data")
    (siim / "train-rle.csv").write_text("ImageId, EncodedPixels\n")
    before = snapshot(tmp_path)
    assert_refused(run("make-synthetic", [siim, "--n-images", 1, "--overwrite"]),
                   "no synthetic.json of make-synthetic", "dicom-images-train")
    assert_unchanged(before, tmp_path)


# --- killed outputs ---------------------------------------------------------------------------

def test_a_killed_predict_leaves_the_earlier_set_and_the_next_one_cleans_up(case, shared):
    """predict over an earlier set, killed (SIGKILL) while it writes: the earlier set is intact;
    the next predict replaces it whole and leaves no staging folder or temporary file."""
    out = case / "out"
    out.mkdir()
    for name in OUTPUT_SET:
        (out / name).write_text(f"earlier {name}\n")
    earlier = snapshot(out)
    (out / ".submission.csv.tmp-0badf00d").write_text("killed")       # an older version's
    (out / fileio.staged_name(fileio.SET_STAGING, 999999999)).mkdir()  # a killed one's
    dicoms = case / "many"
    dicoms.mkdir()
    for k in range(100):
        os.link(shared / "dicoms" / f"{k % 3}.dcm", dicoms / f"{k}.dcm")

    killed = subprocess.Popen(
        [sys.executable, "-m", "keras_ptx.cli", "predict", "--model", str(case / "run"),
         "--dicom-dir", str(dicoms), "--out", str(out), "--batch-size", "1"],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not any(any(p.glob("*predictions.csv*")) for p in _staged_by(out, killed.pid)):
        assert killed.poll() is None and time.monotonic() < deadline, "predict ended first"
        time.sleep(0.02)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    after = snapshot(out)
    assert {k: after[k] for k in earlier} == earlier

    args = ["--model", case / "run", "--dicom-dir", shared / "dicoms", "--out", out]
    assert run("predict", args).status == 0
    assert sorted(p.name for p in out.iterdir()) == sorted([*OUTPUT_SET, fileio.SET_LOCK])
    assert all(not (out / name).read_text().startswith("earlier") for name in OUTPUT_SET)


def _staged_by(folder, pid):
    """The staging folders in ``folder`` of process ``pid``."""
    return [p for p in folder.iterdir()
            if (m := fileio.STAGED_NAME.fullmatch(p.name)) and m["pid"] == str(pid)]


def test_predict_without_overlays_drops_the_overlays_of_an_earlier_set(case, shared):
    args = _args("predict", case, shared)
    assert run("predict", args + ["--overlays"]).status == 0
    assert any((case / "out" / "overlays").iterdir())
    assert run("predict", args).status == 0
    assert not (case / "out" / "overlays").exists()


def test_a_set_whose_moving_in_was_killed_is_finished_by_the_next_call(tmp_path):
    """A kill after the journal and one rename: the next call moves the rest in and drops the
    names the set no longer holds (c.csv); the journal's own killed write is cleaned up."""
    for name, text in (("a.csv", "old a"), ("b.csv", "old b"), ("c.csv", "old c")):
        (tmp_path / name).write_text(text)
    (tmp_path / "overlays").mkdir()
    (tmp_path / "overlays" / "old.png").write_text("old")
    staged = tmp_path / fileio.staged_name(fileio.SET_STAGING, 999999999)
    (staged / "overlays").mkdir(parents=True)
    (staged / "overlays" / "new.png").write_text("new")
    (staged / "b.csv").write_text("new b")
    (tmp_path / "a.csv").write_text("new a")                     # already moved in
    (tmp_path / fileio.SET_JOURNAL).write_text(f"{staged.name}\nc.csv")
    (tmp_path / fileio.temporary_name(tmp_path / fileio.SET_JOURNAL)).write_text(staged.name)
    fileio.recover_set(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [fileio.SET_LOCK, "a.csv", "b.csv",
                                                          "overlays"]
    assert [(tmp_path / n).read_text() for n in ("a.csv", "b.csv")] == ["new a", "new b"]
    assert [p.name for p in (tmp_path / "overlays").iterdir()] == ["new.png"]


def test_partial_exports_of_gone_processes_are_removed_and_running_ones_kept(tmp_path):
    gone, running = (tmp_path / fileio.staged_name("1", pid) for pid in (999999999,
                                                                         os.getpid()))
    for folder in (gone, running, tmp_path / "1"):
        (folder / "variables").mkdir(parents=True)
    fileio.remove_stale_partials(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["1", running.name])
    assert fileio.STAGED_NAME.fullmatch(os.path.basename(fileio.staging_folder(tmp_path / "2")))


def test_only_this_hosts_staging_folders_of_gone_processes_and_old_legacy_ones_are_removed(
        tmp_path):
    """Not a user's folder that merely holds .partial-, not another host's (a shared disk),
    not a legacy export's younger than an hour; a pid past any integer is a gone one."""
    ours = fileio.staged_name("1", 999999999)
    kept = [".notes.partial-draft", ".1.partial-otherhost-999999999-0123abcd",
            ".1.partial-0123abcd"]
    removed = [ours, fileio.staged_name("1", int("9" * 40)), ".2.partial-89abcdef"]
    for name in kept + removed:
        (tmp_path / name).mkdir()
    os.utime(tmp_path / removed[2], (0, 0))                      # a legacy one, long ago
    fileio.remove_stale_partials(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(kept)


def test_a_set_is_recovered_and_moved_in_by_one_process_at_a_time(tmp_path):
    lock = os.open(tmp_path / fileio.SET_LOCK, os.O_RDWR | os.O_CREAT)
    fcntl.flock(lock, fcntl.LOCK_EX)                             # another predict's
    recovering = threading.Thread(target=fileio.recover_set, args=(tmp_path,))
    recovering.start()
    recovering.join(0.5)
    assert recovering.is_alive()
    os.close(lock)
    recovering.join(10)
    assert not recovering.is_alive()


# --- sizes and stale outputs ------------------------------------------------------------------

@pytest.mark.parametrize("command", ["evaluate", "predict"])
def test_a_batch_size_past_any_machine_is_refused(command, case, shared):
    before = snapshot(case)
    assert_refused(run(command, _args(command, case, shared) + ["--batch-size", 10_000_000]),
                   "--batch-size", "10000000 is not in the range")
    assert_unchanged(before, case)


def test_predict_caps_the_batch_at_the_images(case, shared, monkeypatch):
    sizes = []
    batched = predict_module.batched
    monkeypatch.setattr(predict_module, "batched",
                        lambda items, size: (sizes.append(size), batched(items, size))[1])
    outcome = run("predict", _args("predict", case, shared) + ["--batch-size", 4096])
    assert outcome.status == 0, outcome.stderr
    assert sizes == [3]                                          # the three DICOMs


def test_evaluate_caps_the_batch_at_the_split_and_clears_the_cases_it_no_longer_draws(
        case, shared):
    cases = case / "run" / rundir.EVAL / "cases"
    cases.mkdir(parents=True)
    for name in ("best-4-1.2.3.png", "worst-3-1.2.4.png", "notes.txt"):    # a run with --cases 4
        (cases / name).write_text("earlier")
    outcome = run("evaluate", _args("evaluate", case, shared) + ["--cases", 1,
                                                                 "--batch-size", 4096])
    assert outcome.status == 0, outcome.stderr
    report = json.loads((case / "run" / rundir.EVAL / rundir.EVAL_REPORT).read_text())
    drawn = [Path(c["file"]).name for c in report["cases"]]
    assert drawn and all(name.startswith(("best-1-", "worst-1-")) for name in drawn)
    assert sorted(p.name for p in cases.iterdir()) == sorted(drawn + ["notes.txt"])


# serve-dicom's own settings -> (its arguments past a working run and spool, Error fragments)
NODE_SETTINGS = {
    "--quiet nan": (["--quiet", "nan"], ["--quiet nan", "seconds from 0"]),
    "--retention inf": (["--retention", "inf"], ["--retention inf", "seconds from 0"]),
    "--max-backoff 0": (["--max-backoff", "0"], ["--max-backoff 0", "seconds from 0.001"]),
    "--send-to without a port": (["--send-to", "PACS@host"], ["expected AE@host:port"]),
    "--objects unknown": (["--objects", "seg,xx"], ["choose from seg, sr, sc"]),
    "--port past 65535": (["--port", "70000"], ["--port", "70000"]),
    "--ae-title too long": (["--ae-title", "A" * 17], ["--ae-title", "1-16 printable"]),
}


@pytest.mark.parametrize("setting", NODE_SETTINGS)
def test_the_node_refuses_its_settings_before_loading_a_model(setting, case, shared,
                                                             node_never_starts):
    extra, fragments = NODE_SETTINGS[setting]
    before = snapshot(case)
    assert_refused(run("serve-dicom", _args("serve-dicom", case, shared) + extra), *fragments)
    assert_unchanged(before, case)


@pytest.mark.parametrize("spool, fragment", [
    ("run/spool", "is inside --model"), (".", "holds --model"),
    ("s3://bucket/spool", "cannot open s3:// URLs")])
def test_the_node_refuses_a_spool_over_its_model(spool, fragment, case, shared,
                                                 node_never_starts):
    args = _args("serve-dicom", case, shared)
    args[args.index("--spool") + 1] = spool if "://" in spool else case / spool
    before = snapshot(case)
    assert_refused(run("serve-dicom", args), "--spool", fragment)
    assert_unchanged(before, case)
