"""Datasets: uploads (limits, format and schema detection, column mapping, line-numbered errors),
the check page, rename and delete. Imports `common`, `base_models` and `worker`.

Its app label stays `user_datasets` (the tables and migrations of existing installations); as
`jobs.datasets` it never shadows Hugging Face's top-level `datasets` package."""
