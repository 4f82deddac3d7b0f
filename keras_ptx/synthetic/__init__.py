"""A SIIM-ACR stand-in: synthetic chest radiographs with pneumothoraces, as DICOMs + RLE CSV.

``anatomy`` draws the chest, ``pneumothorax`` the lesions and their masks, ``dicom_writer``
writes the files, ``dataset`` lays out a whole dataset (``bin/make-synthetic``).
"""
