"""Herald sandbox: fake providers for development and tests."""
