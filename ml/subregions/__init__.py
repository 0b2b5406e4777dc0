"""WP2: aggressive-subregion mapping at diagnosis and the biopsy target (plain library, no Django).

Habitats of tumour voxels from the WP1 encoder's embeddings and the voxel PET dynamics
(:mod:`.habitats`), the patient habitat signature and its association with IDH, 1p/19q and WHO
grade (:mod:`.signature`), per-voxel aggressiveness maps attributing the marker model back to
voxels and habitats (:mod:`.aggressiveness`), the biopsy target with a safety margin and its
comparators (SUVmax, earliest-TTP cluster) with their evaluation (:mod:`.target`), and the
export for navigation systems: CSV points, NIfTI and DICOM SEG (:mod:`.export`).
Results and the bench: docs/results.md, bench/bench_subregions.py.
"""
from __future__ import annotations
