"""TLS: the server's own context refuses TLS 1.0 and 1.1; 1.2 and 1.3 connect; plain HTTP gets no answer."""

from __future__ import annotations

import ssl
import sys
import warnings
from pathlib import Path

import httpx
import pytest
import trustme
from servers import free_port, running

from aifuncs.server._run import tls_context


def client_context(ca: trustme.CA, version: ssl.TLSVersion) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    with warnings.catch_warnings():  # naming TLS 1.0/1.1 is deprecated; refusing them is what is tested
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
        context.maximum_version = version
    return context


def test_tls_floor_is_1_2(home: Path, tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.cert_chain_pems[0].write_to_path(cert_path)
    cert.private_key_pem.write_to_path(key_path)

    class Config:
        ssl_certfile, ssl_keyfile, ssl_keyfile_password = str(cert_path), str(key_path), None

    assert tls_context(Config()).minimum_version == ssl.TLSVersion.TLSv1_2
    port = free_port()
    command = [sys.executable, "-m", "aifuncs.cli", "serve", "--port", str(port), "--tls-cert", str(cert_path),
               "--tls-key", str(key_path)]  # fmt: skip
    ready = client_context(ca, ssl.TLSVersion.TLSv1_3)
    url = f"https://127.0.0.1:{port}"
    with running(command, url + "/health", tmp_path / "serve.log", verify=ready):
        for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
            answer = httpx.get(url + "/health", verify=client_context(ca, version))
            assert answer.status_code == 200, version
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            old = ssl.TLSVersion.TLSv1_1
        with pytest.raises(httpx.ConnectError):
            httpx.get(url + "/health", verify=client_context(ca, old))
        with pytest.raises(httpx.HTTPError):  # plain HTTP to the TLS port is not served
            httpx.get(f"http://127.0.0.1:{port}/health").raise_for_status()
