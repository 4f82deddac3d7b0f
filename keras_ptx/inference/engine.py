"""The engine that runs the network for predict, evaluate and the DICOM node (``--engine``).

``tf``: the runs' :class:`~keras_ptx.inference.runner.Predictor`, computing in each run's
precision. ``openvino``: that predictor built in float32 and converted
(:mod:`keras_ptx.inference.openvino_engine`), compiled to compute in the first run's
``train.mixed_precision`` as this host resolves it, which is what the TF engine computes in too;
or an OpenVINO export (``bin/export --format openvino``), with the rule, TTA and precision it
was exported with. Reading images, the square grid and the post-processing are the project's
own under both.

:func:`open_model` gives what predict and the node run, in two steps as
:class:`~keras_ptx.inference.ensemble.Ensemble` does: opened (the configs or the export's
metadata read, every refusal made), then its :meth:`predictor` built (the networks loaded).
The identity of the answers (:func:`model_identity`, which result objects' UIDs derive from)
names the engine and the precision when they are not TF's float32.
"""
from __future__ import annotations

import hashlib
import os
from typing import Sequence

from keras_ptx.config import Config, Engine, Precision, Tta
from keras_ptx.errors import UserError
from keras_ptx.fileio import exists, join, read_bytes
from keras_ptx.inference import openvino_engine
from keras_ptx.inference.ensemble import Ensemble
from keras_ptx.inference.postprocess import PostProcess, PostProcessError
from keras_ptx.inference.prediction import ModelIdentity
from keras_ptx.model.precision import resolve_mixed_precision

IDENTITY_CHARS = 12
# what an OpenVINO export's metadata holds for predict besides the engine's own (its network)
EXPORT_KEYS = ("network", "image_size", "tta", "normalization", "has_label_head", "precision",
               "postprocess", "postprocess_source", "members", "model_identity", "batch_size")


class EngineError(UserError):
    """A model the engine asked for cannot run."""


def model_identity(run: Ensemble, tta: str, engine: Engine = "tf",
                   precision: Precision = "float32") -> ModelIdentity:
    """A digest of what decides the answers: every member's weights, the rule and the TTA;
    followed by the engine unless TF, and by the precision unless float32."""
    digest = hashlib.sha256()
    for trained, weights in run.weights:
        digest.update(hashlib.sha256(read_bytes(join(trained.path, weights))).digest())
    digest.update(f"{run.post.describe()}|{tta}".encode())
    words = [digest.hexdigest()[:IDENTITY_CHARS]]
    words += [engine] if engine != "tf" else []
    words += [precision] if precision != "float32" else []
    return ModelIdentity(model=" ".join(words))


def network_precision(engine: Engine) -> Precision | None:
    """What the Keras networks are built in for ``engine``: the runs' own (None) for tf,
    float32 for openvino (OpenVinoMissing without the extra)."""
    if engine == "tf":
        return None
    openvino_engine.import_openvino()
    return "float32"


def on_engine(predictor, config: Config, engine: Engine):
    """``predictor`` (built in :func:`network_precision`) as ``engine`` runs it, computing in
    ``config``'s ``train.mixed_precision``."""
    if engine == "tf":
        return predictor
    return openvino_engine.OpenVinoPredictor.from_predictor(predictor, run_precision(config))


def run_precision(config: Config) -> Precision:
    """The precision a run computes in on this host (its ``train.mixed_precision``)."""
    return resolve_mixed_precision(config.train.mixed_precision)


def openvino_export(path) -> str | None:
    """``path`` if it is a version of ``bin/export --format openvino``, else its highest
    integer version holding one (a local base), else None."""
    if exists(join(str(path), openvino_engine.METADATA)):
        return str(path)
    try:
        versions = sorted((int(n) for n in os.listdir(path) if n.isdigit()), reverse=True)
    except OSError:
        return None
    return next((join(str(path), str(v)) for v in versions
                 if exists(join(str(path), str(v), openvino_engine.METADATA))), None)


def open_model(models: str | Sequence[str], checkpoints: int = 1, engine: Engine = "tf"):
    """The model of ``--model`` paths under ``engine``: :class:`RunsOnEngine`, or an
    :class:`OpenVinoExport` (one path, ``--engine openvino``, ``--checkpoints 1``)."""
    paths = [str(models)] if isinstance(models, str) else [str(m) for m in models]
    exports = [export for export in map(openvino_export, paths) if export]
    if not exports:
        return RunsOnEngine(Ensemble(paths, checkpoints, network_precision(engine)), engine)
    if engine != "openvino":
        raise EngineError(f"--model {exports[0]}: an OpenVINO export; run it with --engine "
                          f"openvino")
    if len(paths) > 1:
        raise EngineError(f"--model {exports[0]}: an OpenVINO export is one model; give it "
                          f"alone (export an ensemble as one)")
    if checkpoints != 1:
        raise EngineError(f"--checkpoints {checkpoints}: {exports[0]} is an OpenVINO export, "
                          f"its checkpoints chosen when it was exported")
    return OpenVinoExport(exports[0])


class RunsOnEngine:
    """Runs, fold folders or an ensemble folder (an :class:`Ensemble` built in
    :func:`network_precision`) answering through ``engine``."""

    def __init__(self, run: Ensemble, engine: Engine):
        self.run, self.engine = run, engine
        self.post, self.post_source = run.post, run.post_source
        self.batch_size = run.config.eval.batch_size
        self.ensemble = run.describe() if len(run.weights) > 1 else None

    def folders(self) -> list[str]:
        return self.run.folders()

    def tta(self, requested: Tta | None = None) -> Tta:
        return self.run.tta(requested)

    def predictor(self, tta: Tta):
        return on_engine(self.run.predictor(tta), self.run.config, self.engine)

    def identity(self, tta: Tta) -> ModelIdentity:
        if self.engine == "tf":
            return model_identity(self.run, tta)
        return model_identity(self.run, tta, self.engine, run_precision(self.run.config))


class OpenVinoExport:
    """A folder of ``bin/export --format openvino``: its network, with the rule, TTA, members
    and identity it was exported with."""

    def __init__(self, folder: str):
        openvino_engine.import_openvino()
        self.folder = folder
        self.metadata = openvino_engine.read_metadata(folder)
        shown = join(folder, openvino_engine.METADATA)
        missing = [key for key in EXPORT_KEYS if key not in self.metadata]
        if missing:
            raise openvino_engine.OpenVinoError(f"{shown}: no {', '.join(missing)}; export the "
                                                f"run again with this version")
        try:
            self.post = PostProcess.from_dict(self.metadata["postprocess"])
        except (PostProcessError, TypeError) as exc:
            raise PostProcessError(f"{shown}: postprocess: {exc}") from None
        self.post_source = f"{shown} ({self.metadata['postprocess_source']})"
        self.batch_size = self.metadata["batch_size"]
        members = len(self.metadata["members"])
        self.ensemble = f"{members} models" if members > 1 else None

    def folders(self) -> list[str]:
        return [self.folder]

    def tta(self, requested: Tta | None = None) -> Tta:
        """The TTA inside the network; EngineError when another one is ``requested``."""
        exported = self.metadata["tta"]
        if requested not in (None, exported):
            raise EngineError(f"--tta {requested}: {self.folder} was exported with TTA "
                              f"{exported}, inside its network; export it again with --tta "
                              f"{requested}")
        return exported

    def predictor(self, tta: Tta):
        return openvino_engine.OpenVinoPredictor.load(self.folder)

    def identity(self, tta: Tta) -> ModelIdentity:
        return ModelIdentity(model=self.metadata["model_identity"])
