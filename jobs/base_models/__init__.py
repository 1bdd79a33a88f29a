"""Base models: the catalogue of frozen models that datasets are checked against and jobs train on
(registration from a local folder, the demo model). Imports only `common` and `worker`."""
