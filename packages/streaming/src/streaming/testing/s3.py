"""A real S3 API server on 127.0.0.1 for tests and demos: moto's `ThreadedMotoServer`.

    with local_s3_server() as server:
        os.environ.update(server.env())       # or monkeypatch.setenv for each item
        url = server.new_bucket()              # "s3://streaming-test-3f2a..."
        ...                                    # boto3 and streaming.storage talk HTTP to it
        server.requests(method="GET", bucket=url)   # what the server was asked, for counting

The server listens on a port the OS picks (no fixed port, so parallel suites never clash) and is
stopped when the block exits. moto accepts any credentials unless asked otherwise;
`server.enforce_credentials()` turns on its IAM checks for a block and yields a valid key pair, so
wrong keys are rejected the way AWS rejects them (`InvalidAccessKeyId`, `SignatureDoesNotMatch`).

moto (with its `[server]` extra) is imported only when a server starts; the library never imports
this module.
"""

from __future__ import annotations

import contextlib
import json
import threading
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

__all__ = ["LocalS3Server", "ServerRequest", "local_s3_server"]

# Test credentials: moto's default account accepts any key while IAM checks are off.
ACCESS_KEY = "testing"
SECRET_KEY = "testing"
REGION = "us-east-1"

# Variables that would point boto3 somewhere else (a developer's profile, a session token, a role),
# removed while a test talks to the local server.
UNSET_ENV = (
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
)


@dataclass(frozen=True, kw_only=True)
class ServerRequest:
    """One HTTP request the server answered: `path` is the decoded path, e.g. `/bucket/key`."""

    method: str
    path: str
    query: str
    status: int


@dataclass(kw_only=True)
class LocalS3Server:
    """Handle on a running local S3 server; made by `local_s3_server()`."""

    endpoint_url: str
    _log: list[ServerRequest] = field(default_factory=list, repr=False)
    _log_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _default_client: Any = field(default=None, repr=False)

    def env(self) -> dict[str, str]:
        """Environment under which both `streaming.storage` and plain boto3 use this server.

        Also blanks the shared config files (so `~/.aws` cannot redirect anything), turns off the
        EC2 metadata lookup (no network beyond 127.0.0.1) and bypasses HTTP proxies for it.
        Remove the variables in `unset_env()` as well.
        """
        return {
            "S3_ENDPOINT_URL": self.endpoint_url,
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ENDPOINT_URL_S3": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_REGION": REGION,
            "AWS_CONFIG_FILE": "/dev/null",
            "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
            "AWS_EC2_METADATA_DISABLED": "true",
            "NO_PROXY": "127.0.0.1,localhost",
            "no_proxy": "127.0.0.1,localhost",
        }

    @staticmethod
    def unset_env() -> tuple[str, ...]:
        """Variables to remove from the environment next to setting `env()`."""
        return UNSET_ENV

    def client(self, **overrides: Any) -> Any:
        """A plain boto3 S3 client for this server (test credentials unless overridden)."""
        import boto3

        if not overrides and self._default_client is not None:
            return self._default_client  # making a client takes a noticeable fraction of a second

        options: dict[str, Any] = {
            "endpoint_url": self.endpoint_url,
            "aws_access_key_id": ACCESS_KEY,
            "aws_secret_access_key": SECRET_KEY,
            "region_name": REGION,
        }
        options.update(overrides)
        client = boto3.session.Session().client("s3", **options)
        if not overrides:
            self._default_client = client
        return client

    def new_bucket(self) -> str:
        """Create a bucket with a unique name and return its URL, `s3://<name>`."""
        name = f"streaming-test-{uuid.uuid4().hex[:20]}"
        self.client().create_bucket(Bucket=name)
        return f"s3://{name}"

    def requests(
        self, *, method: str | None = None, bucket: str | None = None, key: str | None = None
    ) -> list[ServerRequest]:
        """The requests answered so far, optionally only one method, bucket or object.

        `bucket` is a name or an `s3://name` URL; `key` needs `bucket`. Path-style addressing is
        assumed (what boto3 uses for an endpoint given as an IP address).
        """
        prefix = None
        if bucket is not None:
            name = bucket.removeprefix("s3://").strip("/")
            prefix = f"/{name}/{key}" if key is not None else f"/{name}"
        with self._log_lock:
            log = list(self._log)
        return [
            entry
            for entry in log
            if (method is None or entry.method == method.upper())
            and (
                prefix is None
                or (entry.path == prefix if key is not None else _in_bucket(entry.path, prefix))
            )
        ]

    @contextlib.contextmanager
    def enforce_credentials(self) -> Iterator[dict[str, str]]:
        """Check every request's credentials (moto's IAM simulation) inside the block.

        Yields valid credentials (`aws_access_key_id`, `aws_secret_access_key`) of a new IAM user
        allowed `s3:*`; the usual test key is then rejected with `InvalidAccessKeyId`. The setting
        is server-wide: do not run other requests against this server concurrently.
        """
        iam = self.client_for("iam")
        user = f"streaming-test-{uuid.uuid4().hex[:12]}"
        iam.create_user(UserName=user)
        policy = {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
        }
        iam.put_user_policy(UserName=user, PolicyName="s3", PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName=user)["AccessKey"]
        previous = self._set_auth_threshold("0")
        try:
            yield {
                "aws_access_key_id": key["AccessKeyId"],
                "aws_secret_access_key": key["SecretAccessKey"],
            }
        finally:
            self._set_auth_threshold(previous)

    def client_for(self, service: str) -> Any:
        """A plain boto3 client of any AWS service moto serves (IAM, STS, ...), on this server."""
        import boto3

        return boto3.session.Session().client(
            service,
            endpoint_url=self.endpoint_url,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name=REGION,
        )

    def _set_auth_threshold(self, count: str) -> str:
        """Set moto's INITIAL_NO_AUTH_ACTION_COUNT over HTTP; return the previous value."""
        request = urllib.request.Request(
            f"{self.endpoint_url}/moto-api/reset-auth",
            data=count.encode(),
            method="POST",
            headers={"Content-Type": "text/plain"},  # a form type would hide the body from moto
        )
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(request, timeout=10) as response:
            return json.loads(response.read())["PREVIOUS_INITIAL_NO_AUTH_ACTION_COUNT"]

    def _record(self, entry: ServerRequest) -> None:
        with self._log_lock:
            self._log.append(entry)


