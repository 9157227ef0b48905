"""Operators the models are built from, one per file: ``dynamic_conv.py`` (brief B)."""
