"""WP1: the self-supervised PET + MRI foundation model (plain library, no Django).

* :mod:`ml.foundation.data`: exam channel stacks on the common grid (model input).
* :mod:`ml.foundation.model`: the 3D ViT encoder, :func:`~ml.foundation.model.encode`,
  :func:`~ml.foundation.model.load_encoder`.
* :mod:`ml.foundation.pretext`: masked inpainting, cross-modal and contrastive pretext tasks.
* :mod:`ml.foundation.train`: :func:`~ml.foundation.train.pretrain` (single process or torchrun/DDP).
* :mod:`ml.foundation.probe`: linear probes, retrieval, reconstruction and curve figures.

Submodules are imported explicitly (``from ml.foundation.model import encode``): this package
imports nothing heavy itself.
"""
