"""Pretraining objectives for FLAVA: masking, losses and their heads."""
