"""Arena: chat and compare. The same prompt to the base and adapted models side by side, blind A/B
votes, the win-rate table, OpenAI-style completions, and the infer worker's chat tasks.
Imports `common`, `base_models`, `training` (jobs and their adapters) and `worker`."""
