"""Where endpoints configured by non-admins may send requests: the home's egress allow-list.

    policy = EgressPolicy(home / "catalog.db")
    policy.allow("api.openai.com")          # admins; also host:port, an IP, or a network such as 10.0.0.0/8
    policy.check("https://api.openai.com/v1")

An endpoint whose config was saved by a non-admin may reach only listed hosts. A listed name must also
resolve to public addresses: loopback, link-local (169.254.0.0/16, fe80::/10), private and other special
ranges, and this machine's own addresses are refused unless an address or network covering them is listed
too. The check runs when the config is saved and again before each request (names resolved then), so a
name that later resolves to an internal address is refused. Admins' configs are not restricted.

A request connects to the addresses its check vetted (`check_async` returns them; the transport connects to
one of them, with the name kept for the Host header and TLS), never to a second answer of the resolver: a
name that answers a listed address to the check and an internal one to the connection (DNS rebinding)
reaches only the listed one. Names are resolved by the policy's `resolve` (the system's resolver unless
another is given), the one place a request's name becomes an address.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import ipaddress
import socket
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from aifuncs.errors import ConfigError, PermissionDenied
from aifuncs.governance._sqlite import transaction
from aifuncs.governance.audit import AuditLog
from aifuncs.governance.principals import Principal
from aifuncs.storage import Connection

__all__ = ["EgressPolicy", "EgressRefused", "parse_entry"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS egress_allowed (
    host TEXT NOT NULL,
    port INTEGER NOT NULL DEFAULT 0,
    added_by TEXT NOT NULL,
    PRIMARY KEY (host, port)
);
"""
_DEFAULT_PORTS = {"http": 80, "https": 443}
_RESOLVED_FOR_S = 5.0  # a name's addresses are kept this long, then resolved again
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolve = Callable[[str, int], Awaitable[list[Address]]]  # a name and port -> its addresses, OSError if none


class EgressRefused(PermissionDenied):
    """A request or config that would reach a host the egress allow-list does not permit."""


@dataclass(frozen=True)
class Entry:
    host: str  # a lower-case DNS name, an IP address, or a network in CIDR form
    port: int = 0  # 0: any port

    def __str__(self) -> str:
        if not self.port:
            return self.host
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def network(self) -> Network | None:
        try:
            return ipaddress.ip_network(self.host, strict=False)
        except ValueError:
            return None


def parse_entry(text: str) -> Entry:
    """`host`, `host:port`, `[v6]:port`, an IP address or a CIDR network."""
    value = str(text).strip().lower()
    if "://" in value:
        value = urlsplit(value).netloc
    port = 0
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        if rest.startswith(":"):
            port = _port(rest[1:], text)
    elif value.count(":") == 1:
        host, _, given = value.partition(":")
        port = _port(given, text)
    else:
        host = value
    host = host.rstrip(".")
    if not host or any(c.isspace() or c in "/@?#" for c in host.split("/", 1)[0]):
        raise ConfigError(
            f"{text!r} is no host: give a name, host:port, an IP address or a network (10.0.0.0/8)."
        )
    if "/" in host:
        try:
            host = str(ipaddress.ip_network(host, strict=False))
        except ValueError:
            raise ConfigError(f"{text!r} is no network: write one as 10.0.0.0/8.") from None
    return Entry(host, port)


def _port(text: str, whole: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ConfigError(f"{whole!r}: the port is a number from 1 to 65535.")
    return int(text)


def _special(address: Address) -> bool:
    """Loopback, link-local, private and other ranges that are not the public internet."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return _special(address.ipv4_mapped)
    return not address.is_global or address.is_multicast


def _own_addresses() -> set[Address]:
    """This machine's addresses (the server reaching itself through its public address is no egress)."""
    found: set[Address] = set()
    with contextlib.suppress(OSError):
        for info in socket.getaddrinfo(socket.gethostname(), None):
            with contextlib.suppress(ValueError):
                found.add(ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]))
    return found


