"""A real S3 endpoint for tests: moto's server on 127.0.0.1 (a free port), over HTTP like any store."""

from __future__ import annotations

import uuid

from tests.ports import free_port

CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def start_moto():
    """A started ThreadedMotoServer and its endpoint URL."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    return server, f"http://127.0.0.1:{port}"


def s3_client(endpoint: str):
    """A boto3 S3 client of the endpoint, as an administrator's tools would use it."""
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        region_name=CREDENTIALS["AWS_DEFAULT_REGION"],
    )


def stored_keys(endpoint: str, bucket: str, prefix: str = "") -> list[str]:
    """Every key in the bucket under `prefix`, sorted."""
    pages = s3_client(endpoint).get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


def new_bucket(endpoint: str) -> str:
    """A fresh, empty bucket on the endpoint; its name."""
    name = f"lora-{uuid.uuid4().hex[:12]}"
    s3_client(endpoint).create_bucket(Bucket=name)
    return name


def store_env(endpoint: str, bucket: str, prefix: str = "studio") -> dict[str, str]:
    """The environment a process needs to keep its files in the bucket."""
    return {"STORAGE_URL": f"s3://{bucket}/{prefix}", "AWS_ENDPOINT_URL": endpoint, **CREDENTIALS}


def upload_folder(endpoint: str, folder, url: str) -> None:
    """Copy a local folder to s3://BUCKET/PREFIX (as an administrator would with `aws s3 cp --recursive`)."""
    bucket, _, prefix = url[len("s3://") :].partition("/")
    client = s3_client(endpoint)
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            client.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(folder).as_posix()}")
