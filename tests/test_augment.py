"""The albumentations policy: configured as asked, masks move with images, seeds reproduce,
and worker processes give exactly what threads give."""
import functools
import os
import signal
import threading

import albumentations as A
import cv2
import numpy as np
import pytest

from keras_ptx.config import AugmentConfig, CropConfig, DistortionConfig, FlipConfig, IntensityConfig
from keras_ptx.input import augment as augment_module, workers
from keras_ptx.input.augment import GraphAugmenter, graph_augmenter
from keras_ptx.input.border import Border, border_weights
from keras_ptx.input.policy import build_policy, reseed
from keras_ptx.input.workers import pool
from keras_ptx.tf_setup import tf

SIZE = 64
# strong enough that each transform visibly moves a 64x64 square
STRONG = AugmentConfig(
    horizontal_flip=FlipConfig(p=1.0),
    distortion=DistortionConfig(elastic_alpha=300.0, elastic_sigma=6.0, grid_distort_limit=0.5,
                                optical_distort_limit=0.8),
    random_sized_crop=CropConfig(p=1.0, min_fraction=0.5, max_fraction=0.7))


def _square():
    image = np.full((SIZE, SIZE, 1), 60, np.uint8)
    mask = np.zeros((SIZE, SIZE, 1), np.uint8)
    image[10:34, 8:30] = 250
    mask[10:34, 8:30] = 1
    return image, mask


def _batch(image, mask, n):
    return tf.constant(np.stack([image] * n)), tf.constant(np.stack([mask] * n))


def _iou(a, b):
    return (a & b).sum() / max((a | b).sum(), 1)


def _geometric(policy):
    flip, _, distortions, crop = policy.transforms
    return [flip, *distortions.transforms, crop]


def test_policy_takes_every_setting_from_the_config():
    config = AugmentConfig(
        horizontal_flip=FlipConfig(p=0.1),
        intensity=IntensityConfig(p=0.2, brightness_limit=0.1, contrast_limit=0.15, gamma_limit=(90, 110)),
        distortion=DistortionConfig(p=0.3, elastic_alpha=2.0, elastic_sigma=40.0, grid_num_steps=7,
                                    grid_distort_limit=0.2, optical_distort_limit=0.07),
        random_sized_crop=CropConfig(p=0.4, min_fraction=0.5, max_fraction=0.75))
    flip, intensity, distortion, crop = build_policy(config, 256).transforms
    assert isinstance(flip, A.HorizontalFlip) and flip.p == 0.1
    brightness, gamma = intensity.transforms
    assert intensity.p == 0.2 and brightness.brightness_limit == pytest.approx((-0.1, 0.1))
    assert brightness.contrast_limit == pytest.approx((-0.15, 0.15)) and tuple(gamma.gamma_limit) == (90, 110)
    elastic, grid, optical = distortion.transforms
    assert distortion.p == 0.3 and (elastic.alpha, elastic.sigma) == (2.0, 40.0)
    assert grid.num_steps == 7 and grid.distort_limit == pytest.approx((-0.2, 0.2))
    assert optical.distort_limit == pytest.approx((-0.07, 0.07))
    assert isinstance(crop, A.RandomSizedCrop) and crop.p == 0.4
    assert tuple(crop.min_max_height) == (128, 192) and tuple(crop.size) == (256, 256)


@pytest.mark.parametrize("index,name", enumerate(
    ["HorizontalFlip", "ElasticTransform", "GridDistortion", "OpticalDistortion", "RandomSizedCrop"]))
def test_mask_moves_with_the_image(index, name):
    transform = _geometric(build_policy(STRONG, SIZE))[index]
    assert type(transform).__name__ == name
    augment = GraphAugmenter(lambda: A.Compose([transform]))
    image, mask = _square()
    seeds = np.arange(4)
    images, masks = (t.numpy() for t in augment(*_batch(image, mask, len(seeds)), seeds))
    assert images.shape == masks.shape == (4, SIZE, SIZE, 1) and masks.dtype == np.uint8
    assert set(np.unique(masks)) <= {0, 1}                        # nearest for masks
    moved = []
    for seed, new_image, new_mask in zip(seeds, images, masks):
        bright, labelled = new_image[..., 0] > 155, new_mask[..., 0] > 0
        assert _iou(bright, labelled) > 0.9, (name, seed)
        moved.append(_iou(labelled, mask[..., 0] > 0))
    assert np.mean(moved) < 0.9                                   # the square really moved


