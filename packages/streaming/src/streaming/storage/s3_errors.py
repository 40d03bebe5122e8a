"""How S3 errors become ours: permanent kinds named by `streaming.errors`, or transient ones.

botocore reports a refused request as `ClientError` with a code (`NoSuchKey`, `SlowDown`, ...) and
an HTTP status (a HEAD request has only the status), and network trouble as its own exception
classes. `translate_s3_error` maps both to `RemoteNotFoundError`, `BucketNotFoundError`,
`CredentialsError`, `TransientStorageError` (worth a retry) or `StorageError`, with a message that
names the URL, the endpoint and what to check.
"""

from __future__ import annotations

from streaming.errors import (
    BucketNotFoundError,
    CredentialsError,
    RemoteNotFoundError,
    StorageError,
)
from streaming.storage.retry import TransientStorageError
from streaming.storage.urls import split_bucket

__all__ = ["bucket_message", "translate_s3_error"]

_NOT_FOUND_CODES = {"NoSuchKey", "NotFound", "404"}
_CREDENTIAL_CODES = {
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "AccessDenied",
    "403",
    "Forbidden",
    "InvalidToken",
    "ExpiredToken",
    "TokenRefreshRequired",
    "InvalidClientTokenId",
    "AllAccessDisabled",
    "AccountProblem",
    "InvalidSecurity",
    "UnauthorizedAccess",
}
_TRANSIENT_CODES = {
    "InternalError",
    "ServiceUnavailable",
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottled",
    "RequestThrottledException",
    "TooManyRequests",
    "TooManyRequestsException",
    "RequestTimeout",
    "RequestTimeoutException",
    "RequestLimitExceeded",
    "BandwidthLimitExceeded",
    "PriorRequestNotComplete",
    "OperationAborted",
    "500",
    "502",
    "503",
    "504",
}
_REGION_CODES = {
    "AuthorizationHeaderMalformed",
    "PermanentRedirect",
    "301",
    "IllegalLocationConstraintException",
}

CREDENTIALS_HINT = (
    "check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN for temporary "
    "keys), or the aws_access_key_id= / aws_secret_access_key= storage options, and that the key "
    "may access this bucket"
)


def bucket_message(url: str, endpoint: str) -> str:
    """The message of `BucketNotFoundError` for `url`'s bucket at `endpoint`."""
    return (
        f"bucket {split_bucket(url)[0]!r} of {url} does not exist at {endpoint}; check the "
        "bucket name and the endpoint (S3_ENDPOINT_URL or endpoint_url=)"
    )


def translate_s3_error(
    err: BaseException, url: str, *, endpoint: str, signed: bool = True
) -> StorageError | None:
    """Our error for a boto3/botocore failure on `url`, or None if `err` is not one of theirs.

    `endpoint` is named in the messages; `signed` says whether the request carried credentials.
    """
    from botocore import exceptions as bce

    if type(err).__name__ == "S3UploadFailedError" and err.__context__ is not None:
        return translate_s3_error(
            err.__context__, url, endpoint=endpoint, signed=signed
        )  # boto3 wraps the ClientError
    if isinstance(err, bce.ClientError):
        error = err.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        detail = f"{code or status}: {error.get('Message') or 'no message'}"
        if code == "NoSuchBucket":
            return BucketNotFoundError(bucket_message(url, endpoint))
        if code in _NOT_FOUND_CODES or status == 404:
            return RemoteNotFoundError(
                f"{url} does not exist ({detail}) at {endpoint}; check the path"
            )
        if code in _CREDENTIAL_CODES or status == 403:
            signed = "signed" if signed else "unsigned (no credentials were found)"
            return CredentialsError(
                f"access to {url} was refused ({detail}; request {signed}, endpoint "
                f"{endpoint}): {CREDENTIALS_HINT}"
            )
        if code in _TRANSIENT_CODES or status == 429 or status >= 500:
            return TransientStorageError(f"{url}: {detail} (HTTP {status})")
        if code in _REGION_CODES:
            return StorageError(
                f"{url}: {detail}; the bucket may be in another region: set AWS_DEFAULT_REGION "
                "or region_name= (and the endpoint, for non-AWS services)"
            )
        return StorageError(f"{url}: {detail} (HTTP {status}, endpoint {endpoint})")
    if isinstance(
        err,
        bce.NoCredentialsError
        | bce.PartialCredentialsError
        | bce.CredentialRetrievalError
        | bce.ProfileNotFound,
    ):
        return CredentialsError(f"no usable credentials for {url} ({err}): {CREDENTIALS_HINT}")
    if isinstance(err, bce.SSLError) and "CERTIFICATE" in str(err).upper():
        return StorageError(
            f"TLS certificate of {endpoint} rejected for {url} ({err}); "
            "set AWS_CA_BUNDLE or verify= to the right CA bundle"
        )
    if isinstance(
        err,
        bce.ConnectionError
        | bce.HTTPClientError
        | bce.IncompleteReadError
        | bce.ChecksumError
        | ConnectionError
        | TimeoutError,
    ):
        return TransientStorageError(f"{url}: {err} (endpoint {endpoint})")
    if isinstance(err, bce.BotoCoreError):
        return StorageError(f"{url}: {err} (endpoint {endpoint})")
    return None
