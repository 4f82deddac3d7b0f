"""SIIM-ACR formats: RLE masks, label CSVs, DICOM images, TFRecord schema. No TensorFlow models."""
