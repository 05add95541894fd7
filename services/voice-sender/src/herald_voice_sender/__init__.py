"""Herald voice-sender: Places IVR callback calls through Twilio Voice."""
