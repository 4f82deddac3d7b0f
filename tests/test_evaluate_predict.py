"""bin/evaluate and bin/predict end to end on a tiny untrained model (64x64, B0, no weights).

The model's final 1x1 convolutions are scaled up so that its probabilities spread over (0, 1)
instead of sitting at 0.5: the maps then depend visibly on the input, and post-processing
produces non-trivial masks. The model is built once per module and saved as a real run
directory; the commands' loads of that directory are then served from memory (each rebuild
costs ~10 s on this machine; rundir's own tests cover the rebuild and weight load).
"""
import csv
import dataclasses
import itertools
import json
import shutil
import warnings

import cv2
import numpy as np
import pydicom.data
import pytest
from click.testing import CliRunner

from keras_ptx import rundir
from keras_ptx.cli import main
from keras_ptx.config import dump_config, load_config
from keras_ptx.data import rle
from keras_ptx.data.dicom import DicomError, read_dicom
from keras_ptx.data.geometry import from_square, image_to_square
from keras_ptx.data.records import write_shards
from keras_ptx.inference import report as report_md
from keras_ptx.inference.evaluate import case_picks
from keras_ptx.inference.postprocess import PostProcess, PostProcessError, scale_area
from keras_ptx.inference.runner import Predictor
from keras_ptx.inference.search import SearchGrid
from keras_ptx.inference.trained import TrainedRun
from keras_ptx.input.normalize import to_model_input
from keras_ptx.synthetic.dicom_writer import write_dicom
from keras_ptx.tf_setup import tf


SIZE = 64
SHAPES = [(64, 64), (100, 80), (70, 130), (200, 200), (90, 90)]


def _config():
    return load_config(None, [f"data.image_size={SIZE}", "model.encoder=efficientnetb0",
                              "model.weights=none", "eval.batch_size=3"])


def _logits_layer(model, output):
    return model.get_layer(output).input._keras_history.layer


def _sharpen(model, output, factor):
    """Multiply the weights of the layer that feeds ``output``'s sigmoid by ``factor``."""
    layer = _logits_layer(model, output)
    layer.set_weights([w * factor for w in layer.get_weights()])


def _centre_peaks(model, squares, target=0.825):
    """Shift the mask logits so that the median image's highest probability is ``target``."""
    maps, _ = Predictor(model).from_gray(squares)
    peak = np.median(maps.max(axis=(1, 2)))
    layer = _logits_layer(model, "mask")
    kernel, bias = layer.get_weights()
    logit = lambda p: np.log(p / (1 - p))          # noqa: E731
    layer.set_weights([kernel, bias + logit(target) - logit(peak)])


def _val_squares(n=16):
    rng = np.random.default_rng(5)
    return np.stack([image_to_square(_radiograph(rng, (128, 128)), SIZE) for _ in range(n)])