def test_same_seed_same_result_different_seed_different_result():
    policy = build_policy(STRONG, SIZE)
    image, mask = _square()
    image = image[..., 0]

    def run(seed):
        reseed(policy, seed)
        return policy(image=image, mask=mask[..., 0])["image"]

    np.testing.assert_array_equal(run(3), run(3))
    assert not np.array_equal(run(3), run(4))


def test_reseeded_transforms_draw_independently():
    # albumentations' Compose(seed=...) starts every transform from the same seed, so two p=0.5
    # transforms would always fire together; reseed must give all four combinations.
    policy = A.Compose([A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5)], save_applied_params=True)
    image = np.zeros((8, 8), np.uint8)
    combos = set()
    for seed in range(64):
        reseed(policy, seed)
        combos.add(tuple(name for name, _ in policy(image=image)["applied_transforms"]))
    assert len(combos) == 4


def test_graph_augmenter_in_a_parallel_map_is_deterministic():
    built = []
    augment = GraphAugmenter(lambda: built.append(1) or build_policy(STRONG, SIZE))
    images, masks = _batch(*_square(), 3)
    ds = tf.data.Dataset.range(24).batch(3).map(lambda s: augment(images, masks, s),
                                                num_parallel_calls=2)
    assert ds.element_spec[0].shape.as_list() == [3, SIZE, SIZE, 1]
    first, second = ([i.numpy() for i, _ in ds] for _ in range(2))
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
    # 16 batches, at most 2 at once: each policy is built once, not once per batch
    assert len(built) <= 2


def test_an_example_comes_out_the_same_whatever_its_batch():
    augment = GraphAugmenter(lambda: build_policy(STRONG, SIZE))
    images, masks = _batch(*_square(), 3)
    together = augment(images, masks, np.array([5, 6, 7]))[0].numpy()
    alone = augment(images[:1], masks[:1], np.array([6]))[0].numpy()
    np.testing.assert_array_equal(together[1], alone[0])
    assert not np.array_equal(together[0], together[1])


def test_graph_augmenter_switches_opencv_threads_off():
    """tf.data runs the calls in parallel; OpenCV's own pool would only compete with them."""
    before = cv2.getNumThreads()
    cv2.setNumThreads(2)
    try:
        graph_augmenter(AugmentConfig(), SIZE)
        assert cv2.getNumThreads() == 1
    finally:
        cv2.setNumThreads(before)


@pytest.fixture
def fresh_workers():
    pool.shutdown()
    yield
    pool.shutdown()


def _random_batch(n, side=SIZE, seed=0):
    rng = np.random.default_rng(seed)
    images = cv2.GaussianBlur(rng.integers(0, 256, (n * side, side), dtype=np.uint8), (5, 5), 0)
    masks = (rng.random((n, side, side, 1)) > 0.8).astype(np.uint8)
    return images.reshape(n, side, side, 1), masks


@pytest.mark.parametrize("train_crop", [0, 32])
def test_worker_processes_give_exactly_what_threads_give(fresh_workers, train_crop):
    make = functools.partial(build_policy, STRONG, SIZE, train_crop=train_crop)
    images, masks = _random_batch(6)
    seeds = np.arange(10, 16)
    in_threads = GraphAugmenter(make, train_crop or None)._apply(images, masks, seeds)
    in_processes = GraphAugmenter(make, train_crop or None, processes=True)
    for _ in range(2):                       # the second call reuses the worker and its buffer
        result = in_processes._apply(images, masks, seeds)
        for a, b in zip(in_threads, result):
            assert a.shape == (6, train_crop or SIZE, train_crop or SIZE, 1)
            np.testing.assert_array_equal(a, b)
            assert a.ctypes.data % 64 == 0 and b.ctypes.data % 64 == 0   # TF adopts, not copies
    assert len(pool.workers) == 1


