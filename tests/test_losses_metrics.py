"""Mask losses and the streaming competition metrics against hand-computed values."""
import json
import math
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from keras_ptx.config import load_config
from keras_ptx.model.losses import LovaszHingeLoss, make_losses, mask_loss
from keras_ptx.model.metrics import CompetitionScore, PerImageIoU, make_metrics
from keras_ptx.tf_setup import tf

import segmentation_models as sm


def _images(*rows):
    """[B, 1, N, 1] float32 tensor from one row of pixel values per image."""
    return tf.constant(np.array(rows, dtype="float32")[:, None, :, None])


def _sigmoid(logits):
    return 1.0 / (1.0 + np.exp(-np.asarray(logits, dtype="float64")))


def test_bce_dice_focal_match_hand_computed_values():
    gt, pr = _images([1, 0]), _images([0.8, 0.4])
    assert float(sm.losses.BinaryCELoss()(gt, pr)) == pytest.approx(
        (-math.log(0.8) - math.log(0.6)) / 2, abs=1e-5)
    focal = (0.25 * 0.2 ** 2 * -math.log(0.8) + 0.75 * 0.4 ** 2 * -math.log(0.6)) / 2
    assert float(sm.losses.BinaryFocalLoss()(gt, pr)) == pytest.approx(focal, abs=1e-5)
    # Soft Dice over the whole batch: tp = 2, fp = 1, fn = 0 -> 1 - 4/5 (per image it would be 0.5).
    dice = sm.losses.DiceLoss()(_images([1, 1], [0, 0]), _images([1, 1], [0.5, 0.5]))
    assert float(dice) == pytest.approx(0.2, abs=1e-4)


def test_lovasz_hinge_matches_hand_computed_values_per_image():
    gt = _images([1, 0], [1, 1], [0, 0])
    pr = tf.constant(_sigmoid([[2, 1], [3, 0], [-3, 1]]).astype("float32")[:, None, :, None])
    # Errors 1 - logit * sign, sorted descending, weighted by the Lovasz gradient of the Jaccard
    # loss: [2, -1] with grad [.5, .5] -> 1;  [1, -2] with [.5, .5] -> .5;
    # empty image: [2, -2] with [1, 0] -> 2.
    expected = (1.0 + 0.5 + 2.0) / 3
    assert float(LovaszHingeLoss()(gt, pr)) == pytest.approx(expected, abs=1e-4)
    compiled = tf.function(lambda g, p: LovaszHingeLoss()(g, p), jit_compile=True)
    assert float(compiled(gt, pr)) == pytest.approx(expected, abs=1e-4)


def test_lovasz_hinge_has_a_gradient_that_lowers_it():
    gt = _images([1, 0, 1, 0])
    logits = tf.Variable([[[[0.1], [0.2], [-0.3], [-0.4]]]])
    with tf.GradientTape() as tape:
        before = LovaszHingeLoss()(gt, tf.sigmoid(logits))
    grad = tape.gradient(before, logits)
    assert np.all(np.isfinite(grad.numpy())) and np.any(grad.numpy() != 0)
    logits.assign_sub(0.1 * grad)
    assert float(LovaszHingeLoss()(gt, tf.sigmoid(logits))) < float(before)


def test_lovasz_hinge_uses_the_logits_cached_by_keras_sigmoid():
    gt = _images([0, 1])
    logits = tf.Variable([[[[30.0], [2.0]]]])      # a confidently wrong pixel saturates float32
    with tf.GradientTape() as tape:
        loss = LovaszHingeLoss()(gt, tf.keras.activations.sigmoid(logits))
    assert float(loss) == pytest.approx(31.0 * 0.5, abs=1e-3)
    assert tape.gradient(loss, logits).numpy().ravel()[0] > 0


def test_mask_loss_is_the_weighted_sum_and_casts_the_truth():
    config = load_config(None, ["train.loss.bce=2", "train.loss.dice=0.5"])
    gt, pr = _images([1, 0, 1, 0]), _images([0.9, 0.2, 0.6, 0.1])
    bce = np.mean([-math.log(0.9), -math.log(0.8), -math.log(0.6), -math.log(0.9)])
    dice = 1 - 3.0 / 3.8          # tp 1.5, fp .3, fn .5
    loss = mask_loss(config.train.loss)(tf.cast(gt, tf.uint8), pr)
    assert float(loss) == pytest.approx(2 * bce + 0.5 * dice, abs=1e-4)


def test_make_losses_averages_deep_supervision_and_weights_the_label():
    config = load_config(None, ["model.deep_supervision=true", "train.loss.classifier=0.3"])
    losses, weights = make_losses(config)
    assert list(losses) == ["mask", "mask_1", "mask_2", "mask_3", "label"]
    assert weights == {"mask": 0.25, "mask_1": 0.25, "mask_2": 0.25, "mask_3": 0.25, "label": 0.3}
    assert losses["mask"] is losses["mask_3"]
    pruned = load_config(None, ["model.deep_supervision=true", "model.prune_level=2",
                                "model.classification_head=false"])
    assert make_losses(pruned)[1] == {"mask": 0.5, "mask_1": 0.5}
    assert make_losses(load_config(None, ["model.classification_head=false"]))[1] == {"mask": 1.0}


# Four 2x2 images: empty/empty, false positive on empty, miss, partial overlap.
TRUTH = np.array([[0, 0, 0, 0], [0, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 1]], "float32")
PRED = np.array([[0.5, 0.1, 0, 0], [0, 0.9, 0, 0], [0, 0, 0, 0], [0.9, 0.8, 0.3, 0.2]], "float32")
DICE = [1.0, 0.0, 0.0, 2 * 2 / (2 + 4)]
IOU = [1.0, 0.0, 0.0, 2 / 4]


