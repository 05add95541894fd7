"""Server-rendered pages for customers."""
