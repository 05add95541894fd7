"""Herald email-sender: Sends email through an SMTP relay."""
