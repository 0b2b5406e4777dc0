"""Writes on the cohort: imports (BIDS, DICOM), preparation on the common grid, QC, cohorts."""
