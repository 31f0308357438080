"""Attacks on the egress allow-list: a name that answers differently to the check and to the connection (DNS
rebinding), a proxy in the server's environment, and endpoints saved before their author was recorded.

Each is played against real parts: a real home, the project's own transport and fake upstreams on 127.0.0.1,
and (for the proxy and the old configs) a real `aifuncs serve`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import sqlite3
from pathlib import Path

import httpx
import pytest
from servers import FakeServer

import aifuncs
import aifuncs.governance as gov
from aifuncs._endpoint import Endpoint
from aifuncs.governance.egress import Address, EgressPolicy, EgressRefused
from aifuncs.providers import provider_class
from aifuncs.providers._http import HttpProvider

from .conftest import Secured, Serve

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
MESSAGE = {"messages": [{"role": "user", "content": "hi"}]}


def port_of(url: str) -> int:
    return int(url.rstrip("/").rsplit(":", 1)[1].split("/", 1)[0])


def test_the_connection_goes_to_the_address_the_check_vetted(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`rebind.invalid` can never resolve through the system: a request that reaches the upstream connected to
    the address the policy's one resolution vetted; the next answer (an internal address) is checked, not used."""
    monkeypatch.delenv("AIFUNCS_TOKEN", raising=False)
    answers: list[str] = []

    async def rebinding(host: str, port: int) -> list[Address]:
        answers.append(host)  # first the listed address, then an internal one (the attacker's second answer)
        return [ipaddress.ip_address("127.0.0.1" if len(answers) == 1 else "10.0.0.1")]

    with FakeServer(keep_bodies=True) as upstream:
        port = port_of(upstream.url)
        owner = gov.whoami()
        path = home / "catalog.db"
        aifuncs.endpoints.list()  # the home and its catalog
        EgressPolicy(path).allow(f"rebind.invalid:{port}", owner)
        EgressPolicy(path).allow(f"127.0.0.1:{port}", owner)
        base = f"http://rebind.invalid:{port}/v1"
        endpoint = Endpoint("rebound", "openai", {"model": "m", "base_url": base, "egress_checked": True})
        provider = provider_class("openai")(endpoint)
        assert isinstance(provider, HttpProvider)
        provider.egress = EgressPolicy(path, resolve=rebinding, kept_s=0.0)

        async def twice() -> tuple[object, BaseException | None]:
            try:
                first = await provider.post_json(base + "/chat/completions", CHAT)
                try:
                    await provider.post_json(base + "/chat/completions", CHAT)
                except EgressRefused as refused:
                    return first, refused
                return first, None
            finally:
                await provider.aclose()

        first, refused = asyncio.run(twice())
        assert isinstance(first, dict) and first["choices"], first
        assert answers == ["rebind.invalid", "rebind.invalid"]  # one resolution per check, none to connect
        assert isinstance(refused, EgressRefused) and "10.0.0.1" in str(refused)
        assert upstream.settled().requests == 1  # the second answer was refused, never connected to
        assert upstream.stats.paths == ["/v1/chat/completions"]


def allow_and_create(secured: Secured, monkeypatch: pytest.MonkeyPatch, name: str) -> int:
    """Alice (entitled, not an admin) saves `name` pointing at the upstream by the name `localhost`."""
    port = port_of(secured.upstream.url)
    owner = gov.whoami()
    policy = EgressPolicy(secured.home / "catalog.db")
    policy.allow(f"localhost:{port}", owner)
    policy.allow("127.0.0.1", owner)
    gov.grant_entitlement("alice")
    monkeypatch.setenv("AIFUNCS_TOKEN", secured.tokens["alice"])
    aifuncs.endpoints.create(name, kind="openai", model="m", base_url=f"http://localhost:{port}/v1")
    monkeypatch.delenv("AIFUNCS_TOKEN")
    return port


