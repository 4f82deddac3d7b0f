"""SIIM-ACR formats: RLE masks, label CSVs, DICOM images, the TFRecord schema.

Only the modules that read or write record folders (``records``, ``records_dir``,
``manifest``, ``build``) import TensorFlow; the others (``dicom``, ``rle``, ``annotations``,
``geometry``, ``split``, ``convert``) do not, so the build's worker processes (``convert``)
and :mod:`keras_ptx.synthetic` run without it. Nothing here builds models
(docs/ARCHITECTURE.md, "Layers and the dependency rule").
"""
