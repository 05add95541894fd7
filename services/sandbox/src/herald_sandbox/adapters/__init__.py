"""The sandbox's listeners other than HTTP: the SMTP sink."""
