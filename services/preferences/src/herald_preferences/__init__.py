"""Herald preferences: how each customer wants to be reached, and the proof of consent."""
