"""Two worker processes on 127.0.0.1 train one model together under MultiWorkerMirroredStrategy:
on one run directory, and each in its own folder with its own copy of the records (machines that
share nothing but the cluster), killed and resumed."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest

from keras_ptx import rundir
from test_train import REPO, SLIM, TEST_CONFIG, write_records

# Each worker saves the weights it ends training with (before the best checkpoint is reloaded),
# and kills itself at the start of epoch $KILL_AT_EPOCH (0-based), after the epoch before it was
# backed up.
DRIVER = """
import os, signal, sys
import numpy as np
from keras_ptx.config import load_config
from keras_ptx.tf_setup import tf
from keras_ptx.training.run import train

config, data, out, weights, *overrides = sys.argv[1:]
kill_at = int(os.environ.get("KILL_AT_EPOCH", -1))


class SaveWeights(tf.keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        if epoch == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

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


OVERRIDES = ["train.strategy=auto", "train.epochs=2", "train.steps_per_epoch=3",
             "train.swa_epochs=1", *SLIM]


def _records(folder):
    data = write_records(folder, "train", 16, seed=1, shards=2)
    write_records(data, "val", 6, seed=2)
    return data


def _train_two_workers(tmp_path, runs, data, cwds, env=None, timeout=400):
    """Start worker 0 (the chief) and worker 1 with their own run path, records and working
    folder; returns their (return code, output) once both have ended."""
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    cluster = {"worker": [f"127.0.0.1:{port}" for port in _free_ports(2)]}
    workers = []
    for index in range(2):
        worker_env = {**os.environ, **(env or {}), "TF_CONFIG": json.dumps(
            {"cluster": cluster, "task": {"type": "worker", "index": index}}),
            "PYTHONPATH": str(REPO)}
        workers.append(subprocess.Popen(
            [sys.executable, str(driver), str(TEST_CONFIG), str(data[index]), str(runs[index]),
             str(tmp_path / f"weights-{index}.npz"), *OVERRIDES],
            env=worker_env, cwd=cwds[index], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, start_new_session=True))
    outputs = []
    try:
        for worker in workers:
            outputs.append(worker.communicate(timeout=timeout)[0])
    finally:
        for worker in workers:
            if worker.poll() is None:
                os.killpg(worker.pid, signal.SIGKILL)
                outputs.append(worker.communicate()[0])
    return [(worker.returncode, output) for worker, output in zip(workers, outputs)]


def _assert_same_final_weights(tmp_path):
    with np.load(tmp_path / "weights-0.npz") as a, np.load(tmp_path / "weights-1.npz") as b:
        assert a.files == b.files and len(a.files) > 10
        for key in a.files:
            np.testing.assert_array_equal(a[key], b[key])


@pytest.mark.slow
def test_two_workers_train_together_and_end_with_the_same_weights(tmp_path):
    data = _records(tmp_path / "records")
    run = tmp_path / "run"
    results = _train_two_workers(tmp_path, [run, run], [data, data], [REPO, REPO])
    outputs = [output for _, output in results]
    for code, output in results:
        assert code == 0, output
    assert "on 2 replicas (multi_worker strategy)" in outputs[0]

    # Only the chief (worker 0) wrote the run directory, and it is complete.
    for name in (rundir.CONFIG, rundir.HISTORY, rundir.METRICS, rundir.BEST_WEIGHTS,
                 f"{rundir.CHECKPOINTS}/{rundir.BEST_WEIGHTS}"):
        assert (run / name).is_file(), name
    assert not [p for p in run.rglob("*") if "workertemp" in p.name]
    metrics = json.loads((run / rundir.METRICS).read_text())
    assert metrics["epochs_trained"] == 2 and metrics["weight_averaging"]["epochs"] == [2]
    assert "epoch 2/2" in outputs[0] and "epoch 2/2" not in outputs[1]
    _assert_same_final_weights(tmp_path)


@pytest.mark.slow
def test_workers_that_share_no_disk_are_killed_and_resume(tmp_path):
    """Each worker runs in its own folder with its own records and a relative --out: the other
    worker's run directory is not on its path. Both are killed (SIGKILL) after epoch 1's backup,
    and the same two commands finish the run from it."""
    roots = [tmp_path / "machine-0", tmp_path / "machine-1"]
    data = [_records(root / "records") for root in roots]
    runs = ["run", "run"]                 # relative: under each machine's own folder

    killed = _train_two_workers(tmp_path, runs, data, roots, env={"KILL_AT_EPOCH": "1"})
    assert [code for code, _ in killed] == [-signal.SIGKILL] * 2, killed
    chief_run, worker_run = (root / "run" for root in roots)
    assert (chief_run / rundir.CHECKPOINTS / rundir.BACKUP / "chief").is_dir()
    assert len((chief_run / rundir.HISTORY).read_text().splitlines()) == 2   # header, epoch 1

    results = _train_two_workers(tmp_path, runs, data, roots)
    assert [code for code, _ in results] == [0, 0], "\n---\n".join(out for _, out in results)
    assert "continuing after epoch 1 from the backup" in results[0][1]
    metrics = json.loads((chief_run / rundir.METRICS).read_text())
    assert metrics["completed"] and metrics["epochs_trained"] == 2
    assert metrics["weight_averaging"]["epochs"] == [2]
    _assert_same_final_weights(tmp_path)
    # the other worker wrote nothing that lasts, and never had the chief's files to read
    assert not [p for p in worker_run.rglob("*") if p.is_file()]
    shutil.rmtree(roots[1])
