"""Storage: local folders and S3-compatible object stores, for shards, indexes and checkpoints.

- `download(url, local_path)`: once per node (flock beside the file), atomic (temp file, fsync,
  rename), retried with exponential backoff and full jitter on transient failures only;
  `discard(local_path)` removes a damaged copy under the same lock so it is fetched again.
- `open_dataset_index(remote, local)`: `index.json`, with one clear error naming the URL for a
  missing bucket, refused credentials or a missing index.
- `Uploader(remote)`: a writer's background uploads; `parse_out(out)` reads a writer's `out=`.
- `upload_file`, `upload_bytes`, `read_bytes`, `object_exists`, `list_objects`, `delete_object`:
  one-call operations by URL, with the same retries.
- `ObjectStore`, `LocalStore` (paths, `file://`), `S3Store` (`s3://`), picked from `STORES` by
  scheme; `get_store(url, **options)` shares one per process.

Endpoint and credentials: keyword arguments (`endpoint_url`, `aws_access_key_id`, ...) win over
the environment (`S3_ENDPOINT_URL`, `AWS_ENDPOINT_URL_S3`, `AWS_ENDPOINT_URL`, `AWS_*`). boto3
(`pip install 'streaming[s3]'`) is imported only when an s3:// URL is first used.
"""

from streaming.storage.download import (
    DEFAULT_TIMEOUT,
    INDEX_NAME,
    discard,
    download,
    file_identity,
    open_dataset_index,
    produce_once,
)
from streaming.storage.ops import (
    delete_object,
    list_objects,
    object_exists,
    read_bytes,
    upload_bytes,
    upload_file,
)
from streaming.storage.retry import (
    DEFAULT_RETRIES,
    Backoff,
    TransientStorageError,
    call_with_retries,
)
from streaming.storage.s3 import S3Store
from streaming.storage.stores import (
    STORAGE_OPTIONS,
    STORES,
    LocalStore,
    ObjectStore,
    atomic_write,
    get_store,
    is_partial_name,
    store_class,
    write_bytes_atomic,
)
from streaming.storage.upload import Uploader
from streaming.storage.urls import is_remote, join_url, local_path_of, parse_out, scheme_of

__all__ = [
    "DEFAULT_RETRIES",
    "DEFAULT_TIMEOUT",
    "INDEX_NAME",
    "STORAGE_OPTIONS",
    "STORES",
    "Backoff",
    "LocalStore",
    "ObjectStore",
    "S3Store",
    "TransientStorageError",
    "Uploader",
    "atomic_write",
    "call_with_retries",
    "delete_object",
    "discard",
    "download",
    "file_identity",
    "produce_once",
    "get_store",
    "is_partial_name",
    "is_remote",
    "join_url",
    "list_objects",
    "local_path_of",
    "object_exists",
    "open_dataset_index",
    "parse_out",
    "read_bytes",
    "scheme_of",
    "store_class",
    "upload_bytes",
    "upload_file",
    "write_bytes_atomic",
]
