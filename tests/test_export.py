"""bin/export: the SavedModel runs with plain TensorFlow and agrees with the project's own path.

Two exports of a 64x64 EfficientNet-B0 UNet++ (random weights, a triplet post-processing tuned
to its outputs), without and with hflip TTA, are made through the CLI; one fresh Python process
that imports only TensorFlow (and TF Serving's protos) loads them, runs every signature, loads
the first the way TF Serving's C++ server does (a TF1 Session fed and fetched by the
SignatureDefs' tensor names), replays the warm-up records and answers a client request body
the way TF Serving's REST layer would.
"""
import base64
import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from keras_ptx.commands.export import command
from keras_ptx.config import dump_config, load_config
from keras_ptx.data import geometry, rle
from keras_ptx.inference.postprocess import PostProcess, image_map
from keras_ptx.inference.runner import Predictor
from keras_ptx.input.normalize import to_model_input
from keras_ptx.model import build_model
from keras_ptx.rundir import BEST_WEIGHTS, CONFIG, POSTPROCESS
from keras_ptx.serving import (BATCHING_FILE, PREDICT_IMAGE, SERVING_COMPACT, SERVING_DEFAULT,
                               WARMUP_FILE)
from keras_ptx.serving.client import ServingError, build_request, parse_response, predict
from keras_ptx.inference.ensemble import Ensemble
from keras_ptx.inference.engine import model_identity
from keras_ptx.serving.export import (BATCHING, decode_gray_tf, encode_rle_tf, next_version,
                                      read_metadata, to_square_tf)
from keras_ptx.tf_setup import tf

SIZE = 64
WARMUP = 4
VERSIONS = {"1": "none", "2": "hflip"}      # export version: its TTA
SIGNATURES = sorted([SERVING_DEFAULT, SERVING_COMPACT, PREDICT_IMAGE])
# name: (height, width, encoding, colour) -- on the grid as is, padded only, shrunk, grown;
# gray, gray stored as RGB, and a tinted colour JPEG
IMAGES = {"square": (64, 64, ".png", "gray"), "tall": (64, 48, ".png", "gray"),
          "wide_rgb": (48, 64, ".png", "rgb"), "big": (100, 77, ".png", "gray"),
          "small_jpeg": (40, 30, ".jpg", "tinted")}
EXACT = ("square", "tall", "wide_rgb")      # no resizing: the project's path is bit-comparable

FRESH = r"""
import base64, json, sys
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2

base, inputs, out = sys.argv[1:4]
names = json.loads(open(inputs + "/names.json").read())
images = [open(f"{inputs}/{n}", "rb").read() for n in names]
squares = np.load(inputs + "/squares.npy")
feeds = {"image_bytes": np.array(images, dtype=object), "images": squares}
result, arrays = {}, {}


def plain(value):  # strings as unicode, so that the arrays load without pickle
    return np.vectorize(bytes.decode, otypes=[str])(value) if value.dtype == object else value


for version in ("1", "2"):
    model = tf.saved_model.load(f"{base}/{version}")
    result["signatures/" + version] = sorted(model.signatures.keys())
    for name, signature in model.signatures.items():
        (key,) = signature.structured_input_signature[1]
        for output, value in signature(**{key: tf.constant(feeds[key])}).items():
            arrays[f"{version}/{name}/{output}"] = plain(value.numpy())
export = base + "/1"
model = tf.saved_model.load(export)

# As TF Serving's C++ loader: a TF1 session, tensors fed and fetched by the SignatureDefs' names.
with tf.Graph().as_default() as graph, tf.compat.v1.Session(graph=graph) as session:
    meta = tf.compat.v1.saved_model.loader.load(session, ["serve"], export)
    result["session_signatures"] = sorted(k for k in meta.signature_def if not k.startswith("__"))
    for name in result["session_signatures"]:
        definition = meta.signature_def[name]
        feed = {info.name: feeds[key] for key, info in definition.inputs.items()}
        fetch = {key: info.name for key, info in definition.outputs.items()}
        for output, value in session.run(fetch, feed).items():
            arrays[f"session/{name}/{output}"] = plain(value)

replayed = []
for record in tf.data.TFRecordDataset(export + "/assets.extra/tf_serving_warmup_requests"):
    log = prediction_log_pb2.PredictionLog.FromString(record.numpy())
    request = log.predict_log.request
    feed = {k: tf.constant(tf.make_ndarray(v)) for k, v in request.inputs.items()}
    outputs = model.signatures[request.model_spec.signature_name](**feed)
    replayed.append({"signature": request.model_spec.signature_name,
                     "batch": int(outputs["height" if "height" in outputs else "mask"].shape[0]),
                     "outputs": sorted(outputs)})
result["warmup"] = replayed

# What TF Serving's REST layer does with the client's body: b64 -> DT_STRING, row-format answer.
body = json.loads(open(inputs + "/request.json").read())
feed = tf.constant([base64.b64decode(i["b64"]) for i in body["instances"]])
for name in ("serving_default", "serving_compact"):
    outputs = {k: v.numpy() for k, v in model.signatures[name](image_bytes=feed).items()}
    result["response/" + name] = {"predictions": [
        {k: v[i].decode() if v.dtype == object else v[i].tolist() for k, v in outputs.items()}
        for i in range(len(feed))]}
try:
    model.signatures["serving_default"](image_bytes=tf.constant([b"not an image"]))
    result["bad_bytes"] = None
except tf.errors.InvalidArgumentError as exc:
    result["bad_bytes"] = exc.message
result["modules"] = sorted(m for m in sys.modules
                           if m.split(".")[0] in ("keras_ptx", "segmentation_models",
                                                  "efficientnet", "classification_models",
                                                  "tf_keras"))
np.savez(out + "/arrays.npz", **arrays)
open(out + "/result.json", "w").write(json.dumps(result))
"""


