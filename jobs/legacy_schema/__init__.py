"""The schema history of `jobs`, the one Django app this project once had. Its migrations still
create the tables on a fresh database and record what an existing one has; migration 0006 hands
every table to the domain app that now owns it (the tables keep their `jobs_` names). It holds no
models and no code: add nothing here."""
