"""Export a training run (or an ensemble) as an OpenVINO network for the OpenVINO engine.

The folder holds what :func:`keras_ptx.inference.openvino_engine.save` writes (``network.xml``
and ``network.bin``, the network as every predictor runs it, and ``keras_ptx_openvino.json``)
with what ``bin/predict`` needs besides the network: the post-processing rule and where it came
from, the runs and weights, and the model identity. It is written under a temporary name and
published whole, the metadata last (:func:`keras_ptx.fileio.publish_folder`).
"""
from __future__ import annotations

import shutil

from keras_ptx.config import Auto, Precision, Tta
from keras_ptx.fileio import check_openable, exists, publish_folder, staging_folder
from keras_ptx.inference import openvino_engine
from keras_ptx.inference.ensemble import Ensemble
from keras_ptx.inference.predict import model_identity
from keras_ptx.model.precision import best_inference_precision
from keras_ptx.serving.export import ExportError

ENGINE = "openvino"                     # in the model identity: another engine, other answers


def export_openvino(run_dir, out, tta: Tta | None = None, precision: Precision | Auto = "float32",
                    checkpoints: int = 1) -> str:
    """Write the best model of ``run_dir`` (or the ensemble of several runs or fold folders,
    each with its ``checkpoints`` best epochs) to the new folder ``out``; returns ``out``.

    Rule and TTA are those ``bin/predict`` would use, as in
    :func:`keras_ptx.serving.export.export_run`; ``precision`` is what the network is compiled
    for when loaded (``auto``: this host's best).
    """
    openvino_engine.import_openvino()               # refused before anything is built
    if precision == "auto":
        precision = best_inference_precision()
    out = str(out)
    check_openable(out, "--out")
    if exists(out):
        raise ExportError(f"--out {out}: already exists; an export is never overwritten")
    run = Ensemble(run_dir, checkpoints, "float32")
    post = run.post
    predictor = run.predictor(run.tta(tta))
    identity = f"{model_identity(run, predictor.tta).model} {ENGINE}"
    if precision != "float32":
        identity += f" {precision}"
    staging = staging_folder(out)
    try:
        openvino_engine.save(predictor, staging, precision, metadata={
            "run_dir": run.paths[0] if len(run.paths) == 1 else run.paths,
            "members": run.members(), "postprocess": post.to_dict(),
            "postprocess_rule": post.describe(), "postprocess_source": run.post_source,
            "model_identity": identity})
        publish_folder(staging, out, last=openvino_engine.METADATA)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out
