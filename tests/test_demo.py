"""The demo's stages end to end at a toy size, and the README's generated CLI reference."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from keras_ptx import clidoc
from keras_ptx.commands.demo import summary_rows

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_demo_runs_every_stage_at_toy_size(tmp_path):
    work = tmp_path / "demo"
    args = [sys.executable, "-m", "keras_ptx.cli", "demo", "--workdir", str(work),
            "--config", str(ROOT / "configs" / "test.yaml"), "--n-images", "40", "--dicom-size", "128",
            "--set", "train.epochs=1", "--set", "model.prune_level=1"]
    first = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    for path in ["synthetic/train-rle.csv", "synthetic/preview.png", "records/manifest.json",
                 "run/config.yaml", "run/best.weights.h5", "run/history.csv", "run/postprocess.json",
                 "run/eval/report.json", "run/eval/report.md", "export/1/saved_model.pb",
                 "predict-rg1/submission.csv", "predict-rg1/overlays"]:
        assert (work / path).exists(), path
    assert len(list((work / "predict-rg1" / "overlays").glob("*.png"))) == 1
    table = {}
    for line in first.stdout.splitlines():
        if " | " in line:
            key, value = (part.strip() for part in line.split(" | "))
            table[key] = value
    score = float(table["competition score (chosen post-processing)"])
    baseline = float(table["all-empty baseline"])
    assert 0.0 <= score <= 1.0 and 0.0 <= baseline <= 1.0
    # The table is this run's evaluation. Two training steps learn nothing, so the score need not
    # beat the baseline here; it did in BENCHMARKS.md's full demo (~13 min of training).
    report = json.loads((work / "run" / "eval" / "report.json").read_text())
    assert score == pytest.approx(report["kinds"][report["chosen"]]["score"], abs=5e-5)
    assert baseline == pytest.approx(report["empty_baseline"], abs=5e-5)
    float(table["Dice on positive images"])
    assert table["post-processing"]
    # Re-running skips every stage whose outputs are complete.
    second = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    assert second.stdout.count("[skip]") == 6


@pytest.mark.demo
def test_the_demo_learns(tmp_path):
    """`make demo` as it ships (1,500 synthetic images, configs/demo.yaml, ~15 min on 2 cores):
    the network must beat predicting nothing and outline the lesions it finds. Run by
    `make test-demo` and CI, not by `make test` (the toy run above cannot learn in its budget)."""
    work = tmp_path / "demo"
    result = subprocess.run([sys.executable, "-m", "keras_ptx.cli", "demo", "--workdir", str(work)],
                            capture_output=True, text=True, timeout=3600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((work / "run" / "eval" / "report.json").read_text())
    chosen = report["kinds"][report["chosen"]]
    assert chosen["score"] >= report["empty_baseline"] + 0.1, report["kinds"]
    assert chosen["dice_positive"] >= 0.4, report["kinds"]


def test_summary_rows_read_the_evaluate_report():
    report = {"chosen": "triplet", "empty_baseline": 0.8, "image_level": {"auc": None},
              "kinds": {"triplet": {"score": 0.9, "dice_positive": 0.6, "rule": "empty unless ..."}}}
    rows = dict(summary_rows(report))
    assert rows["all-empty baseline"] == "0.8000"
    assert rows["competition score (chosen post-processing)"] == "0.9000"
    assert rows["image-level ROC AUC"] == "n/a"
    assert rows["post-processing"] == "triplet: empty unless ..."


def test_readme_cli_reference_is_current():
    readme = (ROOT / "README.md").read_text()
    block = readme.split(clidoc.BEGIN, 1)[1].split(clidoc.END, 1)[0]
    assert clidoc.BEGIN + block + clidoc.END == clidoc.render(), \
        "README's CLI reference is stale: run .venv/bin/python -m keras_ptx.clidoc README.md"


def test_every_command_has_its_bin_script_and_console_script():
    """The README's reference names each command bin/<name>; setup.cfg installs keras-ptx-<name>."""
    from keras_ptx import cli
    setup = (ROOT / "setup.cfg").read_text()
    for name in cli.COMMANDS:
        script = ROOT / "bin" / name
        assert script.is_file() and os.access(script, os.X_OK), name
        assert f"run_command(sys.argv[1], sys.argv[2], sys.argv[3:])' {name} \"bin/{name}\"" in \
            script.read_text(), name
        runner = name.replace("-", "_")
        assert f"keras-ptx-{name} = keras_ptx.cli:{runner}" in setup and callable(getattr(cli, runner))
    result = subprocess.run([str(ROOT / "bin" / "demo"), "--help"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0 and result.stdout.startswith("Usage: bin/demo")