def _batch(rows):
    return tf.constant(rows.reshape(-1, 2, 2, 1))


@pytest.mark.parametrize("metric_class, expected", [(CompetitionScore, DICE), (PerImageIoU, IOU)])
def test_per_image_scores_match_hand_computed_cases(metric_class, expected):
    for i, value in enumerate(expected):
        metric = metric_class(threshold=0.5)
        metric.update_state(_batch(TRUTH[i:i + 1]), _batch(PRED[i:i + 1]))
        assert float(metric.result()) == pytest.approx(value, abs=1e-6), i


@pytest.mark.parametrize("metric_class, expected", [(CompetitionScore, DICE), (PerImageIoU, IOU)])
def test_streaming_over_batches_equals_the_one_shot_mean(metric_class, expected):
    one_shot = metric_class()
    one_shot.update_state(_batch(TRUTH), _batch(PRED))
    streamed = metric_class()

    @tf.function(jit_compile=True)
    def update(truth, pred):
        streamed.update_state(truth, pred)

    for part in (slice(0, 2), slice(2, 3), slice(3, 4)):
        update(_batch(TRUTH[part]), _batch(PRED[part]))
    assert float(one_shot.result()) == pytest.approx(np.mean(expected), abs=1e-6)
    assert float(streamed.result()) == pytest.approx(np.mean(expected), abs=1e-6)
    streamed.reset_state()
    assert float(streamed.result()) == 0.0


def test_threshold_and_sample_weight():
    metric = CompetitionScore(threshold=0.85)     # only the 0.9 pixel of the last image counts
    metric.update_state(_batch(TRUTH[3:]), _batch(PRED[3:]))
    assert float(metric.result()) == pytest.approx(2 * 1 / (1 + 4))
    weighted = CompetitionScore()
    weighted.update_state(_batch(TRUTH), _batch(PRED), sample_weight=tf.constant([1., 0., 0., 1.]))
    assert float(weighted.result()) == pytest.approx((1 + 2 / 3) / 2)


def test_several_thresholds_report_the_best_mean():
    best = CompetitionScore(threshold=[0.85, 0.5])          # the best is not the first
    best.update_state(_batch(TRUTH), _batch(PRED))
    means = []
    for threshold in (0.85, 0.5):
        single = CompetitionScore(threshold=threshold)
        single.update_state(_batch(TRUTH), _batch(PRED))
        means.append(float(single.result()))
    assert means[0] < means[1]
    assert float(best.result()) == pytest.approx(max(means), abs=1e-6)
    config = load_config(None, ["train.metric_threshold=[0.3, 0.5, 0.7]"])
    assert make_metrics(config)["mask"][0].threshold == (0.3, 0.5, 0.7)


# Two replicas need two devices: a fresh process splits its CPU in two before TensorFlow starts.
TWO_REPLICAS = textwrap.dedent("""
    import json
    import sys

    import numpy as np
    from keras_ptx.tf_setup import tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from keras_ptx.model.metrics import CompetitionScore, PerImageIoU

    truth, pred = (np.array(rows, "float32").reshape(-1, 2, 2, 1)
                   for rows in json.loads(sys.argv[1]))
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        metrics = [CompetitionScore(), PerImageIoU()]

    def update(truth, pred):
        for metric in metrics:
            metric.update_state(truth, pred)

    @tf.function
    def step(truth, pred):
        strategy.run(update, args=(truth, pred))

    # global batches of 2: replica r gets image 2k + r of step k
    for batch in strategy.experimental_distribute_dataset(
            tf.data.Dataset.from_tensor_slices((truth, pred)).batch(2)):
        step(*batch)

    def local(variable):       # its value on each replica (the first threshold's, for totals)
        return [v.numpy().ravel()[0].item() for v in strategy.experimental_local_results(variable)]

    print(json.dumps({"replicas": strategy.num_replicas_in_sync, **{m.name: {
        "result": m.result().numpy().item(), "count": m.count.numpy().item(),
        "local_totals": local(m.total), "local_counts": local(m.count)} for m in metrics}}))
""")


def test_two_replicas_sum_the_scores_of_their_own_images():
    """Averaged replica totals would count 2 images, one replica alone another mean."""
    result = subprocess.run([sys.executable, "-c", TWO_REPLICAS,
                             json.dumps([TRUTH.tolist(), PRED.tolist()])],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    distributed = json.loads(result.stdout.splitlines()[-1])
    assert distributed["replicas"] == 2
    for metric_class, expected in ((CompetitionScore, DICE), (PerImageIoU, IOU)):
        one_device = metric_class()
        one_device.update_state(_batch(TRUTH), _batch(PRED))
        got = distributed[one_device.name]
        # replica 0 scored images 0 and 2, replica 1 images 1 and 3
        assert got["local_counts"] == [2.0, 2.0]
        assert [t / c for t, c in zip(got["local_totals"], got["local_counts"])] == pytest.approx(
            [(expected[0] + expected[2]) / 2, (expected[1] + expected[3]) / 2], abs=1e-6)
        assert got["count"] == 4.0                    # summed across replicas, not averaged
        assert got["result"] == pytest.approx(float(one_device.result()), abs=1e-6)
        assert got["result"] == pytest.approx(np.mean(expected), abs=1e-6)


def test_make_metrics_follows_the_outputs():
    with_label = make_metrics(load_config(None, ["train.metric_threshold=0.7"]))
    assert [m.name for m in with_label["mask"]] == ["score", "iou"]
    assert with_label["mask"][0].threshold == 0.7 and "label" in with_label
    assert "label" not in make_metrics(load_config(None, ["model.classification_head=false"]))
