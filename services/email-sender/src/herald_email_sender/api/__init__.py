"""HTTP surfaces: the RFC 8058 one-click unsubscribe endpoint."""
