#!/usr/bin/env python
"""The network's inference latency and training step time against the peer,
segmentation_models_pytorch's UnetPlusPlus with the same encoder and decoder widths, on this
CPU, alternating between the two.

keras_ptx: the UNet++ as every predictor and SavedModel runs it (the mask and label outputs,
no post-processing; batch norms folded into the convolutions and the weights frozen into
constants), built under each Keras precision policy asked for (``float32``,
``mixed_bfloat16``); ``--stages`` adds the network as trained and folded but not frozen.
Its batch-norm statistics are random (``trained_like.py``). The peer:
``UnetPlusPlus(encoder_name=..., encoder_weights=None, classes=1)`` on the same encoder
(:data:`ENCODERS`: smp's own EfficientNets, timm's ``tu-tf_efficientnetv2_b0`` for V2) in eval
mode under ``torch.no_grad()``, in float32 (its default) and under
``torch.autocast("cpu", dtype=torch.bfloat16)`` (its best setting on a CPU with native
bfloat16). Random weights (latency does not depend on them), 256 x 256 inputs,
batch 1 and 16.

``--train-batch N`` also times one training step per image at batch N (``--batches`` apply
to inference only): keras_ptx's compiled ``train_on_batch`` of the network as trained (mask
and label heads, the default loss, Adam; XLA as ``train.jit_compile: auto`` decides) against
the peer with its image-level head (``aux_params``), BCE + Dice on the mask plus 0.2 BCE on
the label, Adam, ``backward`` and ``step``, under the same precisions (mixed_bfloat16: Keras'
policy; smp: bfloat16 autocast).

Each measurement runs in its own process, so the two frameworks never share a process or its
thread pools; rounds alternate keras_ptx and the peer, per encoder, and the table gives the
median ms per image over rounds. PyTorch and segmentation-models-pytorch are not dependencies
of keras_ptx: install them in a separate environment and pass its interpreter, e.g.

    python3.11 -m venv /work/bench-venv
    /work/bench-venv/bin/pip install torch==2.14.1 torchvision==0.29.1 \
        segmentation-models-pytorch==0.6.0
    .venv/bin/python bench/bench_peer.py --torch-python /work/bench-venv/bin/python --rounds 3 \
        --stages

``--engine openvino`` runs both networks under OpenVINO instead (inference only, #32):
keras_ptx's through its own engine (``OpenVinoPredictor.from_gray``: the network folded and
frozen as predict runs it, uint8 squares in, probabilities out), the peer converted from
PyTorch by ``openvino.convert_model``; each compiled for the CPU with the inference precision
hint f32 (float32) or bf16 (mixed_bfloat16). ``--deepest-feature block --skip-features block
--inner-widths encoder`` build keras_ptx's UNet++ as smp's is built: on the encoder taps smp
uses, its inner nodes as wide as those features (under either engine). The peer's environment then also needs openvino
(``pip install openvino==2026.4.1``).

Run on a quiet machine.
"""
from __future__ import annotations

import argparse
import functools
import json
import platform
import statistics
import subprocess
import sys
import time

# keras_ptx encoder -> smp encoder_name
ENCODERS = {"efficientnetb0": "efficientnet-b0", "efficientnetb4": "efficientnet-b4",
            "efficientnetv2b0": "tu-tf_efficientnetv2_b0"}


def _time(run, batch: int, seconds: float) -> float:
    """Median ms per image of ``run()`` (one batch) over calls lasting about ``seconds``."""
    for _ in range(2):                                  # warm-up (tracing, allocation)
        run()
    times = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(times) < 3:
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000 / batch


# model.deepest_feature, model.skip_features, model.inner_widths
DEFAULT_NETWORK = ("top", "expand", "level")


