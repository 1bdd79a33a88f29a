"""Training: fine-tuning jobs from the form or an API to the adapter zip (job services and the
train/merge tasks, the job form and pages, the job APIs, live metrics, the merged export).
Imports `common`, `base_models`, `datasets` and `worker`; tells other domains that a job
ended through the `job_finished` signal, never by importing them."""
