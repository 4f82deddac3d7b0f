#!/usr/bin/env python
"""Images/s through the DICOM node against bin/predict on the same files, and each study's
latency from its last instance to its objects in Orthanc (issue 30's two figures).

Writes ``--images`` synthetic radiographs (``keras_ptx.synthetic``, SIIM's layout: one study
per image, 1024 px JPEG Baseline by default), then

1. ``bin/predict`` on them: its own images/s line (model loading excluded);
2. Orthanc and ``bin/serve-dicom`` (both started here as the tests start them,
   tests/dicom_services.py; the node loads and traces its model before the clock starts),
   ``storescu`` of every file to the node, and the time until Orthanc holds a SEG for each:
   images / that time;
3. the latency of each study: from the end of its last instance's C-STORE (the node's own
   clock) to the acknowledgement of its objects, from the node's "answered" lines; the goal is
   at most ``--quiet`` plus 2 s per image.

``--model`` is a RUN_DIR or export; ``--random ENCODER`` builds a run with random weights
(random batch-norm statistics, bench/trained_like.py) on a ``--grid`` instead: speed does not
depend on training. Run the measurement on a quiet machine:

    .venv/bin/python bench/bench_node.py --random efficientnetb4 --grid 512 --images 200
    .venv/bin/python bench/bench_node.py --random efficientnetb0 --grid 64 --images 6 \\
        --size 64 --quiet 1            # a smoke run (~2 min), not a measurement
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

import dicom_services as services  # noqa: E402  (the tests' Orthanc and node harness)

NODE_AE = "KPTX"


def random_run(folder: Path, encoder: str, grid: int) -> Path:
    from keras_ptx import rundir
    from keras_ptx.config import dump_config, load_config
    from keras_ptx.model import build_model
    from trained_like import randomise_batch_norms

    folder.mkdir(parents=True, exist_ok=True)
    config = load_config(None, [f"data.image_size={grid}", f"model.encoder={encoder}",
                                "model.weights=none"])
    model = build_model(config)
    randomise_batch_norms(model)
    dump_config(config, folder / rundir.CONFIG)
    model.save_weights(str(folder / rundir.BEST_WEIGHTS))
    return folder


def synthetic(folder: Path, images: int, size: int) -> list[Path]:
    from keras_ptx.data.dicom import find_dicom_files
    from keras_ptx.synthetic.dataset import Options, make_dataset

    make_dataset(folder, Options(n_images=images, size=size, positive_fraction=0.5,
                                 test_fraction=0.0), progress=False)
    return [folder / rel for rel in find_dicom_files(folder)[0]]


def predict_rate(model: Path, folder: Path, out: Path) -> float:
    done = subprocess.run([str(REPO / "bin" / "predict"), "--model", str(model), "--dicom-dir",
                           str(folder), "--out", str(out)], capture_output=True, text=True,
                          check=True)
    return float(re.search(r"([\d.]+) images/s", done.stdout).group(1))


def node_run(model: Path, files: list[Path], work: Path, quiet: float) -> dict:
    services.install()
    port = services.free_port()
    orthanc = services.Orthanc(work / "orthanc", {"node": (NODE_AE, port)}).start()
    node = services.NodeProcess(
        ["--model", str(model), "--ae-title", NODE_AE, "--port", str(port), "--allow",
         "STORESCU", "--spool", str(work / "spool"), "--quiet", str(quiet),
         "--send-to", f"ORTHANC@{services.HOST}:{orthanc.dicom_port}"], work / "node.log")
    try:
        node.start(wait_port=port)
        start = time.monotonic()
        sent = services.storescu(files, port, NODE_AE, timeout=3600)
        if sent.returncode != 0:
            raise RuntimeError(f"storescu failed: {sent.stderr[-500:]}")
        received = time.monotonic() - start
        services.wait_for(lambda: len(orthanc.instances("SEG")) >= len(files), 3600,
                          "a SEG for every image", interval=0.5)
        seconds = time.monotonic() - start
    finally:
        node.stop()
        orthanc.stop()
    answered = re.findall(r"answered: (\d+) image\(s\).*latency ([\d.]+) s", node.text())
    return {"seconds": seconds, "received_seconds": received,
            "latencies": [(int(n), float(s)) for n, s in answered]}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", type=Path, help="RUN_DIR or export to serve")
    which.add_argument("--random", metavar="ENCODER", help="a random-weight run of ENCODER")
    parser.add_argument("--grid", type=int, default=256, help="--random's image_size")
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--size", type=int, default=1024, help="synthetic image side (px)")
    parser.add_argument("--quiet", type=float, default=2.0, help="the node's --quiet")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()

    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-node-"))
    model = args.model or random_run(work / "run", args.random, args.grid)
    files = synthetic(work / "dicom", args.images, args.size)
    predict = predict_rate(model, work / "dicom", work / "predict")
    node = node_run(model, files, work / "node", args.quiet)
    rate = len(files) / node["seconds"]
    over = [s - (args.quiet + 2.0 * n) for n, s in node["latencies"]]
    result = {"images": len(files), "size": args.size, "model": str(model),
              "quiet_s": args.quiet, "predict_images_per_s": predict,
              "node_images_per_s": round(rate, 2), "ratio": round(rate / predict, 3),
              "storescu_s": round(node["received_seconds"], 1),
              "latency_median_s": statistics.median(s for _, s in node["latencies"]),
              "latency_max_s": max(s for _, s in node["latencies"]),
              "studies_over_latency_goal": sum(o > 0 for o in over), "workdir": str(work)}
    print(json.dumps(result, indent=1))
    print(f"\n| images | bin/predict img/s | node img/s | ratio (goal >= 0.8) | latency median / "
          f"max (goal <= {args.quiet:g} s + 2 s/image) |\n|---|---|---|---|---|\n"
          f"| {len(files)} x {args.size} px | {predict:.2f} | {rate:.2f} | {rate / predict:.2f} "
          f"| {result['latency_median_s']:.1f} / {result['latency_max_s']:.1f} s |")


if __name__ == "__main__":
    main()
