"""Continued pretraining on Ray Train V2 with FSDP2, and the loop instruction tuning reuses (docs/training.md)."""
