"""Export a training run (or an ensemble) as an OpenVINO network for the OpenVINO engine.

``bin/export --format openvino`` writes ``EXPORT_BASE/<version>/``, the layout OpenVINO Model
Server loads (``<base>/<version>/*.xml``; a base of its own, apart from TF Serving's, whose
versions hold SavedModels). The version folder holds what
:func:`keras_ptx.inference.openvino_engine.save` writes (``network.xml`` and ``network.bin``,
the network as every predictor runs it, and ``keras_ptx_openvino.json``) with what
``bin/predict --engine openvino`` needs besides the network: the post-processing rule and where
it came from, the runs and weights, the batch size and the model identity. The network answers
probabilities (maps and image-level), not TF Serving's RLE signatures: the post-processing is
the reader's. It is written under a temporary name and published whole, the metadata last
(:func:`keras_ptx.fileio.publish_folder`).
"""
from __future__ import annotations

import shutil

from keras_ptx.config import Auto, Precision, Tta
from keras_ptx.fileio import check_openable, check_output, join, publish_folder, staging_folder
from keras_ptx.inference import openvino_engine
from keras_ptx.inference.engine import model_identity
from keras_ptx.inference.ensemble import Ensemble
from keras_ptx.model.precision import best_inference_precision
from keras_ptx.serving.export import check_version_free, next_version


def export_openvino(run_dir, export_base, version: int | None = None, tta: Tta | None = None,
                    precision: Precision | Auto = "float32", checkpoints: int = 1) -> str:
    """Write the best model of ``run_dir`` (or the ensemble of several runs or fold folders,
    each with its ``checkpoints`` best epochs) to ``export_base/<version>/`` (default: the
    next free version; an existing one is never overwritten); returns that path.

    Rule and TTA are those ``bin/predict`` would use, as in
    :func:`keras_ptx.serving.export.export_run`; ``precision`` is what the network is compiled
    for when loaded (``auto``: this host's best).
    """
    openvino_engine.import_openvino()               # refused before anything is built
    if precision == "auto":
        precision = best_inference_precision()
    check_openable(export_base, "--out")
    run = Ensemble(run_dir, checkpoints, "float32")
    check_output(export_base, "--out", {"--model": run.folders()})
    version = next_version(export_base) if version is None else version
    check_version_free(export_base, version)
    post = run.post
    predictor = run.predictor(run.tta(tta))
    final = join(str(export_base), str(version))
    staging = staging_folder(final)
    try:
        openvino_engine.save(predictor, staging, precision, metadata={
            "run_dir": run.paths[0] if len(run.paths) == 1 else run.paths,
            "members": run.members(), "postprocess": post.to_dict(),
            "postprocess_rule": post.describe(), "postprocess_source": run.post_source,
            "model_identity": model_identity(run, predictor.tta, "openvino", precision).model,
            "batch_size": run.config.eval.batch_size, "version": version})
        check_version_free(export_base, version)
        publish_folder(staging, final, last=openvino_engine.METADATA)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final
