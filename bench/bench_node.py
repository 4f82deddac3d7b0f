#!/usr/bin/env python
"""Images/s through the DICOM node against bin/predict on the same files, and each study's
latency from its last instance to its objects in Orthanc (issue 30's two figures).

Writes ``--images`` synthetic radiographs (``keras_ptx.synthetic``, SIIM's layout: one study
per image, 1024 px JPEG Baseline by default), then

1. ``bin/predict`` on them: its own images/s line (model loading excluded, but not the
   tracing of its first batch, which the node does before it listens), and its steady rate:
   ``bin/predict`` on the first batch's worth of files too, (N - n) / (t_N - t_n) from the
   two runs' own times. The ratio is against the steady rate (the stricter). The same
   again with ``--dicom-out`` (the SEG and SR per image that the node sends): a second
   ratio, against the same work;
2. Orthanc and ``bin/serve-dicom`` (both started here as the tests start them,
   tests/dicom_services.py; the node loads and traces its model before the clock starts),
   ``storescu`` of every file to the node in one association (a flood), and the time until
   Orthanc holds a SEG for each: images / that time;
3. the latency of each study: from its last instance's arrival in the spool (the node's own
   clock) to the acknowledgement of its objects, from the node's "answered" lines; the goal
   is at most ``--quiet`` plus 2 s per image. In the flood a study also waits for the studies
   ahead of it (the last of N waits for about N / throughput), so the same node then gets
   ``--paced`` more one-image studies (other UIDs), one every ``--interval`` seconds, as a
   PACS sends them through a day: their latencies are the node's own.

The machine's busy core-seconds (``/proc/stat``, every process: the node, its children,
Orthanc, storescu) are counted over the flood and over each bin/predict run (past the first
batch, as its steady rate): CPU per image of each, the cores' busy share in the flood, and
the ratio's ceiling, the node's images/s if its cores were always busy with what it spends
per image, over bin/predict's steady rate (the ratio over its ceiling is the busy share).
Busy includes threads that spin while they wait (TensorFlow's pool spins before it sleeps,
pynetdicom polls), so a busy share near 1 says the cores are taken, not that all of it is
work.

``--model`` is a RUN_DIR or export; ``--random ENCODER`` builds a run with random weights
(random batch-norm statistics, bench/trained_like.py) on a ``--grid`` instead: speed does not
depend on training. ``--engine openvino`` runs the network under OpenVINO in both (#32).
``--node-only`` runs step 2 alone and prints the node's images/s (A/B runs of the node: give
the same ``--workdir`` to reuse its files and run); ``--objects`` is the node's.
Orthanc runs with ``TCP_NODELAY=1`` as the tests run it; ``--orthanc-nagle`` runs it with its
DCMTK's default instead (Nagle's algorithm on: each answer waits for the node's delayed
acknowledgement). The median C-ECHO round trip to that Orthanc is reported too.
Run the measurement on a quiet machine:

    .venv/bin/python bench/bench_node.py --random efficientnetb4 --grid 512 --images 200
    .venv/bin/python bench/bench_node.py --random efficientnetb0 --grid 64 --images 6 \\
        --size 64 --quiet 1 --paced 2 --interval 1     # a smoke run, not a measurement
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pydicom

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

import dicom_services as services  # noqa: E402  (the tests' Orthanc and node harness)

NODE_AE = "KPTX"


def random_run(folder: Path, encoder: str, grid: int) -> Path:
    """A run of ``encoder`` with random weights, made unless an earlier run made it."""
    from keras_ptx import rundir
    from keras_ptx.config import dump_config, load_config
    from keras_ptx.model import build_model
    from trained_like import randomise_batch_norms

    config = load_config(None, [f"data.image_size={grid}", f"model.encoder={encoder}",
                                "model.weights=none"])
    if (folder / rundir.BEST_WEIGHTS).exists():
        if load_config(folder / rundir.CONFIG) != config:
            raise SystemExit(f"{folder} is a run of another network: give another --workdir")
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    model = build_model(config)
    randomise_batch_norms(model)
    dump_config(config, folder / rundir.CONFIG)
    model.save_weights(str(folder / rundir.BEST_WEIGHTS))
    return folder


def synthetic(folder: Path, images: int, size: int, seed: int = 0) -> list[Path]:
    """The dataset's files, made unless an earlier run (the same --workdir) made it."""
    from keras_ptx.data.dicom import find_dicom_files
    from keras_ptx.synthetic.dataset import Options, make_dataset

    made = folder / "synthetic.json"
    if made.exists():
        options = json.loads(made.read_text())["options"]
        if (options["n_images"], options["size"], options["seed"]) != (images, size, seed):
            raise SystemExit(f"{folder} holds {options['n_images']} images of {options['size']}"
                             f" px: give the same --images and --size, or another --workdir")
    else:
        make_dataset(folder, Options(n_images=images, size=size, positive_fraction=0.5,
                                     test_fraction=0.0, seed=seed), progress=False)
    return [folder / rel for rel in find_dicom_files(folder)[0]]


