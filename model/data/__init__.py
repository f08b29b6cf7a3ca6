"""Training and evaluation data: masks, SBI/BI pseudo-fakes, targets, augmentation and the shard Datasets.

``python -m model.data preview|face-scale`` runs the commands of `model.data.preview`.
"""
