"""``keras-ptx doctor``: what this machine gives a training run, and the settings that suit it.

It lists the devices and TensorFlow's build (CUDA, cuDNN), then times one training step of the
configured network (weights ``none``: nothing is downloaded) with XLA off and on, in float32 and
in mixed_float16: the first step (tracing, and with XLA compiling: most of the doctor's time)
and the steady ones. Then the input pipeline's augmented images per second with 1 .. N
augmentation calls, on records it writes to a temporary folder at ``data.image_size``, against
what the recommended step consumes. It ends with the settings it recommends:
``train.jit_compile``, ``train.mixed_precision`` and ``data.num_parallel_calls`` (and keeps
``train.batch_size``, saying whether the input pipeline keeps up with it).
"""
from __future__ import annotations

import dataclasses
import os
import statistics
import tempfile
import time
from dataclasses import dataclass

import numpy as np

from keras_ptx.config import Config, ConfigError
from keras_ptx.tf_setup import tf

HEADROOM = 1.2          # the pipeline should feed this many times what the step consumes
GAIN = 1.1              # XLA or mixed precision is recommended only when this much faster
# What the doctor's own data may take: its random batch, and the records it writes and caches.
MAX_DATA_BYTES = 2 << 30


@dataclass
class StepTiming:
    jit: bool
    mixed: bool
    batch: int
    first_s: float | None = None        # the first step: tracing (and XLA compilation)
    steady_s: float | None = None       # median of the steps after it
    error: str | None = None            # why this setting could not train, if it could not

    @property
    def images_per_s(self) -> float | None:
        return None if self.steady_s is None else self.batch / self.steady_s


def machine() -> list[str]:
    """Lines naming the devices and TensorFlow's build."""
    build = tf.sysconfig.get_build_info()
    devices = tf.config.list_physical_devices()
    from tf_keras import __version__ as keras_version

    lines = [f"TensorFlow {tf.__version__} (tf-keras {keras_version}), "
             f"{'CUDA ' + str(build.get('cuda_version')) if build.get('is_cuda_build') else 'no CUDA'}"
             f"{', cuDNN ' + str(build['cudnn_version']) if build.get('cudnn_version') else ''}",
             f"{os.cpu_count()} CPU cores; devices: " +
             ", ".join(f"{d.device_type}:{d.name.rsplit(':', 1)[-1]}" for d in devices)]
    for gpu in tf.config.list_physical_devices("GPU"):
        details = tf.config.experimental.get_device_details(gpu)
        lines.append(f"  {gpu.name}: {details.get('device_name', '?')}, compute capability "
                     f"{details.get('compute_capability', '?')}")
    return lines


def time_step(config: Config, jit: bool, mixed: bool, steps: int) -> StepTiming:
    """One compiled training step of ``config``'s network on a random batch (gray, normalised
    as ``model.normalization`` says), ``steps`` times."""
    from keras_ptx.input.normalize import to_model_input
    from keras_ptx.model import build_model, make_losses, make_metrics

    timing = StepTiming(jit, mixed, config.train.batch_size)
    config = dataclasses.replace(
        config, model=dataclasses.replace(config.model, weights="none"),
        train=dataclasses.replace(config.train, mixed_precision=mixed))
    side = config.data.train_crop or config.data.image_size
    rng = np.random.default_rng(0)
    images = to_model_input(rng.integers(0, 256, (timing.batch, side, side, 1), dtype=np.uint8),
                            config.model.normalization)
    mask = (rng.random((timing.batch, side, side, 1)) < 0.05).astype(np.float32)
    try:
        model = build_model(config, any_size=bool(config.data.train_crop))
        targets = {name: mask for name in model.output_names if name.startswith("mask")}
        if "label" in model.output_names:
            targets["label"] = mask.max(axis=(1, 2))
        losses, weights = make_losses(config)
        model.compile(tf.keras.optimizers.Adam(1e-4), loss=losses, loss_weights=weights,
                      metrics=make_metrics(config), jit_compile=jit)
        seconds = []
        for _ in range(steps + 1):
            start = time.perf_counter()
            model.train_on_batch(images, targets)
            seconds.append(time.perf_counter() - start)
    except (tf.errors.OpError, ValueError, RuntimeError) as exc:
        text = exc.message if isinstance(exc, tf.errors.OpError) else str(exc)
        last = [line.strip() for line in text.splitlines() if line.strip()][-1]
        timing.error = f"{type(exc).__name__}: {last}"[:300]
        return timing
    finally:
        tf.keras.backend.clear_session()
    timing.first_s, timing.steady_s = seconds[0], statistics.median(seconds[1:])
    return timing


def pipeline_rates(config: Config, calls: list[int], batches: int) -> dict[int, float]:
    """Augmented training images per second with each number of augmentation calls, on
    records of ``data.image_size`` written to a temporary folder (decoded, kept in memory)."""
    from keras_ptx.data.records import write_shards
    from keras_ptx.data.records_dir import RecordsDir
    from keras_ptx.input.pipeline import make_dataset

    size, batch = config.data.image_size, config.train.batch_size
    count = _record_count(config)
    rates = {}
    with tempfile.TemporaryDirectory(prefix="keras-ptx-doctor-") as folder:
        write_shards(folder, "train", _examples(size, count))
        for n in calls:
            data = dataclasses.replace(config.data, num_parallel_calls=n)
            stream = iter(make_dataset(dataclasses.replace(config, data=data), RecordsDir(folder),
                                       "train", cached=True, steps_per_epoch=1))
            for _ in range(2 * config.data.batches_per_call):       # warm: workers, cache
                next(stream)
            start = time.perf_counter()
            for _ in range(batches):
                next(stream)
            rates[n] = batches * batch / (time.perf_counter() - start)
    return rates


