"""Org-wide limits on Hatz API use, kept in Redis: the credit-overage breaker, the API budget."""
