"""Herald scheduler: campaigns, triggers and time."""
