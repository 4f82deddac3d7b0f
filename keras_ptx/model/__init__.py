"""The segmentation network, its losses and metrics (nothing here reads files but weights)."""
from keras_ptx.model.encoders import ENCODERS, WeightsError, build_encoder, feature_layer_names
from keras_ptx.model.flops import count_flops, size_summary
from keras_ptx.model.losses import make_losses
from keras_ptx.model.metrics import CompetitionScore, PerImageIoU, make_metrics
from keras_ptx.model.precision import resolve_jit_compile, resolve_mixed_precision
from keras_ptx.model.unetpp import build_model, output_names

__all__ = ["ENCODERS", "WeightsError", "build_encoder", "feature_layer_names", "count_flops",
           "size_summary", "make_losses", "CompetitionScore", "PerImageIoU", "make_metrics",
           "resolve_jit_compile", "resolve_mixed_precision", "build_model", "output_names"]
