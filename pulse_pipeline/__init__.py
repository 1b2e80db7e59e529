"""pulse_pipeline: continuous LoRA fine-tuning from human feedback, as one Dagster lineage graph."""

__version__ = "0.1.0"