def _record_count(config: Config) -> int:
    """How many records :func:`pipeline_rates` writes: two rounds of every augmentation call."""
    return max(2 * config.train.batch_size * config.data.batches_per_call, 64)


def check_data_size(config: Config) -> None:
    """ConfigError when the doctor's random batch (float32) or its records (decoded: image and
    mask bytes) would take more than :data:`MAX_DATA_BYTES`: the machine, not the settings,
    would be tested."""
    side = config.data.train_crop or config.data.image_size
    needs = {"its random batch": config.train.batch_size * side * side * 3 * 4,
             f"its {_record_count(config)} records": (_record_count(config)
                                                      * config.data.image_size ** 2 * 2)}
    for what, size in needs.items():
        if size > MAX_DATA_BYTES:
            raise ConfigError(
                f"train.batch_size={config.train.batch_size}, data.batches_per_call="
                f"{config.data.batches_per_call} at {config.data.image_size} px: {what} would "
                f"take {size / 2 ** 30:.1f} GiB, more than the doctor's "
                f"{MAX_DATA_BYTES / 2 ** 30:.0f} GiB; check a smaller batch")


def _examples(size: int, count: int):
    """Smooth random 'radiographs', every other one with a bright disc as its lesion."""
    import cv2

    rng = np.random.default_rng(0)
    for k in range(count):
        image = cv2.GaussianBlur(rng.integers(0, 256, (size, size), dtype=np.uint8), (7, 7), 0)
        mask = np.zeros((size, size), np.uint8)
        if k % 2:
            cv2.circle(mask, (size // 2, size // 3), max(2, size // 10), 1, -1)
            image[mask > 0] = 230
        yield image, mask


def recommend(timings: list[StepTiming], rates: dict[int, float]) -> tuple[dict, list[str]]:
    """The settings to train with (``{config key: value}``) and the reasons, one a line."""
    working = [t for t in timings if t.steady_s is not None]
    if not working:
        return {}, ["no setting could train a step: see the errors above"]
    # the plainest setting (listed first) unless another is clearly faster, not by noise
    best = working[0]
    for timing in working[1:]:
        if timing.steady_s * GAIN <= best.steady_s:
            best = timing
    demand = best.images_per_s * HEADROOM
    enough = [n for n, rate in sorted(rates.items()) if rate >= demand]
    calls = enough[0] if enough else max(rates, key=rates.get)
    settings = {"train.jit_compile": best.jit, "train.mixed_precision": best.mixed,
                "data.num_parallel_calls": calls}
    reasons = [f"step: XLA {'on' if best.jit else 'off'}, "
               f"{'mixed_float16' if best.mixed else 'float32'}: {best.images_per_s:.1f} "
               f"images/s at batch {best.batch} (another setting only if {GAIN:g}x faster)"]
    if enough:
        reasons.append(f"{calls} augmentation call(s) feed {rates[calls]:.0f} images/s, at least "
                       f"{HEADROOM:g}x what training consumes")
    else:
        reasons.append(f"no number of calls tried feeds {HEADROOM:g}x what training consumes "
                       f"(best: {max(rates.values()):.0f} images/s with {calls}): the input "
                       f"pipeline bounds training here; cache the records, lower "
                       f"augmentation cost, or use a machine with more cores")
    return settings, reasons


def report(config: Config, steps: int = 3, batches: int = 8, echo=print) -> dict:
    """Run every check, printing as it goes; returns the recommended settings."""
    check_data_size(config)
    for line in machine():
        echo(line)
    side = config.data.train_crop or config.data.image_size
    echo(f"\ntraining step: UNet++ {config.model.encoder} at {side}x{side}, batch "
         f"{config.train.batch_size} ({steps} steady steps each)")
    timings = []
    for jit in (False, True):
        for mixed in (False, True):
            timing = time_step(config, jit, mixed, steps)
            timings.append(timing)
            name = f"  XLA {'on ' if jit else 'off'}  {'mixed_float16' if mixed else 'float32      '}"
            echo(f"{name}  failed: {timing.error}" if timing.error else
                 f"{name}  first step {timing.first_s:6.1f} s  steady {timing.steady_s:6.2f} s "
                 f"({timing.images_per_s:.1f} images/s)")
    calls = sorted({1, 2, os.cpu_count() or 1})
    echo(f"\ninput pipeline: {config.data.image_size} px records, augmentation "
         f"{'on' if config.augment.enabled else 'off'}, {batches} batches each")
    rates = pipeline_rates(config, calls, batches)
    for n, rate in rates.items():
        echo(f"  {n} augmentation call(s): {rate:7.0f} images/s")
    settings, reasons = recommend(timings, rates)
    echo("\nrecommended:")
    for line in reasons:
        echo(f"  {line}")
    for key, value in settings.items():
        echo(f"  --set {key}={str(value).lower()}")
    return settings
