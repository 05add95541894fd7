"""Repositories and publishers behind small interfaces."""
