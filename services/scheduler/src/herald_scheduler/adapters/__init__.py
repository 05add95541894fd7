"""MongoDB repositories."""