def _image(height, width, colour, seed):
    rng = np.random.default_rng(seed)
    gray = cv2.GaussianBlur(rng.random((height, width)).astype(np.float32), (0, 0), 3)
    gray = np.round(255 * (gray - gray.min()) / (gray.max() - gray.min())).astype(np.uint8)
    if colour == "tinted":
        return np.stack([gray, gray // 2 + 60, 255 - gray], axis=-1)
    return np.stack([gray] * 3, axis=-1) if colour == "rgb" else gray


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    run, base, inputs, out = (root / name for name in ("run", "base", "inputs", "out"))
    for path in (run, inputs, out):
        path.mkdir()
    config = load_config(None, [f"data.image_size={SIZE}", "model.encoder=efficientnetb0",
                                "model.weights=none", f"export.warmup_requests={WARMUP}"])
    dump_config(config, run / CONFIG)
    tf.keras.utils.set_random_seed(0)
    model = build_model(config)
    model.save_weights(str(run / BEST_WEIGHTS))

    names = []
    for seed, (name, (height, width, ext, colour)) in enumerate(IMAGES.items()):
        image = _image(height, width, colour, seed)
        names.append(name + ext)
        assert cv2.imwrite(str(inputs / names[-1]), image[..., ::-1] if image.ndim == 3 else image)
    (inputs / "names.json").write_text(json.dumps(names))
    grays = [cv2.imread(str(inputs / (n + IMAGES[n][2])), cv2.IMREAD_GRAYSCALE) for n in EXACT]
    squares = np.stack([geometry.image_to_square(g, SIZE) for g in grays])[..., None]
    np.save(inputs / "squares.npy", squares.astype(np.float32))
    (inputs / "request.json").write_text(json.dumps(build_request(
        [inputs / n for n in names[:2]] + [(inputs / names[4]).read_bytes()])))

    # A triplet cut to this untrained network's outputs, so that every rule has work to do.
    prob = model(to_model_input(squares), training=False)[0].numpy()
    post = PostProcess(kind="triplet", top_threshold=float(np.quantile(prob, 0.9)),
                       min_pixels=40 * 256, bottom_threshold=float(np.quantile(prob, 0.6)),
                       min_area=8 * 256)
    post.save(run / POSTPROCESS)

    for version, tta in VERSIONS.items():
        result = CliRunner().invoke(command, ["--model", str(run), "--out", str(base),
                                              "--tta", tta])
        assert result.exit_code == 0, result.output
        assert "post-processing: empty unless" in result.output
        assert f"{base / version}" in result.output
    export = base / "1"
    env = {k: v for k, v in os.environ.items() if k not in ("TF_USE_LEGACY_KERAS", "SM_FRAMEWORK")}
    cli = subprocess.Popen([str(Path(sys.executable).with_name("saved_model_cli")), "show",
                            "--all", "--dir", str(export)], stdout=subprocess.PIPE, text=True)
    subprocess.run([sys.executable, "-c", FRESH, str(base), str(inputs), str(out)],
                   check=True, cwd=root, env=env, timeout=300)
    shown, _ = cli.communicate(timeout=300)
    assert cli.returncode == 0
    return {"model": model, "post": post, "run": run, "base": base, "export": export,
            "squares": squares, "saved_model_cli": shown,
            "result": json.loads((out / "result.json").read_text()),
            "arrays": dict(np.load(out / "arrays.npz"))}


@pytest.mark.slow
def test_export_layout_and_plain_tensorflow_load(exported):
    result = exported["result"]
    assert sorted(p.name for p in exported["base"].iterdir()) == list(VERSIONS)  # no staging
    assert result["modules"] == []
    for version, tta in VERSIONS.items():
        export = exported["base"] / version
        assert (export / "saved_model.pb").is_file() and (export / "variables").is_dir()
        assert (export / WARMUP_FILE).is_file() and (export / BATCHING_FILE).is_file()
        assert result["signatures/" + version] == SIGNATURES
        meta = read_metadata(export)
        assert meta["postprocess"] == exported["post"].to_dict()
        assert meta["postprocess_source"] == str(exported["run"] / POSTPROCESS)
        assert meta["image_size"] == SIZE and meta["tta"] == tta
        assert meta["signatures"] == SIGNATURES
        assert meta["batching"] == {"file": BATCHING_FILE, **BATCHING}
        # the identity the DICOM objects' UIDs derive from: bin/predict's for the same model
        run = Ensemble(str(exported["run"]))
        assert meta["model_identity"] == model_identity(run, run.tta(tta)).model


@pytest.mark.slow
def test_probabilities_equal_the_in_process_model(exported):
    arrays, model = exported["arrays"], exported["model"]
    served = [list(IMAGES).index(n) for n in EXACT]
    for version, tta in VERSIONS.items():
        mask, label = Predictor(model, tta)(to_model_input(exported["squares"].astype(np.float32)))
        for name, rows in ((SERVING_DEFAULT, served), (PREDICT_IMAGE, slice(None))):
            np.testing.assert_allclose(arrays[f"{version}/{name}/probabilities"][rows], mask,
                                       atol=1e-5)
            np.testing.assert_allclose(arrays[f"{version}/{name}/pneumothorax_probability"][rows],
                                       label, atol=1e-5)
    assert not np.allclose(arrays["1/serving_default/probabilities"],
                           arrays["2/serving_default/probabilities"], atol=1e-3)


@pytest.mark.slow
@pytest.mark.parametrize("version", VERSIONS)
def test_masks_and_rles_are_what_bin_predict_gives(exported, version):
    """For the probabilities the export answers, its masks and RLEs are bin/predict's, exactly:
    the map at the image's size (image_map), the rule there (PostProcess.apply), rle.encode."""
    arrays, post = exported["arrays"], exported["post"]
    served = {key.split("/", 2)[2]: value for key, value in arrays.items()
              if key.startswith(f"{version}/{SERVING_DEFAULT}/")}
    compact = {key.split("/", 2)[2]: value for key, value in arrays.items()
               if key.startswith(f"{version}/{SERVING_COMPACT}/")}
    assert sorted(compact) == ["has_pneumothorax", "height", "pneumothorax_probability", "rle",
                               "width"]
    masks = served["mask"]
    assert masks.shape == (len(IMAGES), 100, 77) and masks.dtype == np.uint8
    no_filter = PostProcess(**{**post.to_dict(), "min_area": 0})
    kept, removed = 0, 0
    for i, (name, (height, width, _, _)) in enumerate(IMAGES.items()):
        own = image_map(served["probabilities"][i], height, width)
        cls = served["pneumothorax_probability"][i]
        expected = post.apply(own, cls)
        assert (served["height"][i], served["width"][i]) == (height, width)
        np.testing.assert_array_equal(masks[i, :height, :width], expected, err_msg=name)
        assert not masks[i, height:].any() and not masks[i, :, width:].any()
        assert served["has_pneumothorax"][i] == expected.any()
        assert served["rle"][i] == rle.encode(expected)
        for key in compact:
            assert compact[key][i] == served[key][i], key
        kept += int(expected.sum())
        removed += int((no_filter.apply(own, cls) != expected).sum())
    assert kept > 0 and removed > 0, "the post-processing had nothing to do: the test is blind"
    image = {key.split("/", 2)[2]: value for key, value in arrays.items()
             if key.startswith(f"{version}/{PREDICT_IMAGE}/")}
    for i, square in enumerate(image["probabilities"]):
        expected = post.apply(square, image["pneumothorax_probability"][i], side=SIZE)
        np.testing.assert_array_equal(image["mask"][i], expected)


@pytest.mark.slow
def test_a_tf1_session_loads_and_runs_it_as_tf_serving_does(exported):
    """Loaded as TF Serving's C++ loader loads it (session, SignatureDef tensor names), every
    signature answers what the Python-loaded SavedModel answers, and every output is
    batch-major, as TF Serving's batching splits it."""
    arrays, result = exported["arrays"], exported["result"]
    assert result["session_signatures"] == SIGNATURES
    batch = {SERVING_DEFAULT: len(IMAGES), SERVING_COMPACT: len(IMAGES),
             PREDICT_IMAGE: len(EXACT)}
    session = {key: value for key, value in arrays.items() if key.startswith("session/")}
    assert {key.split("/")[1] for key in session} == set(SIGNATURES)
    for key, value in session.items():
        loaded = arrays["1/" + key.split("/", 1)[1]]
        assert value.shape[0] == batch[key.split("/")[1]], key
        if value.dtype.kind == "f":
            np.testing.assert_allclose(value, loaded, atol=1e-6, err_msg=key)
        else:
            np.testing.assert_array_equal(value, loaded, err_msg=key)


def test_square_geometry_matches_numpy_rule():
    for seed, (height, width) in enumerate([(64, 64), (64, 48), (128, 96), (100, 77),
                                            (40, 30), (333, 200)]):
        gray = _image(height, width, False, seed)
        ours = to_square_tf(tf.constant(gray[..., None], tf.float32), SIZE).numpy()[..., 0]
        reference = geometry.image_to_square(gray, SIZE).astype(np.float32)
        assert np.abs(ours - reference).max() <= 1.0, (height, width)


def _masks():
    """Masks an RLE must survive: empty, full, one pixel, the last pixel, several components
    (one touching the last column), square and not."""
    masks = {}
    for height, width in ((1, 1), (6, 6), (7, 4), (3, 9)):
        masks[f"empty {height}x{width}"] = np.zeros((height, width), np.uint8)
        masks[f"full {height}x{width}"] = np.ones((height, width), np.uint8)
        one = np.zeros((height, width), np.uint8)
        one[height // 2, width // 2] = 1
        masks[f"one pixel {height}x{width}"] = one
        last = np.zeros((height, width), np.uint8)
        last[-1, -1] = 1
        masks[f"last pixel {height}x{width}"] = last
    several = np.zeros((7, 4), np.uint8)
    several[0, 0] = several[2:5, 1] = several[1:3, 3] = several[6, 2:] = 1
    masks["several 7x4"] = several
    masks["several 6x6"] = (np.add.outer(np.arange(6), np.arange(6)) % 3 == 0).astype(np.uint8)
    return masks


def _decode_plainly(text: str, height: int, width: int) -> np.ndarray:
    """SIIM's relative RLE read one run at a time, column-major (the competition's definition)."""
    flat = np.zeros(height * width, np.uint8)
    if text != "-1":
        values = [int(token) for token in text.split(" ")]
        position = 0
        for gap, length in zip(values[0::2], values[1::2]):
            position += gap
            flat[position:position + length] = 1
            position += length
    return flat.reshape(width, height).T


def test_rle_in_the_graph_decodes_to_the_mask():
    encode = tf.function(encode_rle_tf, input_signature=[tf.TensorSpec([None, None], tf.uint8)])
    for name, mask in _masks().items():
        text = encode(mask).numpy().decode()
        assert text == rle.encode(mask), name
        np.testing.assert_array_equal(rle.decode(text, *mask.shape), mask, err_msg=name)
        np.testing.assert_array_equal(_decode_plainly(text, *mask.shape), mask, err_msg=name)
    assert encode(_masks()["empty 6x6"]).numpy() == b"-1"
    assert encode(_masks()["last pixel 7x4"]).numpy() == b"27 1"


def _batching_parameters_message():
    """TF Serving's BatchingParameters (session_bundle_config.proto, fields 1-7), built here:
    tensorflow-serving-api does not ship that proto."""
    from google.protobuf import (descriptor_pb2, descriptor_pool, message_factory,
                                 wrappers_pb2)
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(wrappers_pb2.DESCRIPTOR.serialized_pb)
    proto = descriptor_pb2.FileDescriptorProto(
        name="batching_parameters.proto", package="tensorflow.serving", syntax="proto3",
        dependency=["google/protobuf/wrappers.proto"])
    message = proto.message_type.add(name="BatchingParameters")
    field = descriptor_pb2.FieldDescriptorProto
    for number, name, kind, type_name, label in (
            (1, "max_batch_size", field.TYPE_MESSAGE, ".google.protobuf.Int64Value", 1),
            (2, "batch_timeout_micros", field.TYPE_MESSAGE, ".google.protobuf.Int64Value", 1),
            (3, "max_enqueued_batches", field.TYPE_MESSAGE, ".google.protobuf.Int64Value", 1),
            (4, "num_batch_threads", field.TYPE_MESSAGE, ".google.protobuf.Int64Value", 1),
            (5, "thread_pool_name", field.TYPE_MESSAGE, ".google.protobuf.StringValue", 1),
            (6, "allowed_batch_sizes", field.TYPE_INT64, None, 3),
            (7, "pad_variable_length_inputs", field.TYPE_BOOL, None, 1)):
        message.field.add(name=name, number=number, type=kind, label=label,
                          **({"type_name": type_name} if type_name else {}))
    pool.Add(proto)
    return message_factory.GetMessageClass(
        pool.FindMessageTypeByName("tensorflow.serving.BatchingParameters"))()


@pytest.mark.slow
def test_batching_parameters_are_tf_servings_text_proto(exported):
    from google.protobuf import text_format
    for version in VERSIONS:
        message = _batching_parameters_message()
        text_format.Parse((exported["base"] / version / BATCHING_FILE).read_text(), message)
        parsed = {name: getattr(message, name).value for name in BATCHING
                  if name != "pad_variable_length_inputs"}
        assert parsed == {k: v for k, v in BATCHING.items() if k != "pad_variable_length_inputs"}
        assert message.pad_variable_length_inputs is True
        assert not message.allowed_batch_sizes and not message.HasField("thread_pool_name")
    with pytest.raises(text_format.ParseError):       # the parser is strict: it would notice
        text_format.Parse("max_batch_size: 8\n", _batching_parameters_message())


def test_decoding_converts_colour_with_itu_601_weights():
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (9, 7), dtype=np.uint8)
    rgb = rng.integers(0, 256, (9, 7, 3), dtype=np.uint8)
    as_png = {name: tf.io.encode_png(image).numpy() for name, image in (
        ("gray", gray[..., None]), ("gray_rgb", np.repeat(gray[..., None], 3, -1)), ("rgb", rgb))}
    for name in ("gray", "gray_rgb"):
        np.testing.assert_array_equal(decode_gray_tf(as_png[name]).numpy()[..., 0], gray)
    expected = rgb.astype(np.float64) @ [0.2989, 0.5870, 0.1140]
    assert np.abs(decode_gray_tf(as_png["rgb"]).numpy()[..., 0] - expected).max() <= 0.5 + 1e-3
    with pytest.raises(tf.errors.InvalidArgumentError):
        decode_gray_tf(b"not an image")


@pytest.mark.slow
def test_warmup_records_replay(exported):
    replayed = exported["result"]["warmup"]
    assert len(replayed) == WARMUP
    assert {r["signature"] for r in replayed} == set(SIGNATURES)
    assert [r["batch"] for r in replayed] == [1, 1, 2, 1]
    for record in replayed:
        assert {"pneumothorax_probability", "has_pneumothorax"} <= set(record["outputs"])


@pytest.mark.slow
def test_client_request_through_the_signature_matches_a_direct_call(exported):
    """A request of three of the images answers what the batch of all five answered for them
    (as TF Serving's batching may merge requests), through the client's parsing."""
    arrays = {key.split("/", 2)[2]: value for key, value in exported["arrays"].items()
              if key.startswith(f"1/{SERVING_DEFAULT}/")}
    results = parse_response(json.dumps(exported["result"]["response/" + SERVING_DEFAULT]))
    compact = parse_response(json.dumps(exported["result"]["response/" + SERVING_COMPACT]))
    assert len(results) == len(compact) == 3
    for result, small, i in zip(results, compact, [0, 1, 4]):
        height, width = IMAGES[list(IMAGES)[i]][:2]
        assert result["mask"].shape == (height, width) and result["mask"].dtype == np.uint8
        np.testing.assert_array_equal(result["mask"], arrays["mask"][i, :height, :width])
        np.testing.assert_allclose(result["probabilities"], arrays["probabilities"][i],
                                   atol=1e-6)
        assert result["has_pneumothorax"] == bool(arrays["has_pneumothorax"][i])
        assert result["pneumothorax_probability"] == pytest.approx(
            float(arrays["pneumothorax_probability"][i]), abs=1e-6)
        assert result["rle"] == small["rle"] == arrays["rle"][i]
        assert sorted(small) == ["has_pneumothorax", "height", "pneumothorax_probability", "rle",
                                 "width"]
        assert (small["height"], small["width"]) == (height, width)


def test_client_request_body_and_errors(tmp_path):
    path = tmp_path / "a.png"
    path.write_bytes(b"\x89PNG fake")
    body = build_request([path, b"raw"], signature_name=SERVING_DEFAULT)
    assert body["signature_name"] == SERVING_DEFAULT
    assert [base64.b64decode(i["b64"]) for i in body["instances"]] == [b"\x89PNG fake", b"raw"]
    with pytest.raises(ServingError, match="Unknown image"):
        parse_response('{"error": "Unknown image file format"}')
    with pytest.raises(ServingError, match="not JSON"):
        parse_response("<html>502</html>")
    with pytest.raises(ValueError):
        build_request([])


def test_client_predict_posts_json_and_reports_server_errors():
    seen = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append((self.path, body))
            if body["signature_name"] == "missing":
                status, answer = 400, {"error": "Serving signature name: missing not found"}
            else:
                status, answer = 200, {"predictions": [
                    {"mask": [[1, 0], [0, 0]], "height": 1, "width": 2,
                     "probabilities": [[0.5]], "pneumothorax_probability": 0.9,
                     "has_pneumothorax": True}] * len(body["instances"])}
            data = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/v1/models/ptx:predict"
    try:
        results = predict(url, [b"one", b"two"])
        assert seen[0][0] == "/v1/models/ptx:predict" and len(seen[0][1]["instances"]) == 2
        assert results[1]["mask"].tolist() == [[1, 0]] and results[1]["has_pneumothorax"] is True
        with pytest.raises(ServingError, match="missing not found"):
            predict(url, [b"one"], signature_name="missing")
    finally:
        server.shutdown()
        server.server_close()
    with pytest.raises(ServingError, match="cannot reach"):
        predict(url, [b"one"], timeout=5)


@pytest.mark.slow
def test_bad_image_bytes_give_a_clear_error(exported):
    assert "image" in exported["result"]["bad_bytes"].lower()


@pytest.mark.slow
def test_saved_model_cli_lists_every_signature(exported):
    shown = exported["saved_model_cli"]
    for text in ("signature_def['serving_default']", "signature_def['serving_compact']",
                 "signature_def['predict_image']", "inputs['image_bytes']", "inputs['images']",
                 "DT_STRING", "outputs['mask']", "outputs['rle']",
                 "outputs['pneumothorax_probability']", "(-1, 64, 64, 1)"):
        assert text in shown, text


@pytest.mark.slow
def test_versions_are_never_overwritten(exported):
    result = CliRunner().invoke(command, ["--model", str(exported["run"]),
                                          "--out", str(exported["base"]), "--version", "1"])
    assert result.exit_code != 0 and "already exists" in result.output
    assert "next free: 3" in result.output
    result = CliRunner().invoke(command, ["--model", str(exported["run"]),
                                          "--out", str(exported["base"]), "--version", "0"])
    assert result.exit_code != 0
    a_file = exported["base"].parent / "a-file"
    a_file.write_text("keep me")
    result = CliRunner().invoke(command, ["--model", str(exported["run"]), "--out", str(a_file)])
    assert result.exit_code == 2 and "not a folder" in result.output
    assert a_file.read_text() == "keep me"


def test_next_version_counts_integer_directories_only(tmp_path):
    assert next_version(tmp_path / "missing") == 1
    for name in ("1", "3", "tmp", ".7.partial-abc", "10x"):
        (tmp_path / name).mkdir()
    assert next_version(tmp_path) == 4


def _graph_dtypes(export) -> set:
    """Every dtype attribute of every op in a SavedModel's graph and functions."""
    from tensorflow.core.protobuf import saved_model_pb2
    saved = saved_model_pb2.SavedModel.FromString((Path(export) / "saved_model.pb").read_bytes())
    graph = saved.meta_graphs[0].graph_def
    nodes = [*graph.node, *(n for f in graph.library.function for n in f.node_def)]
    return {value.type for node in nodes for value in node.attr.values() if value.type}


@pytest.mark.slow
def test_a_mixed_precision_run_exports_float32_unless_asked(exported, tmp_path):
    """A run trained under mixed_float16 (or train.mixed_precision: auto on a GPU host) is
    served in float32 by default: the export host's GPU does not decide for a CPU server."""
    from tensorflow.core.framework import types_pb2
    run = tmp_path / "run"
    shutil.copytree(exported["run"], run)
    config = load_config(run / CONFIG, ["train.mixed_precision=true"])
    dump_config(config, run / CONFIG)
    cases = (([], "float32"), (["--precision", "mixed_float16"], "mixed_float16"),
             (["--precision", "mixed_bfloat16"], "mixed_bfloat16"))
    probabilities = {}
    for args, precision in cases:
        result = CliRunner().invoke(command, ["--model", str(run), "--out", str(tmp_path / "base"),
                                              *args])
        assert result.exit_code == 0, result.output
        assert f"precision: {precision}" in result.output
        export = sorted((tmp_path / "base").iterdir(), key=lambda p: int(p.name))[-1]
        assert read_metadata(export)["precision"] == precision
        dtypes = _graph_dtypes(export)
        assert (types_pb2.DT_HALF in dtypes) == (precision == "mixed_float16")
        assert (types_pb2.DT_BFLOAT16 in dtypes) == (precision == "mixed_bfloat16")
        predict_image = tf.saved_model.load(str(export)).signatures["predict_image"]
        probabilities[precision] = predict_image(
            images=tf.constant(exported["squares"], tf.float32))["probabilities"].numpy()
    # the reduced precisions stay within a few bfloat16 steps of float32 on this network
    for precision in ("mixed_float16", "mixed_bfloat16"):
        assert np.abs(probabilities[precision] - probabilities["float32"]).max() < 0.05


def test_the_dicom_node_answers_from_an_export_as_bin_predict_does(exported, tmp_path):
    """The node's in-process export backend (serving_compact on the decoded pixels) gives
    bin/predict's masks, probabilities and model identity for the same DICOMs, and refuses
    what predict refuses."""
    from keras_ptx.inference.predict import DicomPredictor
    from keras_ptx.inference.prediction import Prediction
    from keras_ptx.node.model import ExportModel
    from keras_ptx.synthetic.dicom_writer import write_dicom

    files = []
    for k, (shape, view) in enumerate([((64, 64), "PA"), ((100, 77), "AP"), ((48, 64), ""),
                                       ((64, 64), "LL")]):
        image = _image(*shape, "gray", seed=10 + k)
        files.append(str(write_dicom(tmp_path / f"{k}.dcm", image, image_id=f"1.2.5.{k}",
                                     study_uid="1.2.5", series_uid="1.2.5.9", patient_id="p",
                                     patient_name="X", view=view, transfer_syntax="explicit_le")))
    node = ExportModel(str(exported["export"]))                # version 1: no TTA
    predictor = DicomPredictor(str(exported["run"]), tta="none", log=lambda *_: None)
    assert node.identity == predictor.identity
    served, local = ({_path(item): item for item in answers} for answers in
                     (node.results(files), predictor.results(files, progress=False)))
    assert sorted(served) == sorted(local) == sorted(files)
    assert "ViewPosition LL" in served[files[-1]].reason
    assert served[files[-1]].reason == local[files[-1]].reason
    for path in files[:-1]:
        a, b = served[path], local[path]
        assert isinstance(a, Prediction) and isinstance(b, Prediction)
        assert abs(a.probability - b.probability) < 1e-3
        assert a.mask.shape == b.mask.shape and (a.mask != b.mask).mean() < 0.005


def _path(item) -> str:
    return str(getattr(item, "path", None) or item.image.path)
