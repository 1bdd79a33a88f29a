"""Webhooks: endpoints an owner registers to hear when their jobs end, signed deliveries with
retries, their page and REST API. Learns of job ends from `jobs.training.signals.job_finished`;
imports `common` and `training` (to describe a job), and nothing imports it but the wiring."""
