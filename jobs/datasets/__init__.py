"""Datasets: uploads (limits, format and schema detection, column mapping, line-numbered errors),
the check page, rename and delete. Imports `common`, `base_models` and `worker`.

Named `user_datasets`, not `datasets`, so that it never shadows Hugging Face's `datasets` package."""