def busy_core_seconds() -> float:
    """Core-seconds this machine's cores have spent running anything since boot
    (``/proc/stat``: user, nice, system, irq and softirq; not idle, iowait, or steal, the
    hypervisor's; guest time is inside user)."""
    with open("/proc/stat") as f:
        user, nice, system, _, _, irq, softirq = (int(v) for v in f.readline().split()[1:8])
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def machine_cores() -> int:
    """The cores ``/proc/stat`` counts (those busy_core_seconds adds up)."""
    with open("/proc/stat") as f:
        return sum(1 for line in f if re.match(r"cpu\d+ ", line))


def predict_seconds(model: Path, folder: Path, out: Path, engine: str,
                    objects: bool) -> tuple[int, float, float]:
    """bin/predict's own (images, seconds) line for the DICOMs below ``folder``, and the
    machine's busy core-seconds over the whole run; with ``objects``, also writing the node's
    SEG and SR per image (--dicom-out)."""
    extra = ["--dicom-out", str(out / "dicom")] if objects else []
    busy = busy_core_seconds()
    done = subprocess.run([str(REPO / "bin" / "predict"), "--model", str(model), "--dicom-dir",
                           str(folder), "--out", str(out), "--engine", engine, *extra],
                          capture_output=True, text=True, check=True)
    busy = busy_core_seconds() - busy
    found = re.search(r"(\d+) images predicted .*; ([\d.]+) s, ", done.stdout)
    return int(found.group(1)), float(found.group(2)), busy


def predict_rates(model: Path, files: list[Path], folder: Path, work: Path, engine: str,
                  objects: bool = False) -> dict:
    """bin/predict's images/s as it reports it, and its steady rate past the first batch (the
    reported rate, more lenient, when the run is not measurably longer than one batch); the
    machine's busy core-seconds per image past the first batch."""
    from keras_ptx.config import load_config
    from keras_ptx.rundir import CONFIG

    batch = load_config(str(model / CONFIG)).eval.batch_size
    head = work / "predict-head"
    head.mkdir(parents=True, exist_ok=True)
    for path in files[:batch]:
        shutil.copy(path, head / path.name)
    tag = "-objects" if objects else ""
    n, seconds, busy = predict_seconds(model, folder, work / f"predict{tag}", engine, objects)
    k, head_seconds, head_busy = predict_seconds(model, head, work / f"predict-head-out{tag}",
                                                 engine, objects)
    past_first = n > k and seconds > head_seconds
    steady = (n - k) / (seconds - head_seconds) if past_first else n / seconds
    return {"reported": n / seconds, "steady": steady, "first_batch_s": head_seconds,
            # the fallback includes loading the model, which the rate beside it does not
            "cpu_s_per_image": (busy - head_busy) / (n - k) if past_first else busy / n}


