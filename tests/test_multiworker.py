"""Two worker processes on 127.0.0.1 train one model together under MultiWorkerMirroredStrategy."""
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from keras_ptx import rundir
from test_train import REPO, SLIM, TEST_CONFIG, write_records

# Each worker saves the weights it ends training with (before the best checkpoint is reloaded).
DRIVER = """
import sys
import numpy as np
from keras_ptx.config import load_config
from keras_ptx.tf_setup import tf
from keras_ptx.training.run import train

config, data, out, weights, *overrides = sys.argv[1:]


class SaveWeights(tf.keras.callbacks.Callback):
    def on_train_end(self, logs=None):
        np.savez(weights, *self.model.get_weights())


train(load_config(config, overrides), data, out, callbacks=[SaveWeights()])
"""


def _free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.mark.slow
def test_two_workers_train_together_and_end_with_the_same_weights(tmp_path):
    data = write_records(tmp_path / "records", "train", 16, seed=1, shards=2)
    write_records(data, "val", 6, seed=2)
    run = tmp_path / "run"
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    cluster = {"worker": [f"127.0.0.1:{port}" for port in _free_ports(2)]}
    overrides = ["train.strategy=auto", "train.epochs=2", "train.steps_per_epoch=3",
                 "train.swa_epochs=1", *SLIM]
    workers = []
    for index in range(2):
        env = {**os.environ, "TF_CONFIG": json.dumps(
            {"cluster": cluster, "task": {"type": "worker", "index": index}})}
        workers.append(subprocess.Popen(
            [sys.executable, str(driver), str(TEST_CONFIG), str(data), str(run),
             str(tmp_path / f"weights-{index}.npz"), *overrides],
            env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = []
    try:
        for worker in workers:
            outputs.append(worker.communicate(timeout=400)[0])
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
    for worker, output in zip(workers, outputs):
        assert worker.returncode == 0, output
    assert "on 2 replicas (multi_worker strategy)" in outputs[0]

    # Only the chief (worker 0) wrote the run directory, and it is complete.
    for name in (rundir.CONFIG, rundir.HISTORY, rundir.METRICS, rundir.BEST_WEIGHTS,
                 f"{rundir.CHECKPOINTS}/{rundir.BEST_WEIGHTS}"):
        assert (run / name).is_file(), name
    assert not [p for p in run.rglob("*") if "workertemp" in p.name]
    metrics = json.loads((run / rundir.METRICS).read_text())
    assert metrics["epochs_trained"] == 2 and metrics["weight_averaging"]["epochs"] == [2]
    assert "epoch 2/2" in outputs[0] and "epoch 2/2" not in outputs[1]

    with np.load(tmp_path / "weights-0.npz") as a, np.load(tmp_path / "weights-1.npz") as b:
        assert a.files == b.files and len(a.files) > 10
        for key in a.files:
            np.testing.assert_array_equal(a[key], b[key])