def _in_bucket(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix + "/")


@contextlib.contextmanager
def local_s3_server() -> Iterator[LocalS3Server]:
    """Start moto's S3 server on 127.0.0.1 and a free port; stop it when the block exits."""
    try:
        from moto.server import ThreadedMotoServer
    except ImportError as err:
        raise ImportError(
            f"the local S3 server needs moto with its server extra, which failed to import "
            f"({err}): pip install 'moto[server]>=5'"
        ) from err

    holder: dict[str, LocalS3Server] = {}

    class _LoggingMotoServer(ThreadedMotoServer):
        """ThreadedMotoServer whose WSGI app records each request for `LocalS3Server.requests`."""

        def _server_entry(self) -> None:
            from moto.moto_server.werkzeug_app import (
                DomainDispatcherApplication,
                MotoRequestHandler,
                create_backend_app,
            )
            from werkzeug.serving import make_server

            class QuietHandler(MotoRequestHandler):
                def log_request(self, *args: Any, **kwargs: Any) -> None:
                    """Do not print a line per request (errors are still logged)."""

            app = _logged(DomainDispatcherApplication(create_backend_app), holder)
            self._server = make_server(
                self._ip_address, self._port, app, True, request_handler=QuietHandler
            )
            self._server_ready_event.set()
            self._server.serve_forever()

    # Port 0: the OS picks a free port when the socket binds, so there is no race between
    # finding a port and taking it.
    moto_server = _LoggingMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto_server.start()
    try:
        host, port = moto_server.get_host_and_port()
        server = LocalS3Server(endpoint_url=f"http://{host}:{port}")
        holder["server"] = server
        yield server
    finally:
        moto_server.stop()


def _logged(app: Callable[..., Any], holder: dict[str, LocalS3Server]) -> Callable[..., Any]:
    """Wrap a WSGI app so each answered request is appended to the server's log."""

    def wrapper(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        def recording_start_response(status: str, headers: Any, *args: Any) -> Any:
            server = holder.get("server")
            if server is not None:
                server._record(
                    ServerRequest(
                        method=environ["REQUEST_METHOD"],
                        path=environ.get("PATH_INFO", ""),
                        query=environ.get("QUERY_STRING", ""),
                        status=int(status.split()[0]),
                    )
                )
            return start_response(status, headers, *args)

        return app(environ, recording_start_response)

    return wrapper
