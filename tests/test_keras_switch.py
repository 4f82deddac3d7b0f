"""keras_ptx runs on tf-keras (Keras 2) and refuses clearly when Keras 3 got there first."""
import os
import subprocess
import sys


def _run(code: str, **env):
    environ = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    environ.update(env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=environ, timeout=120)


def test_importing_keras_ptx_first_gives_tf_keras():
    result = _run("import keras_ptx.tf_setup as s; print(s.tf.keras.layers.Layer.__module__)")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().startswith("tf_keras.")


def test_keras3_loaded_before_keras_ptx_is_refused_with_a_clear_error():
    result = _run("import tensorflow, keras\nimport keras_ptx")
    assert result.returncode != 0
    assert "KerasVersionError" in result.stderr
    assert "Import keras_ptx before tensorflow" in result.stderr


def test_legacy_keras_switched_off_is_refused():
    result = _run("import keras_ptx", TF_USE_LEGACY_KERAS="0")
    assert "KerasVersionError" in result.stderr and "TF_USE_LEGACY_KERAS" in result.stderr


def test_tensorflow_start_up_lines_are_filtered_and_the_rest_kept():
    result = _run("import sys; import keras_ptx.tf_setup as s; s.tf.constant(1) + 1\n"
                  "import os; os.write(2, b'a line of ours\\n')", TF_USE_LEGACY_KERAS="1")
    assert result.returncode == 0, result.stderr[-2000:]
    for noise in ("absl::InitializeLog", "oneDNN", "cuda drivers", "cuInit", "cpu_feature_guard"):
        assert noise not in result.stderr
    assert "a line of ours" in result.stderr


def test_tensorflow_loads_with_standard_error_closed():
    code = "import keras_ptx.tf_setup as s; print(s.tf.constant(2).numpy())"
    result = subprocess.run(["bash", "-c", f"'{sys.executable}' -c '{code}' 2>&-"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "2"
