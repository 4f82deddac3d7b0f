"""Warm start (``train.init_from``): a new run begins with a finished run's best weights.

The source network is rebuilt from the source run's config.yaml (at its own image size) with
its best.weights.h5, and its weights go into the new network layer by layer, by name. UNet++
is fully convolutional, so its weights have the same shapes at any input size: a run at 512
starts a run at 1024 (the 1st place SIIM recipe, with ``train.freeze_encoder_epochs``). Shapes
that differ (another encoder, other ``model.decoder_filters``) refuse the warm start, naming
the layers, before RUN_DIR is written: :func:`plan_init` compares the two networks' weight
shapes, built in a throwaway graph (no weights are initialised there). A layer of the new
network that the source lacks (a head it did not have) keeps its fresh initial weights, and
the log names it. Only the chief reads the source run; the other workers receive its weights.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from keras_ptx import rundir
from keras_ptx.config import Config
from keras_ptx.fileio import exists, join
from keras_ptx.model.unetpp import build_model_to_load
from keras_ptx.tf_setup import tf
from keras_ptx.training import TrainingError
from keras_ptx.training.strategy import is_chief, sync_from_chief

NAMED = 10      # layers a refusal names (an encoder of another size differs in hundreds)


@dataclass(frozen=True)
class InitPlan:
    run: str                            # the source RUN_DIR
    layers: tuple[str, ...]             # the new network's layers that take the source's weights
    unmatched: tuple[str, ...] = ()     # the new network's layers with weights the source lacks

    def describe(self) -> str:
        line = f"starting from the best weights of {self.run} ({len(self.layers)} layers)"
        if self.unmatched:
            line += (f"; {len(self.unmatched)} layers left unmatched (fresh weights): "
                     f"{', '.join(self.unmatched)}")
        return line

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict) -> "InitPlan":
        return cls(raw["run"], tuple(raw["layers"]), tuple(raw["unmatched"]))


def plan_init(config: Config) -> InitPlan:
    """Which layers of ``config``'s network take ``train.init_from``'s weights; TrainingError
    (or RunDirError) if that is not a finished run or its network has other weight shapes."""
    run = config.train.init_from
    source_config = rundir.load_run_config(run)
    metrics = rundir.read_json(run, rundir.METRICS) or {}
    if not metrics.get("completed") or not exists(join(run, rundir.BEST_WEIGHTS)):
        raise TrainingError(f"train.init_from {run}: not a finished run (no {rundir.BEST_WEIGHTS}"
                            f" or {rundir.METRICS} of a completed run); finish it first")
    source, target = _weight_shapes(source_config), _weight_shapes(config)
    differ = [name for name in target if name in source and source[name] != target[name]]
    if differ or not source.keys() & target.keys():
        model, old = config.model, source_config.model
        named = ", ".join(f"{name} {source[name]} -> {target[name]}" for name in differ[:NAMED])
        more = f" and {len(differ) - NAMED} more" if len(differ) > NAMED else ""
        raise TrainingError(
            f"train.init_from {run}: its network ({old.encoder}, decoder "
            f"{list(old.decoder_filters)}) does not fit this one ({model.encoder}, decoder "
            f"{list(model.decoder_filters)}): "
            + (f"{len(differ)} layers have weights of other shapes: {named}{more}" if differ
               else "no layer in common"))
    return InitPlan(run, tuple(name for name in target if name in source),
                    tuple(name for name in target if name not in source))


def _weight_shapes(config: Config) -> dict[str, list[tuple]]:
    """{layer name: its weights' shapes} of ``config``'s network, for layers with weights."""
    with tf.Graph().as_default():
        model = build_model_to_load(config)
        return {layer.name: [tuple(w.shape) for w in layer.weights]
                for layer in model.layers if layer.weights}


def load_init_weights(model: tf.keras.Model, plan: InitPlan, strategy) -> None:
    """Give ``plan.layers`` of ``model`` the source run's weights (the chief reads them; every
    worker calls this)."""
    variables = [w for name in plan.layers for w in model.get_layer(name).weights]
    values = None
    if is_chief(strategy):
        source = rundir.load_model(plan.run, rundir.load_run_config(plan.run))
        values = [v for name in plan.layers for v in source.get_layer(name).get_weights()]
    sync_from_chief(strategy, variables, values)
