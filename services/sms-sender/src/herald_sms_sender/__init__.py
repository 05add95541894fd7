"""Herald sms-sender: SMS through Twilio Messaging."""
