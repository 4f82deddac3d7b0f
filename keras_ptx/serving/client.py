"""A small REST client for an export served by TF Serving (no TensorFlow needed).

    body = build_request(["a.png", "b.jpg"])          # {"signature_name": ..., "instances": [...]}
    results = predict("http://localhost:8501/v1/models/ptx:predict", ["a.png", "b.jpg"])
    results[0]["mask"]                                 # uint8 (height, width), the image's own size
    results[0]["rle"]                                  # the same mask as submission.csv holds it
    predict(url, ["a.png"], signature_name=SERVING_COMPACT)   # keras_ptx.serving's: no mask, no map

Requests use TF Serving's row format: the image signatures have one input (``image_bytes``),
so each instance is the image itself as ``{"b64": ...}``. The answer's ``predictions`` hold one
object per image; :func:`parse_response` turns them into numpy arrays (strings and scalars as
Python values) and crops each mask to its image's ``height`` x ``width``. A 1024 x 1024 mask is
megabytes of JSON; ``serving_compact`` answers only the RLE, the size, the probability and the
flag (see BENCHMARKS.md for both sizes).
"""
from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterable, Union

import numpy as np

from keras_ptx.serving import SERVING_DEFAULT

ImageSource = Union[str, Path, bytes]
_DTYPES = {"probabilities": np.float32, "mask": np.uint8, "pneumothorax_probability": np.float32,
           "has_pneumothorax": np.bool_, "height": np.int32, "width": np.int32, "rle": np.str_}
_SCALARS = ("pneumothorax_probability", "has_pneumothorax", "height", "width", "rle")


class ServingError(RuntimeError):
    """TF Serving answered with an error, or with something that is not a prediction."""


def _read(image: ImageSource) -> bytes:
    if isinstance(image, bytes):
        return image
    return Path(image).read_bytes()


def build_request(images: Iterable[ImageSource], signature_name: str = SERVING_DEFAULT) -> dict:
    """The JSON body of a predict request for encoded images (file paths or bytes)."""
    instances = [{"b64": base64.b64encode(_read(image)).decode("ascii")} for image in images]
    if not instances:
        raise ValueError("build_request needs at least one image")
    return {"signature_name": signature_name, "instances": instances}


def parse_response(response: Union[dict, str, bytes]) -> list[dict]:
    """A predict response (JSON text or the parsed object) -> one dict of numpy values per image."""
    if not isinstance(response, dict):
        try:
            response = json.loads(response)
        except json.JSONDecodeError as exc:
            raise ServingError(f"the response is not JSON: {exc}") from None
    if "error" in response:
        raise ServingError(f"TF Serving: {response['error']}")
    if not isinstance(response.get("predictions"), list):
        raise ServingError(f"expected a 'predictions' list, got keys {sorted(response)}")
    results = []
    for prediction in response["predictions"]:
        if not isinstance(prediction, dict) or "has_pneumothorax" not in prediction:
            raise ServingError("each prediction should be an object with the export's outputs, "
                               f"got {str(prediction)[:80]!r}")
        result = {name: np.asarray(value, dtype=_DTYPES.get(name))
                  for name, value in prediction.items()}
        for name in _SCALARS:
            if name in result:
                result[name] = result[name].item()
        if "mask" in result and "height" in result:
            result["mask"] = result["mask"][:result["height"], :result["width"]]
        results.append(result)
    return results


def predict(url: str, images: Iterable[ImageSource], signature_name: str = SERVING_DEFAULT,
            timeout: float = 60.0) -> list[dict]:
    """POST the images to a TF Serving predict URL (``http://host:8501/v1/models/NAME:predict``)."""
    body = json.dumps(build_request(images, signature_name)).encode()
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return parse_response(answer.read())
    except urllib.error.HTTPError as exc:
        return parse_response(exc.read() or json.dumps({"error": f"HTTP {exc.code}"}))
    except urllib.error.URLError as exc:
        raise ServingError(f"cannot reach {url}: {exc.reason}") from None
