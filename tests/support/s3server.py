"""A real S3-protocol server (moto's server mode) on loopback, with the standard AWS variables
pointing at it, so that s3fs and botocore reach it as they would a real object store."""
from __future__ import annotations

import contextlib
import gc
import logging

import pytest


def fresh_s3fs() -> None:
    """s3fs caches filesystems (and the endpoint they were made with) per process: drop them, and
    collect their aiohttp sessions now rather than in the middle of the next test."""
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    gc.collect()


@contextlib.contextmanager
def s3_server(*buckets: str):
    """Yields an s3fs filesystem on a moto server holding the `buckets` (moto keeps its objects per
    process, across servers: a bucket made earlier keeps what it held)."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # a log line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        with pytest.MonkeyPatch.context() as mp:
            for k, v in {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "test",
                         "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}.items():
                mp.setenv(k, v)
            fresh_s3fs()
            import s3fs

            fs = s3fs.S3FileSystem()
            for b in buckets:
                if not fs.exists(b):
                    fs.mkdir(b)
            yield fs
            fresh_s3fs()
    finally:
        server.stop()
