"""Export a training run (or an ensemble) as an OpenVINO network for the OpenVINO engine.

``bin/export --format openvino`` writes ``EXPORT_BASE/<version>/``, the layout OpenVINO Model
Server loads (``<base>/<version>/*.xml``; a base of its own, apart from TF Serving's, whose
versions hold SavedModels). The version folder holds what
:func:`keras_ptx.inference.openvino_engine.save` writes (``network.xml`` and ``network.bin``,
the network as every predictor runs it, and ``keras_ptx_openvino.json``) with what
``bin/predict --engine openvino`` needs besides the network: the post-processing rule and where
it came from, the runs and weights, the batch size and the model identity. The network answers
probabilities (maps and image-level), not TF Serving's RLE signatures: the post-processing is
the reader's. It is written and published as the SavedModel is
(:func:`keras_ptx.serving.export.write_version`), the metadata last.
"""
from __future__ import annotations

from keras_ptx.config import Auto, Precision, Tta
from keras_ptx.inference import openvino_engine
from keras_ptx.model.precision import best_inference_precision
from keras_ptx.serving.export import exported_runs, run_metadata, write_version


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
    run = exported_runs(run_dir, export_base, version, checkpoints, "float32")
    predictor = run.predictor(run.tta(tta))

    def write(staging: str, version: int) -> None:
        openvino_engine.save(predictor, staging, precision, metadata={
            **run_metadata(run, predictor.tta, "openvino", precision),
            "batch_size": run.config.eval.batch_size, "version": version})

    return write_version(export_base, version, write, last=openvino_engine.METADATA)
