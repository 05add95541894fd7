"""The sandbox's HTTP surfaces: Twilio-compatible REST and its own JSON API."""
