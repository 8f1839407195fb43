"""Data pipeline for FLAVA: text tokenisation, image transforms and datasets."""