def test_border_weights_come_from_each_augmented_mask_in_threads_and_processes(fresh_workers):
    border = Border(w0=10.0, sigma=2.0)
    make = functools.partial(build_policy, STRONG, SIZE)
    image, mask = _square()
    mask[36:46, 10:28] = 1                          # a second lesion, 2 pixels below
    images, masks = (np.stack([a] * 3) for a in (image, mask))
    seeds = np.arange(3)
    in_threads = GraphAugmenter(make, border=border)._apply(images, masks, seeds)
    in_processes = GraphAugmenter(make, processes=True, border=border)._apply(images, masks, seeds)
    for a, b in zip(in_threads, in_processes):
        np.testing.assert_array_equal(a, b)
    _, out_masks, weights = in_processes
    assert weights.dtype == np.float32 and weights.shape == (3, SIZE, SIZE, 1)
    assert weights.max() > 2.0 and weights.min() == 1.0
    for out_mask, weight in zip(out_masks, weights):
        np.testing.assert_array_equal(weight[..., 0], border_weights(out_mask[..., 0], border))
        assert not np.array_equal(weight[..., 0], border_weights(mask[..., 0], border))


def test_parallel_calls_get_a_worker_each_and_stay_deterministic(fresh_workers):
    augment = GraphAugmenter(functools.partial(build_policy, STRONG, SIZE), processes=True)
    images, masks = _batch(*_square(), 3)
    ds = tf.data.Dataset.range(24).batch(3).map(lambda s: augment(images, masks, s),
                                                num_parallel_calls=2)
    first, second = ([i.numpy() for i, _ in ds] for _ in range(2))
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
    # the first two calls start together, and a worker takes ~1 s to start: one worker each
    assert len(pool.workers) == 2


@pytest.mark.parametrize("streams", [1, 2])
def test_each_worker_serves_two_calls_in_order(fresh_workers, streams):
    """``streams`` workers, two calls in flight on each, give what threads give."""
    make = functools.partial(build_policy, STRONG, SIZE)
    images, masks = _random_batch(3)
    in_processes = GraphAugmenter(make, processes=True, streams=streams)
    assert in_processes.parallel_calls == 2 * streams

    def augmented(augmenter, calls):
        ds = tf.data.Dataset.range(36).batch(3).map(lambda s: augmenter(images, masks, s),
                                                    num_parallel_calls=calls)
        return [(i.numpy(), m.numpy()) for i, m in ds]

    expected = augmented(GraphAugmenter(make), 1)
    for got in (augmented(in_processes, in_processes.parallel_calls), augmented(in_processes, 1)):
        for (image_a, mask_a), (image_b, mask_b) in zip(expected, got):
            np.testing.assert_array_equal(image_a, image_b)
            np.testing.assert_array_equal(mask_a, mask_b)
    assert len(pool.workers) == streams


def test_calls_queue_on_the_first_workers_whatever_else_the_pool_holds(fresh_workers):
    started = [pool.borrow(1), pool.borrow(1)]            # two workers, as 2 streams left them
    for worker in started:
        pool.give_back(worker)
    held = [pool.borrow(1, 1), pool.borrow(1, 1)]
    assert held[0] is held[1] is started[0] and started[0].holders == 2
    third = pool.borrow(1, 2)                              # 2 streams: the other worker
    assert third is started[1]
    for worker in (*held, third):
        pool.give_back(worker)
    assert [w.holders for w in pool.workers] == [0, 0]


def test_a_worker_that_dies_fails_both_calls_it_holds(fresh_workers):
    augment = GraphAugmenter(functools.partial(build_policy, STRONG, SIZE), processes=True,
                             streams=1)
    images, masks = _random_batch(2)
    augment._apply(images, masks, np.arange(2))
    first, second = pool.borrow(1, 1), pool.borrow(1, 1)
    assert first is second and first.holders == 2
    os.kill(first.process.pid, signal.SIGKILL)
    for _ in range(2):
        with pytest.raises(workers.AugmentWorkerError, match="died"):
            first.run(augment._factory, images, masks, np.arange(2), SIZE)
        pool.give_back(first)
    assert pool.workers == ()
    augment._apply(images, masks, np.arange(2))          # a new worker takes over
    assert len(pool.workers) == 1 and pool.workers[0] is not first


def test_a_call_waiting_its_turn_fails_at_once_when_the_worker_dies(fresh_workers):
    augment = GraphAugmenter(functools.partial(build_policy, STRONG, SIZE), processes=True,
                             streams=1)
    images, masks = _random_batch(2)
    augment._apply(images, masks, np.arange(2))
    worker = pool.workers[0]
    os.kill(worker.process.pid, signal.SIGSTOP)      # both requests wait in the pipe
    errors = []

    def call():
        try:
            augment._apply(images, masks, np.arange(2))
        except workers.AugmentWorkerError as error:
            errors.append(str(error))

    calls = [threading.Thread(target=call) for _ in range(2)]
    for thread in calls:
        thread.start()
    for _ in range(2000):                           # both sent: one reads, one waits its turn
        if worker.holders == 2 and worker.sent == 3:
            break
        threading.Event().wait(0.01)
    os.kill(worker.process.pid, signal.SIGKILL)
    for thread in calls:
        thread.join(20)
    assert not any(thread.is_alive() for thread in calls) and len(errors) == 2
    assert all("died" in e or "stopped answering" in e for e in errors)
    assert pool.workers == ()


