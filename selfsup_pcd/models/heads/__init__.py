from selfsup_pcd.models.heads.classifier import ClassifierHead

__all__ = ["ClassifierHead"]
