"""Callbacks: events, Standard Webhooks signing, the SSRF guard, the guarded transport, delivery."""
