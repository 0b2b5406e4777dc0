"""WP3: progression vs treatment-related change with deep models, compared honestly (no Django).

* :mod:`ml.classify.inputs`: lesion-centred crops, augmentations, features of channel stacks.
* :mod:`ml.classify.training`: the training loop shared by the deep families.
* :mod:`ml.classify.cnn`: a MONAI 3D CNN from scratch (:class:`~ml.classify.cnn.CnnClassifier`).
* :mod:`ml.classify.finetune`: the WP1 encoder fine-tuned or linear-probed
  (:class:`~ml.classify.finetune.FoundationClassifier`).
* :mod:`ml.classify.protocol`: splits by patient, external site, leave-one-site-out, learning curves;
  the classical radiomics pipeline and the T/S max rule through the same splits.
* :mod:`ml.classify.metrics`: bootstrap CIs, calibration, post-hoc calibration, paired DeLong test.

Submodules are imported explicitly (``from ml.classify.cnn import CnnClassifier``): this package
imports nothing heavy itself.
"""
