"""fedsim: a wireless federated LoRA fine-tuning simulator on Flower."""

__version__ = "0.2.0"