def _keras_config(encoder: str, size: int, policy: str, network: tuple = DEFAULT_NETWORK):
    from keras_ptx.config import load_config
    from keras_ptx.model.encoders import REGISTRY

    return load_config(None, [f"model.encoder={encoder}", "model.weights=none",
                              f"model.normalization={REGISTRY[encoder].normalization}",
                              f"model.deepest_feature={network[0]}",
                              f"model.skip_features={network[1]}",
                              f"model.inner_widths={network[2]}",
                              f"data.image_size={size}", f"train.mixed_precision={policy}"])


def _ov_hint(policy: str) -> str:
    return "bf16" if policy == "mixed_bfloat16" else "f32"


def measure_keras(encoder: str, size: int, batches, policies, seconds: float,
                  stages: bool = False, train_batch: int = 0, engine: str = "tf",
                  network: tuple = DEFAULT_NETWORK) -> list[dict]:
    import numpy as np

    from keras_ptx.model import build_model
    from keras_ptx.model.fold import fold_batch_norm
    from keras_ptx.model.freeze import freeze
    from keras_ptx.tf_setup import tf
    from trained_like import randomise_batch_norms

    if engine == "openvino":
        return _keras_openvino(encoder, size, batches, policies, seconds, network)
    rows = []
    for policy in policies:
        config = _keras_config(encoder, size, policy, network)
        if train_batch:
            rows.append(_keras_training(config, train_batch, seconds))
        trained = build_model(config)
        randomise_batch_norms(trained)
        folded = fold_batch_norm(trained)
        variants = {"keras_ptx": freeze(folded)}
        if stages:
            for name, model in (("keras_ptx as trained", trained), ("keras_ptx folded", folded)):
                variants[name] = tf.function(lambda x, model=model: model(x, training=False))
        for batch in batches:
            images = tf.constant(np.random.default_rng(0).normal(
                size=(batch, size, size, 3)).astype(np.float32))
            for name, forward in variants.items():
                rows.append({"mode": "inference", "framework": name, "encoder": encoder,
                             "precision": policy, "batch": batch,
                             "ms": _time(lambda: forward(images), batch, seconds)})
    return rows


def _keras_openvino(encoder: str, size: int, batches, policies, seconds: float,
                    network: tuple) -> list[dict]:
    """keras_ptx's OpenVINO engine: the float32 network converted once, compiled per policy."""
    import numpy as np

    from keras_ptx.inference.openvino_engine import OpenVinoPredictor
    from keras_ptx.inference.runner import Predictor
    from keras_ptx.model import build_model
    from trained_like import randomise_batch_norms

    model = build_model(_keras_config(encoder, size, "float32", network))
    randomise_batch_norms(model)
    predictor = Predictor(model)
    squares = np.random.default_rng(0).integers(0, 256, (max(batches), size, size), np.uint8)
    rows = []
    for policy in policies:
        engine = OpenVinoPredictor.from_predictor(predictor, policy)
        for batch in batches:
            rows.append({"mode": "inference",
                         "framework": f"keras_ptx OpenVINO ({'/'.join(network)})",
                         "encoder": encoder, "precision": _ov_hint(policy), "batch": batch,
                         "ms": _time(lambda b=batch: engine.from_gray(squares[:b]), batch,
                                     seconds)})
    return rows


def _keras_training(config, batch: int, seconds: float) -> dict:
    """ms per image of one compiled training step of ``config``'s network."""
    from keras_ptx.model import (build_model, make_losses, make_metrics,
                                 resolve_jit_compile)
    from keras_ptx.tf_setup import tf

    model = build_model(config)
    losses, weights = make_losses(config)
    model.compile(tf.keras.optimizers.Adam(1e-4), loss=losses, loss_weights=weights,
                  metrics=make_metrics(config),
                  jit_compile=resolve_jit_compile(config.train.jit_compile))
    images, masks, labels = _training_batch(batch, config.data.image_size)
    targets = {name: labels if name == "label" else masks for name in model.output_names}
    ms = _time(lambda: model.train_on_batch(images, targets), batch, seconds)
    tf.keras.backend.clear_session()
    return {"mode": "training", "framework": "keras_ptx", "encoder": config.model.encoder,
            "precision": config.train.mixed_precision, "batch": batch, "ms": ms}


