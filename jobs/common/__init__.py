"""Small shared pieces every app may use: live events and SSE, file and error responses, storage
paths, public ids, REST helpers and the task queue. Imports only Django, DRF, Redis and `worker`."""