def test_a_proxy_in_the_environment_does_not_skip_the_check(
    secured: Secured, serve: Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = allow_and_create(secured, monkeypatch, "near")
    EgressPolicy(secured.home / "catalog.db").disallow(f"localhost:{port}", gov.whoami())
    with FakeServer(keep_bodies=True) as proxy:
        proxies = {name: proxy.url for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy")}
        with serve(extra_env={**proxies, "NO_PROXY": "", "no_proxy": ""}) as url:
            refused = httpx.post(
                url + "/serving-endpoints/near/invocations", json=MESSAGE, headers=secured.headers("alice"),
                timeout=60,
            )  # fmt: skip
            assert refused.status_code in (400, 403), refused.text
            assert "egress allow-list" in refused.json()["message"]
        assert proxy.settled().requests == 0  # nothing went out through the proxy
    assert secured.upstream.stats.requests == 0


def test_a_config_saved_before_its_author_was_recorded_is_checked(
    secured: Secured, serve: Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Configs stored without the egress flag (saved before it existed): a non-admin's is held to the allow-list
    from the next start on, the home's owner's (an admin) keeps working."""
    port = allow_and_create(secured, monkeypatch, "near")
    aifuncs.endpoints.create("owned", kind="openai", model="m", base_url=f"http://localhost:{port}/v1")
    with sqlite3.connect(secured.home / "catalog.db") as db:  # as such rows were written before the flag
        for name, options in db.execute("SELECT name, options FROM endpoints").fetchall():
            kept = {k: v for k, v in json.loads(options).items() if k != "egress_checked"}
            db.execute("UPDATE endpoints SET options = ? WHERE name = ?", (json.dumps(kept), name))
    EgressPolicy(secured.home / "catalog.db").disallow(f"localhost:{port}", gov.whoami())
    with serve() as url:

        def ask(name: str) -> httpx.Response:
            return httpx.post(
                f"{url}/serving-endpoints/{name}/invocations",
                json=MESSAGE,
                headers=secured.headers("admin"),
                timeout=60,
            )

        refused = ask("near")
        assert refused.status_code in (400, 403) and "egress allow-list" in refused.json()["message"], (
            refused.text
        )
        assert ask("owned").status_code == 200
    assert secured.upstream.settled().requests == 1
    decided = {e.name: e.options.get("egress_checked") for e in aifuncs.endpoints.list()}
    assert decided == {"llm": False, "near": True, "owned": False}


def test_a_pinned_https_request_keeps_the_name_for_tls_and_host() -> None:
    """Connecting to a vetted address over TLS: the certificate is checked against the name (SNI too) and the
    Host header names it, so pinning neither weakens TLS nor breaks name-based hosting."""
    import ssl

    import trustme

    from aifuncs.providers._transport import CONNECT_TO, LeanTransport

    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("api.rebind.invalid").configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    seen: dict[str, object] = {}
    names: list[str | None] = []  # the name each TLS handshake asked for (SNI)

    def note_sni(_socket: ssl.SSLObject, name: str | None, _context: ssl.SSLContext) -> None:
        names.append(name)

    server_context.sni_callback = note_sni

    async def exchange() -> tuple[int, bytes, BaseException | None]:
        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            head = await reader.readuntil(b"\r\n\r\n")
            seen["head"] = head.decode()
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=server_context)
        port = server.sockets[0].getsockname()[1]
        transport = LeanTransport(verify=client_context)
        try:
            request = httpx.Request("GET", f"https://api.rebind.invalid:{port}/v1/models")
            request.extensions[CONNECT_TO] = ("127.0.0.1",)
            response = await transport.handle_async_request(request)
            wrong = httpx.Request("GET", f"https://other.rebind.invalid:{port}/v1/models")
            wrong.extensions[CONNECT_TO] = ("127.0.0.1",)
            try:
                await transport.handle_async_request(wrong)
                refused: BaseException | None = None
            except httpx.ConnectError as error:
                refused = error
            return response.status_code, response.content, refused
        finally:
            await transport.aclose()
            server.close()
            await server.wait_closed()

    status, body, refused = asyncio.run(exchange())
    assert (status, body) == (200, b"ok")
    assert names == ["api.rebind.invalid", "other.rebind.invalid"]
    assert "host: api.rebind.invalid:" in str(seen["head"]).lower()
    assert refused is not None and "certificate" in str(refused).lower()  # a name the certificate lacks