def _training_batch(batch: int, size: int):
    """Random NHWC images, masks holding a square lesion in every other image, labels."""
    import numpy as np

    rng = np.random.default_rng(0)
    images = rng.normal(size=(batch, size, size, 3)).astype(np.float32)
    masks = np.zeros((batch, size, size, 1), np.float32)
    masks[::2, size // 4: size // 2, size // 4: size // 2] = 1.0
    return images, masks, masks.max(axis=(1, 2))


def measure_peer(encoder: str, size: int, batches, policies, seconds: float,
                 train_batch: int = 0, engine: str = "tf") -> list[dict]:
    import segmentation_models_pytorch as smp
    import torch

    model = smp.UnetPlusPlus(encoder_name=ENCODERS[encoder], encoder_weights=None,
                             classes=1).eval()
    if engine == "openvino":
        return _peer_openvino(model, encoder, size, batches, policies, seconds)
    rows = []
    for policy in policies:
        if train_batch:
            rows.append(_peer_training(encoder, size, policy, train_batch, seconds))
        for batch in batches:
            images = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))

            def run():
                with torch.no_grad(), torch.autocast(
                        "cpu", dtype=torch.bfloat16, enabled=policy == "mixed_bfloat16"):
                    model(images)

            rows.append({"mode": "inference", "framework": f"smp {smp.__version__}",
                         "encoder": encoder, "precision": _peer_precision(policy),
                         "batch": batch, "ms": _time(run, batch, seconds)})
    return rows


def _peer_openvino(model, encoder: str, size: int, batches, policies,
                   seconds: float) -> list[dict]:
    """The peer converted to OpenVINO (dynamic batch), compiled per policy."""
    import numpy as np
    import torch
    sys.modules.setdefault("openvino_telemetry", None)      # no usage reports over the network
    import openvino as ov

    converted = ov.convert_model(model, example_input=torch.randn(1, 3, size, size),
                                 input=[ov.PartialShape([-1, 3, size, size])])
    images = np.random.default_rng(0).normal(size=(max(batches), 3, size, size)).astype(
        np.float32)
    version = ov.get_version().split("-")[0]
    rows = []
    for policy in policies:
        request = ov.Core().compile_model(converted, "CPU", {
            ov.properties.hint.inference_precision: _ov_hint(policy)}).create_infer_request()
        for batch in batches:
            rows.append({"mode": "inference", "framework": f"smp OpenVINO {version}",
                         "encoder": encoder, "precision": _ov_hint(policy), "batch": batch,
                         "ms": _time(lambda b=batch: request.infer({0: images[:b]}), batch,
                                     seconds)})
    return rows


def _peer_precision(policy: str) -> str:
    return policy if policy == "float32" else "autocast bfloat16"


def _peer_training(encoder: str, size: int, policy: str, batch: int, seconds: float) -> dict:
    """ms per image of one training step of the peer with its image-level head."""
    import segmentation_models_pytorch as smp
    import torch

    model = smp.UnetPlusPlus(encoder_name=ENCODERS[encoder], encoder_weights=None, classes=1,
                             aux_params={"classes": 1}).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    dice, bce = smp.losses.DiceLoss("binary"), torch.nn.BCEWithLogitsLoss()
    images, masks, labels = (torch.from_numpy(a) for a in _training_batch(batch, size))
    images, masks = images.permute(0, 3, 1, 2).contiguous(), masks.permute(0, 3, 1, 2)

    def step():
        optimizer.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=policy == "mixed_bfloat16"):
            mask_logits, label_logits = model(images)
            loss = (bce(mask_logits.float(), masks) + dice(mask_logits.float(), masks)
                    + 0.2 * bce(label_logits.float(), labels))
        loss.backward()
        optimizer.step()

    return {"mode": "training", "framework": f"smp {smp.__version__}", "encoder": encoder,
            "precision": _peer_precision(policy), "batch": batch,
            "ms": _time(step, batch, seconds)}


