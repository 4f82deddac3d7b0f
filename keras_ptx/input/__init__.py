"""Input pipeline: TFRecord shards -> augmented, normalised model batches (tf.data)."""
