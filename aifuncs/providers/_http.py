"""What every remote endpoint kind shares: one httpx client per endpoint, keys from the environment,
and HTTP failures sorted into retryable and final `RemoteError`s (the runtime does the retrying).
"""

from __future__ import annotations

import base64
import datetime
import decimal
import json
import os
import time
import urllib.request
import uuid
from email.utils import parsedate_to_datetime
from http.cookiejar import CookieJar
from typing import Any, ClassVar

import httpx
from pydantic import Field

from aifuncs._home import home_file
from aifuncs.errors import AifuncsError, EndpointUnreachable, MissingSecret, RemoteError
from aifuncs.governance.egress import EgressPolicy
from aifuncs.governance.keys import keyring
from aifuncs.governance.secrets import check_env_name, parse_reference
from aifuncs.governance.secrets import resolve as resolve_secret
from aifuncs.providers._transport import CONNECT_TO, LeanTransport
from aifuncs.providers.base import Provider, ProviderOptions

_RETRYABLE_STATUS = {408, 409, 425, 429, 500, 502, 503, 504, 529}
_SHOWN_BODY = 300  # characters of an error reply quoted in messages
_SECRET_KEPT_S = 5.0  # a secret's value is read again after this long (a changed key takes effect)


class HttpOptions(ProviderOptions):
    api_key_secret: str | None = Field(
        default=None,
        description='The API key as a secret scope\'s key, "scope/key" (aifuncs secrets); saving it needs READ'
        " on the scope. Read when a request is sent, never stored with the endpoint.",
    )
    api_key_env: str | None = Field(
        default=None,
        description="Name of the server's environment variable holding the API key (never the key); admins only,"
        " never an AIFUNCS_ variable.",
    )
    egress_checked: bool = Field(
        default=False,
        description="Set by the catalog when the config's author is not an admin: every request's host must be"
        " on the home's egress allow-list (aifuncs egress).",
    )
    timeout_s: float = Field(default=60.0, gt=0, description="Seconds before one request is given up.")
    max_retries: int = Field(
        default=6, ge=0, description="Retries of a request on 429, 5xx and network errors."
    )
    retry_base_s: float = Field(
        default=0.5, ge=0, description="First backoff; it doubles per retry, with jitter."
    )
    headers: dict[str, str] = Field(default_factory=dict, description="Extra HTTP headers (no secrets).")


