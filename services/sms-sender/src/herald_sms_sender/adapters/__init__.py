"""Provider client and ledger."""
