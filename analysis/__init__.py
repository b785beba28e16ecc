"""Analyses of trained models (knowledge internalization, paper §7): ``embedding_pca``."""