class HttpProvider(Provider):
    """A provider that talks HTTP. Subclasses build payloads and read replies; this class sends them."""

    Options: ClassVar[type[ProviderOptions]] = HttpOptions
    options: HttpOptions
    default_concurrency = 16
    in_process = False

    @property
    def bulk_rows(self) -> int | None:
        # On the bulk path a remote endpoint keeps its request size; what it gains is a stream of
        # requests that never drains between the engine's 2,048-row vectors.
        return self.batch_rows

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._client: httpx.AsyncClient | None = None
        self._transport: httpx.AsyncBaseTransport = LeanTransport()
        self._direct = False
        self._timeouts: dict[str, float | None] = {}
        self._urls: dict[str, httpx.URL] = {}  # parsed once: parsing cost 6% of a request's CPU
        self._kept_key: tuple[str, float] | None = None
        # The allow-list a non-admin's config is held to (made with the client; a test may give its own)
        self.egress: EgressPolicy | None = None

    @property
    def max_retries(self) -> int:
        return self.options.max_retries

    @property
    def retry_base_s(self) -> float:
        return self.options.retry_base_s

    def __repr__(self) -> str:  # never the key: only where it is read from
        where = (
            f"api_key_secret={self.options.api_key_secret!r}"
            if self.options.api_key_secret
            else f"api_key_env={self.options.api_key_env!r}"
        )
        return f"{type(self).__name__}(endpoint={self.endpoint.name!r}, {where})"

    def api_key(self) -> str | None:
        """The key for the request being sent: a secret scope's (resolved now, kept a few seconds), else the
        environment variable's. Neither is ever stored with the endpoint."""
        if self.options.api_key_secret:
            return self._secret_key(self.options.api_key_secret)
        name = self.options.api_key_env
        if name is None:
            return None
        try:
            check_env_name(name)
        except AifuncsError as error:  # stored before such names were refused: still never sent
            raise MissingSecret(f"Endpoint {self.endpoint.name!r}: {error}") from None
        value = os.environ.get(name)
        if not value:
            raise MissingSecret(
                f"Endpoint {self.endpoint.name!r} needs an API key in the environment variable {name}, which"
                f" is not set. Set it (export {name}=...) in the process that runs the query."
            )
        return value

    def _secret_key(self, text: str) -> str:
        kept = self._kept_key
        if kept is not None and time.monotonic() - kept[1] < _SECRET_KEPT_S:
            return kept[0]
        reference = parse_reference(text)
        try:
            value = resolve_secret(home_file("catalog.db"), keyring(), reference)
        except AifuncsError as error:
            raise MissingSecret(
                f"Endpoint {self.endpoint.name!r} reads its API key from {reference}: {error}"
            ) from None
        self._kept_key = (value, time.monotonic())
        return value

    def auth_headers(self, key: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"}

    def client(self) -> httpx.AsyncClient:
        # One client per endpoint, created on the runtime's loop, so connections are reused across rows.
        if self._client is None:
            self._transport = LeanTransport()
            if self.options.egress_checked:  # a non-admin's config: each request's host is checked first
                if self.egress is None:
                    self.egress = EgressPolicy(home_file("catalog.db"))
                self._transport = EgressTransport(self._transport, self.egress)
            self._client = httpx.AsyncClient(
                timeout=self.options.timeout_s, transport=self._transport, cookies=_NoCookies()
            )
            # Without a proxy in the environment every request goes to the transport itself: httpx's client
            # layer (auth flows, redirects, cookies: none of them used here) cost a fifth of a gateway's CPU.
            self._direct = not urllib.request.getproxies()
            self._timeouts = httpx.Timeout(self.options.timeout_s).as_dict()
        return self._client

    async def through_proxy(self, url: httpx.URL) -> None:
        """Before a request goes through the client while a proxy is set in the environment: a proxy transport
        (which httpx 0.29 does not mount on a client given its own transport, but may elsewhere) would check
        nothing, so a non-admin's config has its destination checked here, before any transport."""
        self.client()
        if self.egress is not None and not self._direct:
            await vet(self.egress, url)

    async def _post(self, url: httpx.URL, content: bytes, headers: dict[str, str]) -> httpx.Response:
        client = self.client()
        if not self._direct:
            await self.through_proxy(url)
            return await client.post(url, content=content, headers=headers)
        request = httpx.Request(
            "POST", url, content=content, headers=headers, extensions={"timeout": self._timeouts}
        )
        return await self._transport.handle_async_request(request)

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def post_json(self, url: str, payload: Any, headers: dict[str, str] | None = None) -> Any:
        """POST JSON, return the parsed reply; raise `RemoteError` (retryable where a retry may help)."""
        key = self.api_key()
        sent = {**self.options.headers, **(headers or {}), **(self.auth_headers(key) if key else {})}
        name = self.endpoint.name
        try:
            parsed = self._urls.get(url) or self._urls.setdefault(url, httpx.URL(url))
            content = json.dumps(payload, default=_json_value, separators=(",", ":")).encode()
            response = await self._post(parsed, content, {"content-type": "application/json", **sent})
        except httpx.TimeoutException:
            raise EndpointUnreachable(
                f"Endpoint {name!r}: no reply from {url} within {self.options.timeout_s:g} s", retryable=True
            ) from None
        except httpx.TransportError as error:  # refused, reset, dropped mid-reply
            raise EndpointUnreachable(
                f"Endpoint {name!r}: connection to {url} failed ({type(error).__name__}: {error})",
                retryable=True,
            ) from None
        if response.status_code >= 400:
            body = _scrub(response.text[:_SHOWN_BODY], key)
            raise RemoteError(
                f"Endpoint {name!r}: {url} answered HTTP {response.status_code}: {body}",
                status=response.status_code,
                retryable=response.status_code in _RETRYABLE_STATUS,
                retry_after=_retry_after(response.headers.get("retry-after")),
            )
        try:
            return response.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            # A proxy or an overloaded server can garble a reply; asking again is the remedy.
            start = _scrub(response.text[:80], key)
            raise RemoteError(
                f"Endpoint {name!r}: {url} sent a reply that is not JSON: {start!r}", retryable=True
            ) from None


def _json_value(value: Any) -> Any:
    """Request values JSON has no type for: DECIMAL as a number, dates and times as ISO text, bytes as base64."""
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if isinstance(value, uuid.UUID):
        return str(value)
    raise TypeError(f"a request value of type {type(value).__name__} cannot be sent as JSON")


async def vet(policy: EgressPolicy, url: httpx.URL) -> list[str]:
    """The addresses `url`'s host may be reached at (EgressRefused when the allow-list does not permit it)."""
    port = url.port or (443 if url.scheme == "https" else 80)
    where = f"{url.scheme}://{url.netloc.decode()}"
    return [str(a) for a in await policy.check_async(url.host.lower().rstrip("."), port, where)]


class EgressTransport(httpx.AsyncBaseTransport):
    """Checks each request's host against the egress allow-list (names resolved), then sends it to one of the
    addresses the check vetted: the name is never resolved a second time to connect (DNS rebinding)."""

    def __init__(self, inner: httpx.AsyncBaseTransport, policy: EgressPolicy) -> None:
        self._inner = inner
        self._policy = policy

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        request.extensions[CONNECT_TO] = tuple(await vet(self._policy, request.url))
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


class _NoCookies(CookieJar):
    """Inference APIs keep no session in cookies, and parsing every reply's cookies cost 10% of the CPU."""

    def extract_cookies(self, response: Any, request: Any) -> None:
        pass


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:  # an HTTP date
        now = datetime.datetime.now(datetime.UTC)
        return max(0.0, (parsedate_to_datetime(value) - now).total_seconds())
    except (TypeError, ValueError):
        return None


def _scrub(text: str, key: str | None) -> str:
    """Some servers echo the credentials they refused; never pass a key on in a message."""
    return text.replace(key, "***") if key else text


def join_url(base: str, path: str) -> str:
    return base.rstrip("/") + "/" + path.lstrip("/")
