"""TF Serving exports (:mod:`.export`, :mod:`.warmup`) and a REST client (:mod:`.client`).

The names below are the serving API; the client reads them without importing TensorFlow.

``serving_default``  input ``image_bytes``: string ``[B]``, each an encoded PNG, JPEG, GIF or BMP
    of any size, gray or colour (colour is converted with ITU-R 601 weights, as
    ``tf.image.rgb_to_grayscale``). Outputs:
    ``probabilities``  float32 ``[B, S, S]``  pixel probabilities on the model's square grid
    ``mask``           uint8 ``[B, H_max, W_max]``  post-processed {0,1} mask on each input's own
                       grid, zero-padded at the bottom and right to the batch's largest size;
                       input ``i`` owns ``mask[i, :height[i], :width[i]]``. It is the mask
                       ``bin/predict`` gives for the same probabilities, pixel for pixel
    ``rle``            string ``[B]``  that mask as ``bin/predict`` writes it to submission.csv
                       (:func:`keras_ptx.data.rle.encode`: SIIM's relative, column-major runs,
                       ``-1`` when empty; the CSV's stage-1 layout adds a leading space)
    ``height``, ``width``  int32 ``[B]``  each input's size
    ``pneumothorax_probability``  float32 ``[B]``  the image-level head, or the largest pixel
                       probability when the model has no head
    ``has_pneumothorax``  bool ``[B]``  the returned mask is not empty
``serving_compact``  input ``image_bytes`` as above. Outputs ``rle``, ``height``, ``width``,
    ``pneumothorax_probability`` and ``has_pneumothorax`` as above: a few hundred bytes of JSON
    per image instead of megabytes (decode ``rle`` with ``keras_ptx.data.rle.decode(rle,
    height, width)``).
``predict_image``  input ``images``: float32 ``[B, S, S, 1]``, gray levels 0..255 already on the
    square grid (pad bottom/right to a square, then resize). Outputs ``probabilities``, ``mask``
    (``[B, S, S]``, post-processed on the grid with ``side = S``), ``pneumothorax_probability``
    and ``has_pneumothorax`` as above.

``BATCHING_FILE`` in an export's version folder holds TF Serving's BatchingParameters for it.
"""
SERVING_DEFAULT = "serving_default"
SERVING_COMPACT = "serving_compact"
PREDICT_IMAGE = "predict_image"
BYTES_INPUT = "image_bytes"
IMAGE_INPUT = "images"
WARMUP_FILE = "assets.extra/tf_serving_warmup_requests"
BATCHING_FILE = "batching_params.pbtxt"
