"""Herald ingest: business events in, the single current truth about each case out."""