@pytest.fixture(scope="module")
def run(tmp_path_factory, monkeypatch_module):
    from keras_ptx.model import build_model

    path = tmp_path_factory.mktemp("run")
    config = _config()
    tf.keras.utils.set_random_seed(1)
    model = build_model(config)
    _sharpen(model, "mask", 60.0)
    _sharpen(model, "label", 3000.0)
    _centre_peaks(model, _val_squares())
    dump_config(config, path / rundir.CONFIG)
    model.save_weights(str(path / rundir.BEST_WEIGHTS))
    real = rundir.load_model
    monkeypatch_module.setattr(
        rundir, "load_model",
        lambda d, c: model if d == path or str(d) == str(path) else real(d, c))
    return path


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def _radiograph(rng, shape):
    """Dark background, two bright 'lungs' and a random bright spot: enough structure to vary."""
    h, w = shape
    image = rng.normal(40, 12, shape)
    image[h // 6: 5 * h // 6, w // 8: 3 * w // 8] += 90
    image[h // 6: 5 * h // 6, 5 * w // 8: 7 * w // 8] += 90
    r, c = rng.integers(0, h), rng.integers(0, w)
    image[max(0, r - h // 8): r + h // 8, max(0, c - w // 8): c + w // 8] += 100
    return np.clip(image, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def dicom_dir(tmp_path_factory):
    rng = np.random.default_rng(11)
    root = tmp_path_factory.mktemp("dicoms")
    for k, shape in enumerate(SHAPES):
        write_dicom(root / "study" / f"{k}.dcm", _radiograph(rng, shape), image_id=f"1.2.3.{k}",
                    study_uid="1.2.3", series_uid="1.2.3.9", patient_id=f"p{k}", patient_name="X",
                    photometric="MONOCHROME1" if k == 3 else "MONOCHROME2")
    (root / "broken.dcm").write_bytes(b"DICM? no, just bytes")
    shutil.copy(root / "study" / "0.dcm", root / "study" / "0-copy.dcm")
    return root


def _csv(path):
    with open(path, newline="") as handle:
        return list(csv.reader(handle))


def _expected_masks(run, post, dicom_dir):
    """Independent recomputation: model called directly, map mapped back, rule applied.

    Returns image_id -> (mask, pixels within float noise of the threshold, which may go either way).
    """
    model = TrainedRun(run).model
    masks = {}
    for path in sorted(dicom_dir.rglob("*.dcm")):
        try:
            image = read_dicom(path)
        except DicomError:
            continue
        square = image_to_square(image.pixels, SIZE)[None, ..., None]
        mask_out, label_out = model(to_model_input(square), training=False)
        full = from_square(mask_out.numpy()[0, ..., 0], *image.pixels.shape)
        masks.setdefault(image.image_id, (post.apply(full, float(label_out.numpy()[0, 0])),
                                          np.abs(full - post.threshold) < 1e-4))
    return masks


def test_predict_writes_one_decodable_row_per_image(run, dicom_dir, tmp_path):
    model = TrainedRun(run).model
    squares = np.stack([image_to_square(read_dicom(p).pixels, SIZE)
                        for p in sorted((dicom_dir / "study").glob("[0-9].dcm"))])
    maps, _ = Predictor(model).from_gray(squares)
    post = PostProcess(threshold=float(np.round(np.quantile(maps, 0.7), 4)))   # ~30% positive px
    post.save(run / rundir.POSTPROCESS)
    try:
        result = CliRunner().invoke(
            main, ["predict", "--model", str(run), "--dicom-dir", str(dicom_dir),
                   "--out", str(tmp_path / "out"), "--batch-size", "2"])
    finally:
        (run / rundir.POSTPROCESS).unlink()
    assert result.exit_code == 0, result.output + result.stderr
    assert "5 images predicted" in result.output
    assert "2 unreadable or duplicate, 0 of them submitted as -1" in result.stderr
    assert str(run / rundir.POSTPROCESS) in result.stderr

    rows = _csv(tmp_path / "out" / "submission.csv")
    assert rows[0] == ["ImageId", " EncodedPixels"]
    ids = [r[0] for r in rows[1:]]
    assert sorted(ids) == [f"1.2.3.{k}" for k in range(len(SHAPES))]        # one row each
    expected = _expected_masks(run, post, dicom_dir)
    shapes = {f"1.2.3.{k}": s for k, s in enumerate(SHAPES)}
    decoded_area = {}
    for image_id, value in rows[1:]:
        assert value.startswith(" ")
        decoded = rle.decode(value, *shapes[image_id])
        mask, unsure = expected[image_id]
        assert decoded.shape == mask.shape and unsure.mean() < 0.01
        np.testing.assert_array_equal(decoded[~unsure], mask[~unsure], err_msg=image_id)
        decoded_area[image_id] = int(decoded.sum())
    assert 0 < sum(decoded_area.values()) < sum(h * w for h, w in SHAPES)   # masks, not all or none

    predictions = {r["image_id"]: r for r in csv.DictReader(open(tmp_path / "out" / "predictions.csv"))}
    for image_id, row in predictions.items():
        assert (int(row["height"]), int(row["width"])) == shapes[image_id]
        assert int(row["mask_area_px"]) == decoded_area[image_id]
        assert int(row["has_pneumothorax"]) == int(decoded_area[image_id] > 0)
        assert 0.0 <= float(row["probability"]) <= 1.0
    errors = {row[0]: row[1] for row in _csv(tmp_path / "out" / "errors.csv")[1:]}
    assert set(errors) == {str(dicom_dir / "broken.dcm"), str(dicom_dir / "study" / "0.dcm")} or \
        set(errors) == {str(dicom_dir / "broken.dcm"), str(dicom_dir / "study" / "0-copy.dcm")}
    assert "DICOM" in errors[str(dicom_dir / "broken.dcm")]
    assert any("duplicate ImageId 1.2.3.0" in reason for reason in errors.values())


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")   # pydicom, on reading it
@pytest.mark.filterwarnings("ignore:End of file reached")      # (pytest resets our filter)
def test_predict_finds_dicoms_as_build_does_and_submits_every_identified_image(run, tmp_path):
    rng = np.random.default_rng(9)
    names = (("a.dicom", "1.2.9.1"), ("b.DCM", "1.2,9"), (".hidden.dcm", "1.2.9.3"),
             ("c.dcm", "1.2.9.4"), ("IM0001", "1.2.9.5"))
    for name, image_id in names:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")       # pydicom warns about the deliberately bad UID
            write_dicom(tmp_path / "in" / name, _radiograph(rng, (40, 40)), image_id=image_id,
                        study_uid="1.2.9", series_uid="1.2.9.9", patient_id="p", patient_name="X")
    cut = tmp_path / "in" / "c.dcm"                 # pixels cut short, header intact
    cut.write_bytes(cut.read_bytes()[:-100])
    result = CliRunner().invoke(main, ["predict", "--model", str(run), "--dicom-dir",
                                       str(tmp_path / "in"), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output + result.stderr
    rows = _csv(tmp_path / "out" / "submission.csv")[1:]
    assert sorted(r[0] for r in rows) == ["1.2.9.1", "1.2.9.4"] and dict(rows)["1.2.9.4"] == " -1"
    assert [r["image_id"] for r in csv.DictReader(open(tmp_path / "out" / "predictions.csv"))] == \
        ["1.2.9.1"]
    errors = dict(_csv(tmp_path / "out" / "errors.csv")[1:])
    assert set(errors) == {str(tmp_path / "in" / "b.DCM"), str(cut)}
    assert "ImageId (SOPInstanceUID) '1.2,9' has characters a submission cannot hold" in \
        errors[str(tmp_path / "in" / "b.DCM")]
    assert errors[str(cut)].startswith("truncated file") and "(submitted as -1)" in errors[str(cut)]
    assert "2 unreadable or duplicate, 1 of them submitted as -1" in result.stderr
    assert "1 file(s) without a .dcm or .dicom suffix skipped" in result.stderr


def test_predict_real_radiograph_with_overlay_stage2_and_hflip(run, tmp_path):
    source = pydicom.data.get_testdata_file("RG1_UNCR.dcm")
    (tmp_path / "in").mkdir()
    shutil.copy(source, tmp_path / "in" / "RG1_UNCR.dcm")
    result = CliRunner().invoke(
        main, ["predict", "--model", str(run), "--dicom-dir", str(tmp_path / "in"), "--out",
               str(tmp_path / "out"), "--format", "stage2", "--overlays", "--tta", "hflip"])
    assert result.exit_code == 0, result.output + result.stderr
    assert "evaluate has not been run" in result.stderr and "0.75" in result.stderr
    image = read_dicom(source)
    rows = _csv(tmp_path / "out" / "submission.csv")
    assert rows[0] == ["ImageId", "EncodedPixels"] and [r[0] for r in rows[1:]] == [image.image_id]
    assert rle.decode(rows[1][1], *image.pixels.shape).shape == (1955, 1841)
    overlay = cv2.imread(str(tmp_path / "out" / "overlays" / f"{image.image_id}.png"))
    assert overlay.shape == (1955, 1841, 3)


def test_hflip_averages_the_mirrored_prediction(run):
    model = TrainedRun(run).model
    x = to_model_input(np.random.default_rng(0).integers(0, 255, (2, SIZE, SIZE, 1), dtype=np.uint8))
    maps, label = Predictor(model, "hflip")(x)
    plain_mask, plain_label = model(x, training=False)
    flip_mask, flip_label = model(tf.reverse(x, [2]), training=False)
    # batch 4 and batch 2 may take different kernels: float noise, amplified by the sharpening
    np.testing.assert_allclose(maps, ((plain_mask + tf.reverse(flip_mask, [2])) / 2).numpy()[..., 0],
                               atol=1e-4)
    np.testing.assert_allclose(label, ((plain_label + flip_label) / 2).numpy()[:, 0], atol=1e-3)
    assert np.abs(maps - plain_mask.numpy()[..., 0]).max() > 0.01        # the flip mattered


def _planted_records(data_dir, model):
    """A val split (shared record schema) whose truth comes from the model's own maps, so that
    evaluate must find a perfect triplet: an image is positive iff at least N of its pixels
    exceed T, for a (T, N) of the search grid (then its truth is every pixel > 0.5), else
    negative. No pixel threshold alone can be perfect: negatives have pixels above 0.5 too.
    The last record is unlabeled and must be skipped. Returns the labels."""
    squares = _val_squares()
    n = len(squares)
    maps, _ = Predictor(model).from_gray(squares)
    grid = SearchGrid()
    for top, min_pixels in itertools.product(grid.top_threshold, grid.min_pixels[1:]):
        labels = (maps > top).sum(axis=(1, 2)) >= scale_area(min_pixels, SIZE)
        if 3 <= labels[:-1].sum() <= n - 4 and np.abs(maps - top).min() > 1e-4:
            break
    else:
        pytest.fail("no grid (top, min_pixels) splits the planted images")
    masks = ((maps > 0.5) & labels[:, None, None]).astype(np.uint8)
    write_shards(data_dir, "val", zip(squares, masks), original=128, labeled=[1] * (n - 1) + [0])
    return labels[:-1]


def test_evaluate_finds_the_planted_rule_and_writes_everything(run, tmp_path):
    labels = _planted_records(tmp_path, TrainedRun(run).model)
    result = CliRunner().invoke(main, ["evaluate", "--model", str(run), "--data", str(tmp_path),
                                       "--cases", "2", "--batch-size", "4"])
    try:
        assert result.exit_code == 0, result.output + result.stderr
        report = json.loads((run / "eval" / "report.json").read_text())
        chosen = PostProcess.load(run / rundir.POSTPROCESS)
    finally:
        (run / rundir.POSTPROCESS).unlink(missing_ok=True)
    n = len(labels)
    assert (report["images"], report["positives"], report["unlabeled_skipped"]) == (n, labels.sum(), 1)
    assert report["empty_baseline"] == pytest.approx(1 - labels.mean())
    kinds = report["kinds"]
    assert set(kinds) == {"threshold", "triplet", "gated-threshold", "gated-triplet"}
    assert report["chosen"] == "triplet" and chosen.tta == "none"
    assert dataclasses.replace(chosen, tta=None).to_dict() == kinds["triplet"]["postprocess"]
    assert kinds["triplet"]["score"] == pytest.approx(1.0, abs=1e-3)
    assert kinds["triplet"]["dice_positive"] == pytest.approx(1.0, abs=1e-3)
    assert chosen.bottom_threshold == 0.5 and chosen.min_pixels > 0
    assert kinds["threshold"]["score"] < 0.98 and report["empty_baseline"] < 0.8
    assert "record grid" in report["resolution"]["note"]
    level = report["image_level"]
    assert level["source"] == "label head" and 0.0 <= level["auc"] <= 1.0
    for name in report["plots"]:
        assert cv2.imread(str(run / "eval" / name)) is not None
    # the planted rule makes no mistake (every Dice is 1): best cases only
    assert [(c["case"], c["rank"]) for c in report["cases"]] == [("best", 1), ("best", 2)]
    assert all(c["dice"] > 0 for c in report["cases"])
    for case in report["cases"]:
        assert cv2.imread(str(run / "eval" / case["file"])).shape == (512, 512, 3)
    markdown = (run / "eval" / "report.md").read_text()
    assert "all empty (baseline)" in markdown and "triplet (chosen)" in markdown
    assert "triplet *" in result.output


def test_only_the_val_split_sets_the_rule_unless_asked(run, tmp_path):
    _planted_records(tmp_path, TrainedRun(run).model)
    shutil.copy(next(tmp_path.glob("val-*.tfrecord")), tmp_path / "train-00000-of-00001.tfrecord")
    args = ["evaluate", "--model", str(run), "--data", str(tmp_path), "--split", "train",
            "--cases", "0", "--tta", "hflip"]
    try:
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 0, result.output + result.stderr
        assert not (run / rundir.POSTPROCESS).exists() and "not saved (evaluated on train" in result.output
        report = json.loads((run / "eval-train" / "report.json").read_text())
        assert report["split"] == "train" and report["postprocess_file"] is None
        result = CliRunner().invoke(main, args + ["--save-postprocess"])
        assert result.exit_code == 0 and PostProcess.load(run / rundir.POSTPROCESS).tta == "hflip"
    finally:
        (run / rundir.POSTPROCESS).unlink(missing_ok=True)
        shutil.rmtree(run / "eval-train", ignore_errors=True)


def test_predict_uses_the_tta_its_rule_was_tuned_with(run, dicom_dir, tmp_path):
    PostProcess(threshold=0.5, tta="hflip").save(run / rundir.POSTPROCESS)
    base = ["predict", "--model", str(run), "--dicom-dir", str(dicom_dir / "study")]
    try:
        result = CliRunner().invoke(main, base + ["--out", str(tmp_path / "a")])
        assert result.exit_code == 0 and "test-time augmentation: hflip\n" in result.stderr
        result = CliRunner().invoke(main, base + ["--out", str(tmp_path / "b"), "--tta", "none"])
        assert result.exit_code == 0
        assert "test-time augmentation: none (the rule was tuned with hflip" in result.stderr
    finally:
        (run / rundir.POSTPROCESS).unlink()
    with pytest.raises(PostProcessError, match="tta 'vflip'"):
        PostProcess(tta="vflip")


def test_a_damaged_shard_is_a_clear_error(run, tmp_path):
    _planted_records(tmp_path, TrainedRun(run).model)
    shard = next(tmp_path.glob("val-*.tfrecord"))
    shard.write_bytes(shard.read_bytes()[:-300])
    result = CliRunner().invoke(main, ["evaluate", "--model", str(run), "--data", str(tmp_path)])
    assert result.exit_code == 2, result.output + result.stderr
    assert f"--data {tmp_path}: a record shard is damaged (truncated record at" in result.stderr
    assert "function_node" not in result.stderr and "--verify" in result.stderr
    assert not (run / rundir.POSTPROCESS).exists()


def test_a_model_no_better_than_predicting_nothing_is_called_out(run, tmp_path):
    """The run's untrained network finds nothing on planted records with no lesion at all."""
    result = CliRunner().invoke(main, ["evaluate", "--model", str(run), "--data", str(tmp_path),
                                       "--split", "test"])
    assert result.exit_code == 2 and "the test split holds the images built without labels" in \
        result.stderr
    _planted_records(tmp_path, TrainedRun(run).model)
    report = _report_of(run, tmp_path)
    for kind in report["kinds"].values():
        kind["score"] = report["empty_baseline"]
    assert report_md.NO_BETTER in report_md.summary_table(report)
    assert report_md.NO_BETTER in report_md.to_markdown(report)
    report["kinds"][report["chosen"]]["score"] += 0.01
    assert report_md.NO_BETTER not in report_md.summary_table(report)


def _report_of(run, data_dir):
    try:
        result = CliRunner().invoke(main, ["evaluate", "--model", str(run), "--data", str(data_dir),
                                           "--cases", "0", "--no-save-postprocess"])
        assert result.exit_code == 0, result.output + result.stderr
        return json.loads((run / "eval" / "report.json").read_text())
    finally:
        shutil.rmtree(run / "eval", ignore_errors=True)


def test_best_cases_are_found_lesions_and_worst_cases_are_mistakes():
    dice = np.array([0.0, 1.0, 0.5, 0.9, 1.0, 0.0])
    positive = np.array([True, True, True, False, False, True])
    best, worst = case_picks(dice, positive, 2)
    assert best.tolist() == [1, 2] and worst.tolist() == [0, 5]
    best, worst = case_picks(dice, positive, 9)
    assert best.tolist() == [1, 2] and worst.tolist() == [0, 5, 2, 3]
    assert [p.size for p in case_picks(np.ones(3), np.ones(3, bool), 2)] == [2, 0]


def test_clear_errors_for_missing_inputs(run, dicom_dir, tmp_path):
    result = CliRunner().invoke(
        main, ["evaluate", "--model", str(run), "--data", str(tmp_path)])
    assert result.exit_code == 2 and "the directory is empty" in result.stderr
    (tmp_path / "manifest.json").write_text("{}")
    result = CliRunner().invoke(
        main, ["evaluate", "--model", str(run), "--data", str(tmp_path)])
    assert result.exit_code == 2 and "manifest.json: not a build's manifest" in result.stderr
    result = CliRunner().invoke(
        main, ["evaluate", "--model", str(run), "--data", str(tmp_path / "nowhere")])
    assert result.exit_code == 2 and f"--data {tmp_path / 'nowhere'}: no such directory" in result.stderr
    (tmp_path / "empty").mkdir()
    result = CliRunner().invoke(
        main, ["predict", "--model", str(run), "--dicom-dir", str(tmp_path / "empty"), "--out",
               str(tmp_path / "out")])
    assert result.exit_code == 2 and "no DICOM files (.dcm, .dicom) found" in result.stderr
    result = CliRunner().invoke(
        main, ["predict", "--model", str(tmp_path), "--dicom-dir", str(dicom_dir), "--out",
               str(tmp_path / "out")])
    assert result.exit_code == 2 and "not a training run directory" in result.stderr


def test_a_broken_run_dir_is_a_clear_error_for_every_command(dicom_dir, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / rundir.CONFIG).write_text("data:\n  image_sise: 64\n")
    commands = {"evaluate": ["--data", str(tmp_path)],
                "predict": ["--dicom-dir", str(dicom_dir), "--out", str(tmp_path / "out")],
                "export": ["--out", str(tmp_path / "export")]}
    for name, args in commands.items():
        result = CliRunner().invoke(main, [name, "--model", str(run), *args])
        assert result.exit_code == 2, (name, result.output, result.exception)
        assert "config.yaml does not load: data.image_sise: unknown key" in result.stderr, name
    dump_config(_config(), run / rundir.CONFIG)
    (run / rundir.POSTPROCESS).write_text('{"min_pixels": 3000.5}')
    for name in ("predict", "export"):
        result = CliRunner().invoke(main, [name, "--model", str(run), *commands[name]])
        assert result.exit_code == 2 and "min_pixels must be a non-negative integer" in \
            result.stderr, (name, result.output, result.exception)
    (run / rundir.POSTPROCESS).unlink()
    (run / rundir.CHECKPOINTS).mkdir()
    (run / rundir.CHECKPOINTS / rundir.BEST_WEIGHTS).write_bytes(b"an interrupted run's")
    for name, args in commands.items():
        result = CliRunner().invoke(main, [name, "--model", str(run), *args])
        assert result.exit_code == 2 and "training has not finished" in result.stderr, name
    assert not (tmp_path / "out").exists() and not (tmp_path / "export").exists()


def _headless_model():
    """A tiny stand-in network with only a mask output (no image-level head)."""
    inputs = tf.keras.Input((SIZE, SIZE, 3))
    x = tf.keras.layers.Conv2D(1, 3, padding="same", name="logits",
                               kernel_initializer=tf.keras.initializers.GlorotUniform(seed=3))(inputs)
    model = tf.keras.Model(inputs, tf.keras.layers.Activation("sigmoid", name="mask")(x))
    _sharpen(model, "mask", 4.0)
    _centre_peaks(model, _val_squares())
    return model


def test_without_a_label_head(dicom_dir, tmp_path, monkeypatch):
    model = _headless_model()
    monkeypatch.setattr(rundir, "load_model", lambda d, c: model)
    dump_config(_config(), tmp_path / rundir.CONFIG)
    _planted_records(tmp_path, model)
    result = CliRunner().invoke(main, ["evaluate", "--model", str(tmp_path), "--data", str(tmp_path),
                                       "--cases", "0"])
    assert result.exit_code == 0, result.output + result.stderr
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert set(report["kinds"]) == {"threshold", "triplet"} and report["cases"] == []
    assert report["image_level"]["source"] == "maximum pixel probability"
    assert report["kinds"]["triplet"]["score"] == pytest.approx(1.0, abs=1e-3)

    PostProcess(cls_threshold=0.5).save(tmp_path / rundir.POSTPROCESS)
    result = CliRunner().invoke(main, ["predict", "--model", str(tmp_path), "--dicom-dir",
                                       str(dicom_dir), "--out", str(tmp_path) + "-out"])
    assert result.exit_code == 2 and "the model has none" in result.stderr


def _reheader(source, path, **tags):
    """A copy of a real file with its pixels as they are and a chest CR's header."""
    ds = pydicom.dcmread(source)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = pydicom.uid.ComputedRadiographyImageStorage
    for keyword, value in {"Modality": "CR", "BodyPartExamined": "CHEST", "ViewPosition": "PA",
                           **tags}.items():
        setattr(ds, keyword, value)
    ds.save_as(path)


def test_predict_writes_valid_dicom_objects_for_frontal_chest_images_only(run, tmp_path):
    """bin/predict --dicom-out on a mixed folder: the three classes, both photometrics, 8/16
    bits, JPEG Baseline / Lossless / 2000, RLE and uncompressed, non-square, the real chest CR
    RG1_J2KI.dcm; and a lateral view, the real extremity RG3_UNCR.dcm and a SEG fed back, which
    get a reason instead. Each SEG decodes to submission.csv's mask, each SR's finding and
    probability are predictions.csv's, and dciodvfy finds no error in any object."""
    from dicom_checks import dciodvfy_errors, seg_mask, sr_finding
    from keras_ptx.results.dicom_objects import build_objects, encode
    from keras_ptx.inference.prediction import ModelIdentity

    rng, folder = np.random.default_rng(3), tmp_path / "in"
    formats = [("cr", "jpeg_baseline", "MONOCHROME2", 8, (96, 80), "PA"),
               ("dx", "rle", "MONOCHROME1", 16, (80, 112), "AP"),
               ("sc", "jpeg2000", "MONOCHROME2", 16, (64, 64), "PA"),
               ("sc", "explicit_le", "MONOCHROME1", 8, (72, 56), ""),
               ("cr", "jpeg_baseline", "MONOCHROME2", 8, (64, 64), "LL")]
    for k, (sop_class, syntax, photometric, bits, shape, view) in enumerate(formats):
        write_dicom(folder / f"{k}-{sop_class}-{view or 'none'}.dcm", _radiograph(rng, shape),
                    image_id=f"1.2.7.{k}", study_uid="1.2.7", series_uid="1.2.7.9",
                    patient_id="p7", patient_name="DOE^JANE", view=view,
                    transfer_syntax=syntax, photometric=photometric, bits=bits,
                    sop_class=sop_class)
    _reheader(pydicom.data.get_testdata_file("JPGLosslessP14SV1_1s_1f_8b.dcm"),
              folder / "jpeg-lossless.dcm")
    shutil.copy(pydicom.data.get_testdata_file("RG1_J2KI.dcm"), folder / "rg1.dcm")
    shutil.copy(pydicom.data.get_testdata_file("RG3_UNCR.dcm"), folder / "rg3-extremity.dcm")
    first = read_dicom(folder / "0-cr-PA.dcm")
    seg = build_objects(first.source.dataset, np.ones(first.pixels.shape, bool), 0.9,
                        ModelIdentity("earlier"), ("seg",))["seg"]
    (folder / "seg-fed-back.dcm").write_bytes(encode(seg))

    PostProcess(threshold=0.5, cls_threshold=0.488).save(run / rundir.POSTPROCESS)   # 4 of 6
    try:
        result = CliRunner().invoke(main, [
            "predict", "--model", str(run), "--dicom-dir", str(folder), "--out",
            str(tmp_path / "out"), "--dicom-out", str(tmp_path / "out" / "dicom")])
    finally:
        (run / rundir.POSTPROCESS).unlink()
    assert result.exit_code == 0, result.output + result.stderr

    errors = {path.split("/")[-1]: reason for path, reason in
              _csv(tmp_path / "out" / "errors.csv")[1:]}
    assert set(errors) == {"4-cr-LL.dcm", "rg3-extremity.dcm", "seg-fed-back.dcm"}
    assert "ViewPosition LL" in errors["4-cr-LL.dcm"]
    assert "BodyPartExamined EXTREMITY" in errors["rg3-extremity.dcm"]
    assert "fed back" in errors["seg-fed-back.dcm"]
    submission = dict(_csv(tmp_path / "out" / "submission.csv")[1:])
    predictions = {r["image_id"]: r for r in
                   csv.DictReader(open(tmp_path / "out" / "predictions.csv"))}
    assert set(submission) == set(predictions) and len(predictions) == 6
    objects = sorted((tmp_path / "out" / "dicom").iterdir())
    assert len(objects) == 2 * len(predictions)
    for path in objects:
        assert dciodvfy_errors(path) == [], path.name
    positives = 0
    for image_id, row in predictions.items():
        mask = rle.decode(submission[image_id], int(row["height"]), int(row["width"]))
        np.testing.assert_array_equal(
            seg_mask(tmp_path / "out" / "dicom" / f"{image_id}.seg.dcm"), mask)
        finding = sr_finding(tmp_path / "out" / "dicom" / f"{image_id}.sr.dcm")
        assert finding["present"] == bool(int(row["has_pneumothorax"])) == mask.any()
        assert f"{finding['probability']:.6f}" == row["probability"]
        positives += mask.any()
    assert 0 < positives < len(predictions)
    assert "DOE" not in result.output + result.stderr + str(errors)


def test_research_users_may_predict_other_images_and_every_output_says_so(run, tmp_path):
    write_dicom(tmp_path / "in" / "lateral.dcm", _radiograph(np.random.default_rng(4), (64, 64)),
                image_id="1.2.8.1", study_uid="1.2.8", series_uid="1.2.8.9", patient_id="p",
                patient_name="X", view="LL")
    result = CliRunner().invoke(main, [
        "predict", "--model", str(run), "--dicom-dir", str(tmp_path / "in"), "--out",
        str(tmp_path / "out"), "--dicom-out", str(tmp_path / "dicom"), "--any-image"])
    assert result.exit_code == 0, result.output + result.stderr
    assert "--any-image" in result.stderr
    [row] = csv.DictReader(open(tmp_path / "out" / "predictions.csv"))
    assert "ViewPosition LL" in row["outside_intended_use"]
    for kind in ("seg", "sr"):
        ds = pydicom.dcmread(tmp_path / "dicom" / f"1.2.8.1.{kind}.dcm")
        assert ds.SeriesDescription.startswith("RESEARCH, outside intended use")
