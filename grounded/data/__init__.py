"""Data files that ship with grounded (see README.md here for where each comes from)."""
