"""Shared maths (jnp/numpy only, no Flax): boxes, FDR bins, anchors, the COCO category table.

``models``, ``losses`` and ``evaluate`` import from here and never from each other.
"""
