"""The web side: the Django apps by domain (training, datasets, arena, accounts, webhooks, base_models,
openai_compat, the schema history app) and `common`, the helpers they share. They import `worker/` (the
engine), never the other way; `webapp/` wires them together."""
