"""What went out, as the sandbox recorded it."""
