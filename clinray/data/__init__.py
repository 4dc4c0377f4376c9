"""Curation and packing of pretraining data on Ray Data."""
