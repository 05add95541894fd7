"""The email-sender's rules: message building, pacing, circuit breaking, retry timing."""