def echo_ms(orthanc, calls: int = 20) -> float:
    """Median ms of a C-ECHO to ``orthanc`` over one association."""
    from pynetdicom import AE

    ae = AE(ae_title=NODE_AE)
    ae.add_requested_context("1.2.840.10008.1.1")
    assoc = ae.associate(services.HOST, orthanc.dicom_port, ae_title=orthanc.aet)
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        assoc.send_c_echo()
        times.append(time.perf_counter() - start)
    assoc.release()
    return statistics.median(times) * 1000


def node_run(model: Path, files: list[Path], paced: list[Path], interval: float, work: Path,
             quiet: float, engine: str, nodelay: bool, objects: str = "seg,sr") -> dict:
    from keras_ptx.node.spool import digest

    services.install()
    if work.exists():                           # an earlier run's spool and Orthanc
        if not {p.name for p in work.iterdir()} <= {"orthanc", "spool", "node.log"}:
            raise SystemExit(f"{work} holds more than a node run: give another --workdir")
        shutil.rmtree(work)
    port = services.free_port()
    orthanc = services.Orthanc(work / "orthanc", {"node": (NODE_AE, port)},
                               nodelay=nodelay).start()
    node = services.NodeProcess(
        ["--model", str(model), "--ae-title", NODE_AE, "--port", str(port), "--allow",
         "STORESCU", "--spool", str(work / "spool"), "--quiet", str(quiet), "--engine", engine,
         "--objects", objects,
         "--send-to", f"ORTHANC@{services.HOST}:{orthanc.dicom_port}"], work / "node.log")
    try:
        echo = echo_ms(orthanc)
        node.start(wait_port=port)
        busy, start = busy_core_seconds(), time.monotonic()
        sent = services.storescu(files, port, NODE_AE, timeout=3600)
        if sent.returncode != 0:
            raise RuntimeError(f"storescu failed: {sent.stderr[-500:]}")
        received = time.monotonic() - start
        services.wait_for(lambda: len(orthanc.ids("SEG")) >= len(files), 3600,
                          "a SEG for every image", interval=0.5)
        seconds, busy = time.monotonic() - start, busy_core_seconds() - busy
        for path in paced:
            next_at = time.monotonic() + interval
            if services.storescu([path], port, NODE_AE).returncode != 0:
                raise RuntimeError("storescu of a paced study failed")
            time.sleep(max(0.0, next_at - time.monotonic()))
        services.wait_for(lambda: len(orthanc.ids("SEG")) >= len(files) + len(paced),
                          600, "a SEG for every paced image", interval=0.5)
    finally:
        node.stop()
        orthanc.stop()
    lines = dict(re.findall(r"study ([0-9a-f]{12}) answered: (\d+ image\(s\).*latency [\d.]+) s",
                            node.text()))
    paced_keys = {digest(pydicom.dcmread(p, stop_before_pixels=True).StudyInstanceUID, 12)
                  for p in paced}

    def latencies(keys):
        return [(int(line.split()[0]), float(line.rsplit(" ", 1)[1]))
                for key, line in lines.items() if keys(key)]
    return {"seconds": seconds, "received_seconds": received, "echo_ms": echo, "busy": busy,
            "latencies": latencies(lambda key: key not in paced_keys),
            "paced_latencies": latencies(lambda key: key in paced_keys)}


