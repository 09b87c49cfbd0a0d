"""HTTP API clients: their bearer tokens (stored only as hashes) and their request rate limit."""

from worker.clients.rate_limit import ClientRateLimit
from worker.clients.tokens import Client, ClientExistsError, ClientInfo, ClientStore

__all__ = ["Client", "ClientExistsError", "ClientInfo", "ClientRateLimit", "ClientStore"]
