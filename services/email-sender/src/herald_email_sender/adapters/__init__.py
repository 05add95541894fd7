"""The outside world behind Protocols: the SMTP relay."""
