"""Image input/output: NIfTI and DICOM readers and writers, BIDS parsing. No Django."""
