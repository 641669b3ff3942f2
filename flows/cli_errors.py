"""What the ``tailforge`` command says when a user can fix the failure: one line and what to do
(flows/cli.py prints it and exits 2)."""

from __future__ import annotations

import os

from pydantic import ValidationError

from tasks.checked import explain

USER_ERRORS = (ValueError, FileNotFoundError, PermissionError, RuntimeError, LookupError)
EPHEMERAL_START_S = 120
EPHEMERAL_TIMEOUT = "Timed out while attempting to connect to ephemeral Prefect API server"


def storage_errors() -> tuple[type[Exception], ...]:
    """What an unreachable storage endpoint raises (botocore and aiohttp, under s3fs; the store's
    own bound on a call)."""
    from tasks.store import StorageTimeout

    errors: list[type[Exception]] = [StorageTimeout]
    try:
        from botocore.exceptions import ConnectionError as BotoConnectionError  # endpoint, connect timeout
        from botocore.exceptions import HTTPClientError  # read timeout, connection closed
        errors += [BotoConnectionError, HTTPClientError]
    except ImportError:
        pass
    try:
        from aiohttp import ClientError
        errors.append(ClientError)
    except ImportError:
        pass
    return tuple(errors)


def credential_errors() -> tuple[type[Exception], ...]:
    """What s3fs raises when no (or half a) set of AWS credentials is configured."""
    try:
        from botocore.exceptions import NoCredentialsError, PartialCredentialsError
    except ImportError:
        return ()
    return NoCredentialsError, PartialCredentialsError


def storage_message(exc: Exception) -> str:
    """One line: which endpoint could not be reached, and what to do."""
    from urllib.parse import urlsplit

    from tasks.store import storage_options_from_env

    url = (getattr(exc, "kwargs", None) or {}).get("endpoint_url") or \
        storage_options_from_env().get("client_kwargs", {}).get("endpoint_url")
    parts = urlsplit(url) if url else None  # botocore names the object's URL: keep scheme and host
    endpoint = f"{parts.scheme}://{parts.netloc}" if parts else "the default AWS S3 endpoint"
    reason = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
    return (f"cannot reach the storage endpoint {endpoint} ({reason}). Check that it is up and that "
            f"TAILFORGE_S3_ENDPOINT_URL and the AWS credentials point at it, then run the same command "
            f"again: finished shards are kept and a re-run adds only what is missing")


def user_message(exc: Exception) -> str:
    """One line for the user; Prefect's temporary-server timeout becomes what to do about it, and
    settings built with a bad value name the setting (not pydantic's multi-line report)."""
    if isinstance(exc, ValidationError):
        return f"{exc.title}: {explain(exc)}"
    if str(exc).startswith(EPHEMERAL_TIMEOUT):
        return (f"Prefect's temporary server did not start within "
                f"{os.environ.get('PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS', EPHEMERAL_START_S)} s (a busy "
                f"machine, or a locked SQLite file under PREFECT_HOME). Run it on a lasting server instead: add "
                f"--local-server (started once under $TAILFORGE_HOME, reused after), or set PREFECT_API_URL, or "
                f"wait longer with PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS")
    return str(exc)
