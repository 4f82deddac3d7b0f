"""The DICOM node behind ``bin/serve-dicom``: a Storage SCP that takes studies from a PACS,
predicts each frontal chest radiograph, and once its study is quiet answers with SEG and SR
objects (:mod:`keras_ptx.results.dicom_objects`) by C-STORE or STOW-RS.

:mod:`.config` (the settings), :mod:`.receiver` (the SCP), :mod:`.spool` (durable instances,
objects and per-study progress), :mod:`.model` (in-process or TF Serving), :mod:`.builder`
(the result objects), :mod:`.sender` (C-STORE, STOW-RS, backoff), :mod:`.child` (work in a
child process of its own: the builder and the sender run there, :mod:`.sender_process`),
:mod:`.status` (counters in ``status.json``), :mod:`.service` (the threads that join them).
"""
