"""The demo trained in full (CI), its summary table, and the README's generated CLI reference."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from keras_ptx import clidoc
from keras_ptx.commands.demo import summary_rows

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.demo
def test_the_demo_learns(tmp_path):
    """`make demo` as it ships (1,500 synthetic images, configs/demo.yaml, ~15 min on 2 cores):
    every stage writes its outputs, the summary table is the evaluation's, the network beats
    predicting nothing and outlines the lesions it finds, and a second run skips every stage.
    Run by `make test-demo` and CI, not by `make test` (a run short enough for it cannot
    learn, and would repeat these stages at a cost of over a minute)."""
    work = tmp_path / "demo"
    args = [sys.executable, "-m", "keras_ptx.cli", "demo", "--workdir", str(work)]
    result = subprocess.run(args, capture_output=True, text=True, timeout=3600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for path in ["synthetic/train-rle.csv", "synthetic/preview.png", "records/manifest.json",
                 "run/config.yaml", "run/best.weights.h5", "run/history.csv", "run/postprocess.json",
                 "run/eval/report.json", "run/eval/report.md", "export/1/saved_model.pb",
                 "predict-rg1/submission.csv", "predict-rg1/overlays"]:
        assert (work / path).exists(), path
    assert len(list((work / "predict-rg1" / "overlays").glob("*.png"))) == 1
    table = dict(tuple(part.strip() for part in line.split(" | "))
                 for line in result.stdout.splitlines() if " | " in line)
    report = json.loads((work / "run" / "eval" / "report.json").read_text())
    chosen = report["kinds"][report["chosen"]]
    assert float(table["competition score (chosen post-processing)"]) == pytest.approx(
        chosen["score"], abs=5e-5)
    assert float(table["all-empty baseline"]) == pytest.approx(report["empty_baseline"], abs=5e-5)
    float(table["Dice on positive images"])
    assert table["post-processing"]
    assert chosen["score"] >= report["empty_baseline"] + 0.1, report["kinds"]
    assert chosen["dice_positive"] >= 0.4, report["kinds"]
    again = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("[skip]") == 6


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
