"""Quality: measure retrieval on labelled folders before choosing a model or a projection.

Leave-one-out precision/recall/mAP@k, nearest-centroid accuracy and held-out splits.
"""
