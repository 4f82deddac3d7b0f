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
import reprlib
from typing import Sequence

from keras_ptx.config import (MAX_BATCH, MAX_IMAGE_SIZE, SIZE_MULTIPLE, Config, ConfigError,
                              Engine, Normalization, Precision, Tta, check_image_size, choices)
from keras_ptx.errors import UserError
from keras_ptx.fileio import join, read_bytes
from keras_ptx.inference import openvino_engine
from keras_ptx.inference.ensemble import Ensemble
from keras_ptx.inference.postprocess import PostProcess, PostProcessError
from keras_ptx.inference.prediction import ModelIdentity
from keras_ptx.inference.versions import model_version
from keras_ptx.model.precision import resolve_mixed_precision

IDENTITY_CHARS = 12


def _one_of(values: tuple) -> tuple:
    return (lambda value: any(type(value) is type(v) and value == v for v in values),
            f"one of {', '.join(map(str, values))}")


def _filled(kind: type, what: str) -> tuple:
    return lambda value: isinstance(value, kind) and len(value) > 0, what


def _image_size(value) -> bool:
    if type(value) is not int:
        return False
    try:
        check_image_size(value)
    except ConfigError:
        return False
    return True


# What predict reads of an OpenVINO export's metadata (openvino_engine.save and
# serving.openvino_export write it): key -> (whether a value is usable, what it must be).
EXPORT_CHECKS = {
    "network": _one_of((openvino_engine.NETWORK,)),
    "image_size": (_image_size, f"a multiple of {SIZE_MULTIPLE} up to {MAX_IMAGE_SIZE}"),
    "tta": _one_of(choices(Tta)),
    "normalization": _one_of(choices(Normalization)),
    "has_label_head": _one_of((True, False)),
    "precision": _one_of(choices(Precision)),
    "postprocess": _filled(dict, "a mapping"),
    "postprocess_source": _filled(str, "text"),
    "members": _filled(list, "a list of the runs"),
    "model_identity": _filled(str, "text"),
    "batch_size": (lambda value: type(value) is int and 1 <= value <= MAX_BATCH,
                   f"a whole number from 1 to {MAX_BATCH}"),
}


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
    return model_version(path, openvino_engine.METADATA)


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


def check_export_metadata(metadata: dict, shown: str) -> None:
    """OpenVinoError naming the metadata file ``shown`` and its first key that
    :data:`EXPORT_CHECKS` finds missing or unusable."""
    missing = [key for key in EXPORT_CHECKS if key not in metadata]
    if missing:
        raise openvino_engine.OpenVinoError(f"{shown}: no {', '.join(missing)}; export the run "
                                            f"again with this version")
    for key, (usable, what) in EXPORT_CHECKS.items():
        if not usable(metadata[key]):
            raise openvino_engine.OpenVinoError(
                f"{shown}: {key} is {reprlib.repr(metadata[key])}, expected {what}; export the "
                f"run again")


class OpenVinoExport:
    """A folder of ``bin/export --format openvino``: its network, with the rule, TTA, members
    and identity it was exported with."""

    def __init__(self, folder: str):
        openvino_engine.import_openvino()
        self.folder = folder
        self.metadata = openvino_engine.read_metadata(folder)
        shown = join(folder, openvino_engine.METADATA)
        check_export_metadata(self.metadata, shown)
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
