"""Placements and the worst-case search."""
