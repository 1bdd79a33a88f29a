"""OpenAI-compatible API under /v1/ (files, fine-tuning jobs, models, chat completions): translates
OpenAI's shapes onto the other apps' services and selectors. It has no models, and nothing imports it
but the wiring (webapp/urls.py and the DRF exception handler it sets on its views)."""
