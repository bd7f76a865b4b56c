"""The DICOMweb connection of `medssl pacs` and `medssl serve --pacs`: `connect(url, ...) -> Pacs`.

Credentials never come from the command line (they would sit in the shell history and the process list) and are
never logged or printed:
- MEDSSL_PACS_TOKEN: a bearer token; or MEDSSL_PACS_USER with MEDSSL_PACS_PASSWORD: HTTP basic auth;
- or a file (`--auth-file F`, or MEDSSL_PACS_AUTH_FILE) whose first line is `Bearer TOKEN` or `USER:PASSWORD`.
A URL with credentials in it (`http://user:pw@host`) is refused. HTTPS verifies the server's certificate against
requests' public CA bundle (certifi), or a CA bundle (`--ca-bundle PEM` or MEDSSL_PACS_CA_BUNDLE) for a hospital's own CA.

Every request has a timeout (connect and each read); a server that stops sending mid-transfer ends in a timeout,
not a hang. `pacs_errors(pacs, what)` turns a failure of the transport or the server (refused connection,
authentication refused, TLS, timeout, HTTP errors) into one MedsslError line that names the server (without any
credential) and what was being done.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from medssl.errors import MedsslError, PacsError

TOKEN_ENV, USER_ENV, PASSWORD_ENV = "MEDSSL_PACS_TOKEN", "MEDSSL_PACS_USER", "MEDSSL_PACS_PASSWORD"
AUTH_FILE_ENV, CA_ENV = "MEDSSL_PACS_AUTH_FILE", "MEDSSL_PACS_CA_BUNDLE"
CONNECT_TIMEOUT = 10.0


@dataclass
class Pacs:
    """A DICOMweb client (dicomweb_client.DICOMwebClient) and what names the server in messages."""

    client: Any
    url: str  # without credentials
    timeout: float
    auth: str = "none"  # none | basic | bearer: said in messages, the secret never


def _bearer(token: str) -> Any:
    import requests

    class Bearer(requests.auth.AuthBase):
        def __call__(self, r):
            r.headers["Authorization"] = f"Bearer {token}"
            return r

        def __repr__(self) -> str:  # never shows the token
            return "Bearer(***)"

    return Bearer()


def read_credentials(auth_file: str | None = None) -> tuple[str, Any]:
    """('none' | 'basic' | 'bearer', a requests auth or None) from the auth file, else the environment."""
    import requests

    auth_file = auth_file or os.environ.get(AUTH_FILE_ENV) or None
    if auth_file:
        p = Path(auth_file)
        try:
            lines = p.read_text(encoding="utf-8").strip().splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise MedsslError(f"--auth-file {p}: cannot be read ({type(e).__name__})") from None
        first = lines[0].strip() if lines else ""
        scheme, _, value = first.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return "bearer", _bearer(value.strip())
        user, sep, password = first.partition(":")
        if not sep or not user:
            raise MedsslError(f"--auth-file {p}: the first line must be 'Bearer TOKEN' or 'USER:PASSWORD'")
        return "basic", requests.auth.HTTPBasicAuth(user, password)
    token = os.environ.get(TOKEN_ENV, "").strip()
    user, password = os.environ.get(USER_ENV, ""), os.environ.get(PASSWORD_ENV)
    if token and user:
        raise MedsslError(f"both {TOKEN_ENV} and {USER_ENV} are set: give one way of signing in")
    if token:
        return "bearer", _bearer(token)
    if user:
        if password is None:
            raise MedsslError(f"{USER_ENV} is set without {PASSWORD_ENV}")
        return "basic", requests.auth.HTTPBasicAuth(user, password)
    return "none", None


def check_url(url: str) -> str:
    """The URL, checked: http(s), a host, no credentials in it."""
    parts = urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]  # what messages show: never a user name or password
    safe = urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    if parts.username or parts.password:
        raise MedsslError(f"--url {safe}: credentials in the URL are refused (they would sit in the shell history); "
                          f"set {USER_ENV} and {PASSWORD_ENV}, {TOKEN_ENV}, or --auth-file")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise MedsslError(f"--url {safe!r}: must be an http:// or https:// address of a DICOMweb service "
                          "(e.g. http://127.0.0.1:8042/dicom-web)")
    try:
        parts.port  # noqa: B018 - a bad port raises here
    except ValueError:
        raise MedsslError(f"--url {safe!r}: the port is not a number in 0..65535") from None
    return url.rstrip("/")


def connect(url: str, *, auth_file: str | None = None, ca_bundle: str | None = None,
            timeout: float = 30.0) -> Pacs:
    """A client of the DICOMweb service at `url` (nothing is sent yet): cheap checks of every option first."""
    import requests
    from dicomweb_client.api import DICOMwebClient

    url = check_url(url)
    if not timeout > 0:
        raise MedsslError(f"--timeout {timeout}: must be a positive number of seconds")
    kind, auth = read_credentials(auth_file)
    ca_bundle = ca_bundle or os.environ.get(CA_ENV) or None
    session = requests.Session()
    session.trust_env = False  # no proxy or .netrc from the environment: the address given is the one reached
    session.auth = auth
    if ca_bundle:
        if not Path(ca_bundle).is_file():
            raise MedsslError(f"--ca-bundle {ca_bundle}: no such file")
        if not url.startswith("https://"):
            raise MedsslError(f"--ca-bundle is for https:// addresses; {url} is plain http")
        session.verify = ca_bundle
    client = DICOMwebClient(url, session=session, timeout=(min(CONNECT_TIMEOUT, timeout), timeout))
    # a busy server (429 / 503 / 504) is retried twice after short waits; anything else fails at once
    client.set_http_retry_params(retry=True, max_attempts=3, wait_exponential_multiplier=200)
    return Pacs(client, url, timeout, kind)


@contextlib.contextmanager
def pacs_errors(pacs: Pacs, what: str) -> Iterator[None]:
    """Turn a failure talking to the PACS into one MedsslError line: the server, what was being done, why."""
    import requests

    where = f"PACS {pacs.url}"
    try:
        yield
    except MedsslError:
        raise
    except requests.exceptions.SSLError:
        raise PacsError(f"{where}: the server's TLS certificate is not trusted while {what} (give the "
                        f"hospital's CA with --ca-bundle PEM or {CA_ENV})", "unreachable") from None
    except requests.exceptions.Timeout:
        raise _timeout(where, pacs, what) from None
    except requests.exceptions.HTTPError as e:
        status = e.response.status_code if e.response is not None else 0
        if status in (401, 403):
            how = {"none": f"no credentials were given ({USER_ENV} / {PASSWORD_ENV}, {TOKEN_ENV} or --auth-file)",
                   "basic": "check the user name and password", "bearer": "check the token"}[pacs.auth]
            raise PacsError(f"{where}: authentication refused (HTTP {status}) while {what}: {how}", "auth") from None
        if status == 404:
            raise PacsError(f"{where}: not found (HTTP 404) while {what}: is the URL the DICOMweb root "
                            "(e.g. .../dicom-web)?", "not_found") from None
        reason = (e.response.reason if e.response is not None else "") or "error"
        raise PacsError(f"{where}: HTTP {status} {reason} while {what}", "refused") from None
    except (requests.exceptions.ConnectionError, requests.exceptions.ChunkedEncodingError) as e:
        text = str(e).lower()
        if "timed out" in text:  # a read that times out mid-body comes as a ConnectionError from requests
            raise _timeout(where, pacs, what) from None
        why = ("connection refused: is the server running?" if "refused" in text else
               "the connection broke off mid-transfer" if "broken" in text or "incomplete" in text
               or "reset" in text or "chunked" in text or "aborted" in text else
               "cannot connect")
        raise PacsError(f"{where}: {why} (while {what})", "unreachable") from None
    except requests.exceptions.RequestException as e:
        raise PacsError(f"{where}: {type(e).__name__} while {what}", "unreachable") from None
    except ValueError as e:  # dicomweb-client's checks of UIDs and of what the server sent
        raise PacsError(f"{where}: {str(e).splitlines()[0] if str(e) else type(e).__name__} while {what}",
                        "refused") from None


def _timeout(where: str, pacs: Pacs, what: str) -> PacsError:
    return PacsError(f"{where}: no answer within {pacs.timeout:g} s while {what} (timeout; --timeout sets it); "
                     "nothing partial was kept", "timeout")
