"""Each bin/ command, run as a user runs it, refusing a bad input after TensorFlow is imported:
exit status 2, one line ``Error: <message>`` on standard error and none of TensorFlow's start-up
lines. (make-synthetic never imports TensorFlow; the demo imports it only in its stages' processes.)
"""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from keras_ptx.cli import COMMANDS
from keras_ptx.tf_setup import STARTUP_NOISE

ROOT = Path(__file__).resolve().parents[1]
NOT_UTF8 = b"ImageId,EncodedPixels\n1.2.3,-1\n1.2.4,\xff\xfe\n"


def _cases(tmp: Path) -> dict[str, tuple[list[str], int, list[str]]]:
    """command -> (its arguments, exit status, a fragment of each line it must print on stderr)."""
    for folder in ("empty", "not-a-run", "dicoms", "synthetic", "demo/synthetic/dicom-images-train"):
        (tmp / folder).mkdir(parents=True)
    for labels in (tmp / "labels.csv", tmp / "demo/synthetic/train-rle.csv"):
        labels.write_bytes(NOT_UTF8)
    (tmp / "dicoms/x.dcm").write_bytes(b"never read: the run is refused first")
    for done in (tmp / "synthetic/synthetic.json", tmp / "demo/synthetic/synthetic.json"):
        done.write_text("{}")
    (tmp / "config.yaml").write_text("train:\n  epochz: 3\n")
    not_utf8 = f"{tmp / 'labels.csv'}: not UTF-8 text (byte 0xff on line 3)"
    not_a_run = f"{tmp / 'not-a-run'}: not a training run directory"
    return {
        "make-synthetic": ([str(tmp / "synthetic"), "-n", "1"], 2, ["already holds a dataset"]),
        "build-tfrecords": (["--labels", str(tmp / "labels.csv"), "--dicom-dir", str(tmp / "empty"),
                             "--out", str(tmp / "records")], 2, [not_utf8]),
        "train": (["--config", str(tmp / "config.yaml"), "--data", str(tmp / "empty"),
                   "--out", str(tmp / "run")], 2, ["train.epochz: unknown key"]),
        "train-folds": (["--config", str(tmp / "config.yaml"), "--data", str(tmp / "empty"),
                         "--out", str(tmp / "folds")], 2, ["train.epochz: unknown key"]),
        "evaluate": (["--model", str(tmp / "not-a-run"), "--data", str(tmp / "empty")], 2,
                     [f"--data {tmp / 'empty'}: the directory is empty"]),
        "predict": (["--model", str(tmp / "not-a-run"), "--dicom-dir", str(tmp / "dicoms"),
                     "--out", str(tmp / "predicted")], 2, [not_a_run]),
        "export": (["--model", str(tmp / "not-a-run"), "--out", str(tmp / "export")], 2, [not_a_run]),
        "doctor": (["--config", str(tmp / "config.yaml")], 2, ["train.epochz: unknown key"]),
        "serve-dicom": (["--model", str(tmp / "not-a-run"), "--spool", str(tmp / "spool"),
                         "--allow-any", "--send-to", "PACS@127.0.0.1:1"], 2, [not_a_run]),
        # The synthetic stage is complete, so the build stage runs and refuses its label file;
        # the demo reports the stage's own error, then that the stage failed.
        "demo": (["--workdir", str(tmp / "demo")], 2,
                 ["train-rle.csv: not UTF-8 text", "stage 'TFRecords' failed (exit 2)"]),
    }


@pytest.fixture(scope="module")
def refusals(tmp_path_factory):
    """(the folder of the inputs, command -> (its case, its exit status, its stderr)); the
    commands run all at once."""
    tmp = tmp_path_factory.mktemp("cli")
    cases = _cases(tmp)
    running = {name: subprocess.Popen([str(ROOT / "bin" / name), *args], cwd=tmp,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
               for name, (args, _, _) in cases.items()}
    done = {}
    for name, process in running.items():
        _, stderr = process.communicate(timeout=300)
        done[name] = cases[name], process.returncode, stderr
    return tmp, done


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_a_refusal_is_one_clean_error_line(refusals, name):
    (_, expected_status, fragments), status, stderr = refusals[1][name]
    lines = stderr.decode(errors="replace").splitlines()
    assert not [line for line in stderr.splitlines() if STARTUP_NOISE.search(line)], lines
    assert status == expected_status, lines
    assert len(lines) == len(fragments), lines
    for line, fragment in zip(lines, fragments):
        assert line.startswith("Error: ") and fragment in line, lines


def test_a_refusal_leaves_no_output_behind(refusals):
    tmp, _ = refusals
    assert not [out for out in ("records", "run", "folds", "predicted", "export")
                if (tmp / out).exists()]
