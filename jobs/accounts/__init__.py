"""Accounts: sign-up, personal API keys and the one Bearer-key authentication every API uses.
Imports only `common`."""
