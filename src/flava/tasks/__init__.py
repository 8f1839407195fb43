"""Downstream tasks: zero-shot classification, retrieval, linear probe, fine-tuning."""
