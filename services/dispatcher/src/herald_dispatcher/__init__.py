"""Herald dispatcher: the contact policy engine."""
