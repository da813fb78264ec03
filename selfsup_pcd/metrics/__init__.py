from selfsup_pcd.metrics.classification import accuracy_from_confusion

__all__ = ["accuracy_from_confusion"]