def _summary(latencies, quiet: float) -> dict:
    over = [s - (quiet + 2.0 * n) for n, s in latencies]
    seconds = [s for _, s in latencies]
    return {"median_s": statistics.median(seconds), "max_s": max(seconds),
            "studies_over_goal": sum(o > 0 for o in over), "studies": len(seconds)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", type=Path, help="RUN_DIR or export to serve")
    which.add_argument("--random", metavar="ENCODER", help="a random-weight run of ENCODER")
    parser.add_argument("--grid", type=int, default=256, help="--random's image_size")
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--size", type=int, default=1024, help="synthetic image side (px)")
    parser.add_argument("--quiet", type=float, default=2.0, help="the node's --quiet")
    parser.add_argument("--paced", type=int, default=20,
                        help="one-image studies sent one at a time after the flood")
    parser.add_argument("--interval", type=float, default=3.0,
                        help="seconds between two paced studies")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--engine", choices=["tf", "openvino"], default="tf",
                        help="the network's engine, in bin/predict and the node alike")
    parser.add_argument("--orthanc-nagle", action="store_true",
                        help="run Orthanc without TCP_NODELAY=1 (its DCMTK's default)")
    parser.add_argument("--objects", default="seg,sr", help="the node's --objects")
    parser.add_argument("--node-only", action="store_true",
                        help="the node alone (no bin/predict, no ratio): for A/B runs")
    args = parser.parse_args()

    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-node-"))
    model = args.model or random_run(work / "run", args.random, args.grid)
    files = synthetic(work / "dicom", args.images, args.size)
    paced = synthetic(work / "paced", args.paced, args.size, seed=1) if args.paced else []
    if not args.node_only:
        rates = predict_rates(model, files, work / "dicom", work, args.engine)
        predict = rates["steady"]
        with_objects = predict_rates(model, files, work / "dicom", work, args.engine,
                                     objects=True)
    node = node_run(model, files, paced, args.interval, work / "node", args.quiet,
                    args.engine, not args.orthanc_nagle, args.objects)
    rate = len(files) / node["seconds"]
    cores = machine_cores()
    node_cpu = node["busy"] / len(files)
    busy_share = node["busy"] / (cores * node["seconds"])
    print(f"node: {len(files)} images in {node['seconds']:.2f} s, {rate:.2f} images/s "
          f"(--objects {args.objects}, storescu {node['received_seconds']:.1f} s); the machine "
          f"{node_cpu * 1000:.0f} ms of CPU per image, its {cores} cores "
          f"{busy_share:.0%} busy")
    if args.node_only:
        return
    flood = _summary(node["latencies"], args.quiet)
    steady = _summary(node["paced_latencies"], args.quiet) if paced else None
    result = {"images": len(files), "size": args.size, "model": str(model), "engine": args.engine,
              "quiet_s": args.quiet, "predict_images_per_s": round(predict, 2),
              "predict_reported_images_per_s": round(rates["reported"], 2),
              "predict_first_batch_s": round(rates["first_batch_s"], 1),
              "predict_objects_images_per_s": round(with_objects["steady"], 2),
              "node_images_per_s": round(rate, 2), "ratio": round(rate / predict, 3),
              "ratio_same_objects": round(rate / with_objects["steady"], 3),
              "cpu_ms_per_image": {"predict": round(rates["cpu_s_per_image"] * 1000),
                                   "predict_objects": round(with_objects["cpu_s_per_image"]
                                                            * 1000),
                                   "node": round(node_cpu * 1000)},
              "cores_busy": round(busy_share, 3),
              "ratio_ceiling": round(rate / busy_share / predict, 3),
              "storescu_s": round(node["received_seconds"], 1),
              "orthanc_tcp_nodelay": not args.orthanc_nagle,
              "orthanc_echo_ms": round(node["echo_ms"], 1), "flood_latency": flood,
              "paced_latency": steady, "paced_interval_s": args.interval,
              "workdir": str(work)}
    print(json.dumps(result, indent=1))
    paced_cell = f"{steady['median_s']:.1f} / {steady['max_s']:.1f} s" if steady else "-"
    print(f"\n| images | bin/predict img/s (steady) | node img/s | ratio (goal >= 0.8) "
          f"| bin/predict --dicom-out img/s | ratio to it | latency in the flood, median / max "
          f"| latency paced, median / max (goal <= {args.quiet:g} s + 2 s/image) |\n"
          f"|---|---|---|---|---|---|---|---|\n"
          f"| {len(files)} x {args.size} px | {predict:.2f} | {rate:.2f} | {rate / predict:.2f} "
          f"| {with_objects['steady']:.2f} | {rate / with_objects['steady']:.2f} "
          f"| {flood['median_s']:.1f} / {flood['max_s']:.1f} s | {paced_cell} |")


if __name__ == "__main__":
    main()
