"""Helpers with the same import paths as `segment_anything.utils` (transforms, amg)."""
