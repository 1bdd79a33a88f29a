"""Dataset files: problems, schemas, formats, loading, normalised JSONL and tokenization, one module
each. Nothing is re-exported here, so training (normalised JSONL + tokenization) never imports the
CSV and Parquet readers: import from the module that owns a name."""
