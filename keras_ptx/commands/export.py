"""``bin/export``: write a training run as a TF Serving SavedModel version, or as an OpenVINO
network version."""
from __future__ import annotations

import click

from keras_ptx.cli import command as cli_command
from keras_ptx.commands.options import ensemble_options
from keras_ptx.config import Precision, Tta, choices


@cli_command("export",
               help="Export RUN_DIR's best model to EXPORT_BASE/<version>/ for TF Serving: "
                    "signatures serving_default (encoded PNG/JPEG bytes of any size: mask, "
                    "RLE, probability), serving_compact (the same without the mask and "
                    "probability map) and predict_image (float32 gray images on the model's "
                    "grid), with decoding, resizing, normalisation and the run's "
                    "post-processing inside the graph. --format openvino writes the network "
                    "as OpenVINO IR instead (network.xml, network.bin, keras_ptx_openvino.json: "
                    "probabilities, for bin/predict --engine openvino or OpenVINO Model Server; "
                    "give it a base of its own).")
@ensemble_options
@click.option("--out", "export_base", required=True,
              help="TF Serving model base path (local or gs://); versions go beneath it.")
@click.option("--version", type=click.IntRange(min=1), default=None,
              help="Version number (default: one above the highest existing). Never overwrites.")
@click.option("--tta", type=click.Choice(choices(Tta)), default=None,
              help="Test-time augmentation inside the graph (default: the one the run's "
                   "postprocess.json was tuned with, else its eval.tta).")
@click.option("--format", "layout", type=click.Choice(["tf", "openvino"]), default="tf",
              show_default=True,
              help="tf: a SavedModel for TF Serving; openvino: OpenVINO IR (pip install "
                   "'keras_ptx[openvino]'), compiled for --precision when loaded.")
@click.option("--precision", type=click.Choice([*choices(Precision), "auto"]),
              default="float32", show_default=True,
              help="What the graph computes in, whatever the run trained in and whatever this "
                   "host has: mixed_float16 pays off only where the server has a GPU, "
                   "mixed_bfloat16 on a CPU with AVX512_BF16 or AMX; auto: this host's best, "
                   "for a server like it.")
def command(run_dir, checkpoints, export_base, version, tta, layout, precision):
    if layout == "openvino":
        from keras_ptx.inference.openvino_engine import NETWORK, read_metadata
        from keras_ptx.serving.openvino_export import export_openvino

        path = export_openvino(run_dir, export_base, version, tta, precision, checkpoints)
        meta, contents = read_metadata(path), f"OpenVINO IR: {NETWORK}"
    else:
        from keras_ptx.serving.export import export_run, read_metadata

        path = export_run(run_dir, export_base, version, tta, precision, checkpoints)
        meta = read_metadata(path)
        contents = f"signatures: {', '.join(meta['signatures'])}"
    members = "" if len(meta["members"]) == 1 else f" ({len(meta['members'])} models averaged)"
    click.echo(f"exported {', '.join(run_dir)}{members} -> {path}\n"
               f"  {contents}\n"
               f"  tta: {meta['tta']}, precision: {meta['precision']}\n"
               f"  post-processing: {meta['postprocess_rule']} ({meta['postprocess_source']})")
