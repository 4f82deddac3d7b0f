"""TF Serving exports (:mod:`.export`, :mod:`.warmup`) and a REST client (:mod:`.client`).

The names below are the serving API; the client reads them without importing TensorFlow.

``serving_default``  input ``image_bytes``: string ``[B]``, each an encoded PNG, JPEG, GIF or BMP
    of any size, gray or colour (colour is converted with ITU-R 601 weights, as
    ``tf.image.rgb_to_grayscale``). Outputs:
    ``probabilities``  float32 ``[B, S, S]``  pixel probabilities on the model's square grid
    ``mask``           uint8 ``[B, H_max, W_max]``  post-processed {0,1} mask on each input's own
                       grid, zero-padded at the bottom and right to the batch's largest size;
                       input ``i`` owns ``mask[i, :height[i], :width[i]]``
    ``height``, ``width``  int32 ``[B]``  each input's size
    ``pneumothorax_probability``  float32 ``[B]``  the image-level head, or the largest pixel
                       probability when the model has no head
    ``has_pneumothorax``  bool ``[B]``  the returned mask is not empty
``predict_image``  input ``images``: float32 ``[B, S, S, 1]``, gray levels 0..255 already on the
    square grid (pad bottom/right to a square, then resize). Outputs ``probabilities``, ``mask``
    (``[B, S, S]``), ``pneumothorax_probability`` and ``has_pneumothorax`` as above.
"""
SERVING_DEFAULT = "serving_default"
PREDICT_IMAGE = "predict_image"
BYTES_INPUT = "image_bytes"
IMAGE_INPUT = "images"
WARMUP_FILE = "assets.extra/tf_serving_warmup_requests"
