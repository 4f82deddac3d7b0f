"""keras-ptx doctor: it measures the configured network and input pipeline on this machine and
recommends settings from what it measured."""
from pathlib import Path

import pytest
from click.testing import CliRunner

from keras_ptx.doctor import StepTiming, recommend

TEST_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "test.yaml"


def test_the_fastest_working_step_and_the_fewest_calls_that_feed_it_are_recommended():
    timings = [StepTiming(False, False, 8, 5.0, 1.0), StepTiming(True, False, 8, 60.0, 0.5),
               StepTiming(False, True, 8, error="no float16 kernel"),
               StepTiming(True, True, 8, 70.0, 0.8)]
    settings, reasons = recommend(timings, {1: 15.0, 2: 18.0, 4: 40.0})   # 16 x 1.2 wanted
    assert settings == {"train.jit_compile": True, "train.mixed_precision": False,
                        "data.num_parallel_calls": 4}
    assert "16.0 images/s at batch 8" in reasons[0] and "4 augmentation call(s)" in reasons[1]
    settings, reasons = recommend(timings, {1: 15.0, 2: 18.0})
    assert settings["data.num_parallel_calls"] == 2 and "bounds training here" in reasons[1]
    assert recommend([StepTiming(True, True, 8, error="x")], {1: 5.0})[0] == {}


@pytest.mark.slow
def test_doctor_checks_the_test_config_end_to_end():
    from keras_ptx.cli import main
    slim = ("model.prune_level=1", "model.classification_head=false")   # a quarter of the tracing
    result = CliRunner().invoke(main, ["doctor", "--config", str(TEST_CONFIG), "--steps", "1",
                                       "--batches", "2", *(a for s in slim for a in ("--set", s))])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "TensorFlow 2." in out and "devices: CPU:0" in out
    for setting in ("XLA off  float32", "XLA off  mixed_float16", "XLA on   float32",
                    "XLA on   mixed_float16"):
        line = next(line for line in out.splitlines() if setting in line)
        assert "first step" in line or "failed:" in line, line
    assert "1 augmentation call(s):" in out and "recommended:" in out
    for key in ("train.jit_compile", "train.mixed_precision", "data.num_parallel_calls"):
        assert f"--set {key}=" in out


def test_a_setting_must_be_clearly_faster_to_be_recommended_over_the_plain_one():
    timings = [StepTiming(False, False, 8, 5.0, 1.0), StepTiming(False, True, 8, 6.0, 0.95)]
    assert recommend(timings, {1: 99.0})[0]["train.mixed_precision"] is False   # noise
    timings[1].steady_s = 0.9
    assert recommend(timings, {1: 99.0})[0]["train.mixed_precision"] is True
