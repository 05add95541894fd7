"""Send ledger rules."""
