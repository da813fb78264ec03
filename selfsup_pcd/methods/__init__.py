"""Self-supervised pretraining methods (LightningModules). Each exports its point backbone after training."""
