"""Evaluation: the outputs of every head of a network, the segmentation metrics, and the report
(per case, per class, per modality)."""
