"""The Python client of the credit-ledger HTTP API (a distribution of its own).

`CreditClient` and `AsyncCreditClient` call the service; `credit_ledger_client.schemas` is the
wire contract (msgspec structs of every request and response body), which the service itself
decodes and documents with; `verify_webhook` checks a webhook's signature (standard library
only). Nothing here imports the server: an application installs this package alone, with
httpx and msgspec.
"""

from credit_ledger_client.client import *  # noqa: F403 (the client's public names, its __all__)
from credit_ledger_client.client import __all__ as _client_names
from credit_ledger_client.webhooks import WebhookVerificationError, verify_webhook

__all__ = [*_client_names, "WebhookVerificationError", "verify_webhook"]