def test_a_failing_policy_reports_the_workers_traceback_and_the_worker_carries_on(fresh_workers):
    # a 64 px crop of 32 px images: albumentations raises inside the worker
    augment = GraphAugmenter(functools.partial(build_policy, AugmentConfig(), 64, train_crop=64),
                             64, processes=True)
    augment._apply(*_random_batch(2, side=64), np.arange(2))
    worker = pool.workers[0]
    with pytest.raises(workers.AugmentWorkerError, match=r"(?s)failed in worker process.*Error"):
        augment._apply(*_random_batch(2, side=32), np.arange(2))
    augment._apply(*_random_batch(2, side=64), np.arange(2))
    assert pool.workers == (worker,)


def test_a_worker_killed_mid_call_is_a_clear_error_and_one_killed_idle_is_replaced(fresh_workers):
    augment = GraphAugmenter(functools.partial(build_policy, STRONG, SIZE), processes=True)
    images, masks = _random_batch(2)
    augment._apply(images, masks, np.arange(2))
    victim = pool.borrow(1)                 # as a call in flight holds it
    os.kill(victim.process.pid, signal.SIGKILL)
    victim.process.wait()
    with pytest.raises(workers.AugmentWorkerError, match=r"died \(exit code -9: killed"):
        victim.run(augment._factory, images, masks, np.arange(2), SIZE)
    pool.give_back(victim)
    assert victim not in pool.workers
    augment._apply(images, masks, np.arange(2))
    idle = pool.workers[0]
    os.kill(idle.process.pid, signal.SIGKILL)
    idle.process.wait()
    augment._apply(images, masks, np.arange(2))   # no error: the dead idle worker is replaced
    assert len(pool.workers) == 1 and pool.workers[0] is not idle


def test_a_bigger_batch_gets_a_worker_with_a_bigger_buffer(fresh_workers):
    augment = GraphAugmenter(functools.partial(build_policy, STRONG, SIZE), processes=True)
    augment._apply(*_random_batch(2), np.arange(2))
    small = pool.workers[0]
    images, masks = _random_batch(5)
    expected = GraphAugmenter(functools.partial(build_policy, STRONG, SIZE))._apply(
        images, masks, np.arange(5))
    for a, b in zip(expected, augment._apply(images, masks, np.arange(5))):
        np.testing.assert_array_equal(a, b)
    assert small.process.poll() is not None and pool.workers[0] is not small


def test_shutdown_during_a_call_is_a_clear_error_and_the_pool_recovers(fresh_workers):
    augment = GraphAugmenter(functools.partial(build_policy, STRONG, SIZE), processes=True)
    images, masks = _random_batch(2)
    augment._apply(images, masks, np.arange(2))
    worker = pool.borrow(1)                 # as a call in flight holds it
    pool.shutdown()
    with pytest.raises(workers.AugmentWorkerError, match="died"):
        worker.run(augment._factory, images, masks, np.arange(2), SIZE)
    pool.give_back(worker)
    assert pool.workers == ()
    augment._apply(images, masks, np.arange(2))
    assert len(pool.workers) == 1


def test_processes_need_a_policy_factory_that_pickles():
    with pytest.raises(TypeError, match="must pickle"):
        GraphAugmenter(lambda: build_policy(STRONG, SIZE), processes=True)


def test_exit_refuses_new_calls_and_waits_for_running_ones():
    calls = augment_module._CallsInFlight()
    entered, release = threading.Event(), threading.Event()

    def call():
        with calls.running():
            entered.set()
            release.wait()

    running = threading.Thread(target=call)
    running.start()
    entered.wait()
    closing = threading.Thread(target=calls.close)
    closing.start()
    closing.join(0.3)
    assert closing.is_alive()               # waits for the running call
    release.set()
    closing.join(10)
    running.join(10)
    assert not closing.is_alive()
    with pytest.raises(RuntimeError, match="exiting"):
        with calls.running():
            pass