def _child(python: str, side: str, args) -> list[dict]:
    command = [python, __file__, "--side", side, "--encoders", *args.encoders,
               "--size", str(args.size), "--batches", *map(str, args.batches),
               "--precisions", *args.precisions, "--seconds", str(args.seconds),
               "--train-batch", str(args.train_batch), "--engine", args.engine,
               "--deepest-feature", args.deepest_feature, "--skip-features", args.skip_features,
               "--inner-widths", args.inner_widths,
               *(["--stages"] if args.stages and side == "keras" else [])]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode:
        sys.exit(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--torch-python", help="interpreter with torch and "
                        "segmentation-models-pytorch (required unless --side)")
    parser.add_argument("--encoders", nargs="+", default=list(ENCODERS), choices=list(ENCODERS))
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 16])
    parser.add_argument("--precisions", nargs="+", default=["float32", "mixed_bfloat16"],
                        choices=["float32", "mixed_bfloat16"])
    parser.add_argument("--seconds", type=float, default=8.0, help="per measurement")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--stages", action="store_true", help="also time keras_ptx's network "
                        "as trained and with its batch norms folded but not frozen")
    parser.add_argument("--train-batch", type=int, default=0, help="also time a training "
                        "step at this batch (0: inference only)")
    parser.add_argument("--engine", choices=["tf", "openvino"], default="tf",
                        help="openvino: both networks under OpenVINO (inference only)")
    parser.add_argument("--deepest-feature", choices=["top", "block"], default="top",
                        help="keras_ptx's model.deepest_feature")
    parser.add_argument("--skip-features", choices=["expand", "block"], default="expand",
                        help="keras_ptx's model.skip_features")
    parser.add_argument("--inner-widths", choices=["level", "encoder"], default="level",
                        help="keras_ptx's model.inner_widths")
    parser.add_argument("--side", choices=["keras", "peer"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:                                   # a child: one framework, print JSON rows
        measure = functools.partial(
            measure_keras, stages=args.stages, train_batch=args.train_batch,
            engine=args.engine,
            network=(args.deepest_feature, args.skip_features, args.inner_widths)) \
            if args.side == "keras" else functools.partial(
                measure_peer, train_batch=args.train_batch, engine=args.engine)
        print(json.dumps([row for encoder in args.encoders for row in measure(
            encoder, args.size, args.batches, args.precisions, args.seconds)]))
        return
    if not args.torch_python:
        parser.error("--torch-python is required")
    results: dict[tuple, list[float]] = {}
    for round_ in range(args.rounds):
        for encoder in args.encoders:
            child = argparse.Namespace(**{**vars(args), "encoders": [encoder]})
            sides = [(sys.executable, "keras"), (args.torch_python, "peer")]
            for python, side in sides if round_ % 2 == 0 else sides[::-1]:
                for row in _child(python, side, child):
                    key = (row["mode"], row["encoder"], row["batch"], row["framework"],
                           row["precision"])
                    results.setdefault(key, []).append(row["ms"])
                    print(f"round {round_ + 1}: {' '.join(map(str, key))}: {row['ms']:.1f} ms",
                          file=sys.stderr, flush=True)
    print(f"{platform.processor() or platform.machine()}, {args.rounds} rounds, "
          f"{args.size}x{args.size}; ms per image, median (min-max)\n")
    print("| mode | encoder | batch | network | precision | ms / image | range |")
    print("|---|---|---:|---|---|---:|---|")
    for key, values in sorted(results.items()):
        print(f"| {' | '.join(map(str, key))} | {statistics.median(values):.1f} | "
              f"{min(values):.1f}-{max(values):.1f} |")


if __name__ == "__main__":
    main()
