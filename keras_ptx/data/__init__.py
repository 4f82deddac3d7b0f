"""SIIM-ACR formats: RLE masks, label CSVs, DICOM images, the TFRecord schema.

Only ``records`` imports TensorFlow (for tf.train.Example); nothing here builds models.
"""
