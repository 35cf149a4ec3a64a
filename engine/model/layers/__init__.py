"""Layers the model families share."""