async def system_resolve(host: str, port: int) -> list[Address]:
    """The addresses the system's resolver gives for `host` (without blocking the event loop)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return _addresses_of(infos)


def _addresses_of(infos: Iterable[tuple[object, ...]]) -> list[Address]:
    addresses: list[Address] = []
    for info in infos:
        sockaddr = info[4]
        assert isinstance(sockaddr, tuple)
        with contextlib.suppress(ValueError):
            address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
            if address not in addresses:
                addresses.append(address)
    return addresses


class EgressPolicy:
    """The allow-list of one home (in the catalog's SQLite file) and the checks against it."""

    def __init__(
        self, path: Path, *, resolve: Resolve = system_resolve, kept_s: float = _RESOLVED_FOR_S
    ) -> None:
        self.path = path
        self.resolve = resolve
        self.kept_s = kept_s  # how long a name's vetted addresses are used before it is resolved again
        self._resolved: dict[tuple[str, int], tuple[float, builtins.list[Address]]] = {}
        self._own: set[Address] | None = None

    def __repr__(self) -> str:
        return f"EgressPolicy({str(self.path)!r})"

    def _db(self) -> contextlib.AbstractContextManager[Connection]:
        return transaction(self.path, _SCHEMA)

    def list(self) -> builtins.list[Entry]:
        with self._db() as db:
            rows = db.execute("SELECT host, port FROM egress_allowed ORDER BY host, port").fetchall()
        return [Entry(r[0], int(r[1])) for r in rows]

    def allow(self, text: str, actor: Principal) -> Entry:
        """Put a host (name, IP or network, optionally :port) on the list (admins; audited)."""
        _admin(actor, f"allow {text!r}")
        entry = parse_entry(text)
        with self._db() as db:
            db.execute(
                "INSERT INTO egress_allowed (host, port, added_by) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                (entry.host, entry.port, actor.name),
            )
        AuditLog(self.path).record(actor.name, "egress.allow", str(entry), {})
        return entry

    def disallow(self, text: str, actor: Principal) -> Entry:
        _admin(actor, f"disallow {text!r}")
        entry = parse_entry(text)
        with self._db() as db:
            gone = db.execute(
                "DELETE FROM egress_allowed WHERE host = ? AND port = ?", (entry.host, entry.port)
            ).rowcount
        if not gone:
            raise ConfigError(f"{str(entry)!r} is not on the egress allow-list (aifuncs egress list).")
        AuditLog(self.path).record(actor.name, "egress.disallow", str(entry), {})
        return entry

    # checks

    def check(self, url: str) -> None:
        """Refuse (EgressRefused) a URL the list does not permit; resolves the host's name now."""
        host, port = _target(url)
        entries = self._listed(host, port, url)
        self._decide(host, port, self._addresses(host, port), url, entries)

    async def check_async(self, host: str, port: int, url: str) -> builtins.list[Address]:
        """`check` for a request on an event loop; returns the vetted addresses, the only ones the request may
        connect to (resolving the name again to connect would let a second answer through)."""
        entries = self._listed(host, port, url)
        key = (host, port)
        kept = self._resolved.get(key)
        if kept is not None and time.monotonic() - kept[0] < self.kept_s:
            addresses = kept[1]
        else:
            literal = _literal(host)
            try:
                addresses = [literal] if literal is not None else await self.resolve(host, port)
            except OSError:
                addresses = []
            if not addresses:
                raise EgressRefused(f"{url}: the host {host!r} does not resolve, so it cannot be checked.")
            self._resolved[key] = (time.monotonic(), addresses)
        self._decide(host, port, addresses, url, entries)
        return addresses

    def _addresses(self, host: str, port: int) -> builtins.list[Address]:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError:
            raise EgressRefused(
                f"{host!r} does not resolve, so it cannot be checked against the egress allow-list."
            ) from None
        return _addresses_of(infos)

    def _listed(self, host: str, port: int, url: str) -> builtins.list[Entry]:
        """The list's entries, when `host` is on it (else EgressRefused)."""
        entries = self.list()
        literal = _literal(host)
        listed = any(
            (e.host == host or (literal is not None and (n := e.network) is not None and literal in n))
            and e.port in (0, port)
            for e in entries
        )
        if not listed:
            raise EgressRefused(
                f"{url}: the host {host!r} (port {port}) is not on this server's egress allow-list, and the"
                " endpoint's config was saved by a non-admin. An admin can allow it (aifuncs egress allow"
                f" {host}), or save the config."
            )
        return entries

    def _decide(
        self, host: str, port: int, addresses: builtins.list[Address], url: str, entries: builtins.list[Entry]
    ) -> None:
        if self._own is None:
            self._own = _own_addresses()
        networks = [(n, e.port) for e in entries if (n := e.network) is not None]
        for address in addresses:
            if not (_special(address) or address in self._own):
                continue
            if any(address in network and p in (0, port) for network, p in networks):
                continue  # an internal address an admin listed on purpose
            raise EgressRefused(
                f"{url}: {host!r} resolves to {address}, a loopback, link-local, private or this server's own"
                " address, which the egress allow-list does not include. An admin can list that address or its"
                f" network (aifuncs egress allow {address}), or save the config."
            )


def _admin(actor: Principal, doing: str) -> None:
    if not actor.admin:
        raise PermissionDenied(
            f"{actor.name!r} may not {doing}: only an admin changes the egress allow-list."
        )


def _literal(host: str) -> Address | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def _target(url: str) -> tuple[str, int]:
    parts = urlsplit(str(url))
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
        raise ConfigError(f"{url!r} is no http(s) URL.")
    try:
        port = parts.port or _DEFAULT_PORTS[parts.scheme]
    except ValueError:
        raise ConfigError(f"{url!r} has an invalid port.") from None
    return parts.hostname.lower().rstrip("."), port
