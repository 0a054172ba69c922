"""The STOW-RS sender: stores files on a DICOMweb server, with the C-STORE sender's retry rules."""

from __future__ import annotations

import logging
from pathlib import Path

import requests
from dicomweb_client.api import DICOMwebClient
from pydicom import dcmread

from scp import statuses
from scp.sender import SendOutcome

log = logging.getLogger(__name__)

_RETRYABLE_HTTP = {408, 425, 429, 500, 502, 503, 504}


def _failure(response: object) -> SendOutcome | None:
    """The first failed instance in a STOW-RS response dataset, as an outcome; None when all were stored."""
    failed = getattr(response, "FailedSOPSequence", None)
    if not failed:
        return None
    reason = int(failed[0].get("FailureReason", 0x0110))
    detail = f"instance {failed[0].get('ReferencedSOPInstanceUID', '?')} refused"
    return SendOutcome(False, statuses.is_retryable(reason), reason, detail)


def stow_files(paths: list[Path], url: str, timeout: float) -> SendOutcome:
    """STOW-RS `paths` to the DICOMweb service at `url` (its root, e.g. http://pacs:8042/dicom-web).

    Connection failures, timeouts, HTTP 408/429/5xx and Out of Resources are retryable; other
    HTTP errors and refused instances are not."""
    try:
        datasets = [dcmread(p) for p in paths]
    except Exception as exc:  # the report on disk is unreadable: retrying cannot help
        log.error("report file unreadable: %s", exc)
        return SendOutcome(False, False, None, "a report file cannot be read (details in the node's log)")
    client = DICOMwebClient(url, timeout=timeout)
    client.set_http_retry_params(retry=False)  # the deliverer owns retries and their backoff
    try:
        response = client.store_instances(datasets)
    except requests.HTTPError as exc:
        code = exc.response.status_code if exc.response is not None else 0
        return SendOutcome(False, code in _RETRYABLE_HTTP, None, f"STOW-RS to {url}: HTTP {code}")
    except requests.Timeout:
        return SendOutcome(False, True, None, f"STOW-RS to {url}: no answer in {timeout:g} s")
    except requests.ConnectionError as exc:
        log.warning("STOW-RS to %s: %s", url, exc)
        return SendOutcome(False, True, None, f"STOW-RS to {url}: no connection (details in the node's log)")
    except requests.RequestException as exc:
        log.warning("STOW-RS to %s failed: %s", url, exc)
        return SendOutcome(False, True, None, f"STOW-RS to {url} failed (details in the node's log)")
    return _failure(response) or SendOutcome(True, False, 0x0000, f"stored {len(paths)} via STOW-RS")
