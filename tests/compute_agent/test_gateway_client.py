"""The agent's gateway client honours the environment's proxy settings, read once when it is made."""

from __future__ import annotations

import asyncio

import pytest

from compute_agent.gateway_client import GatewayClient
from tests.compute_agent.http_recorder import RecordingServer, Reply

PROXY_VARIABLES = ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "no_proxy", "NO_PROXY", "all_proxy",
                   "ALL_PROXY")


def status_through(base_url: str) -> None:
    async def main() -> None:
        client = GatewayClient(base_url, poll_seconds=1)
        client.credential = "node-credential"
        try:
            await client.status("e-1", "Running")
        finally:
            await client.aclose()

    asyncio.run(main())


def test_calls_go_through_the_proxy_the_environment_names(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    proxy = RecordingServer(lambda _: Reply(204))
    monkeypatch.setenv("http_proxy", proxy.url)
    with proxy.running():
        status_through("http://gateway.invalid:8438")  # resolvable only by the proxy
    [request] = proxy.requests
    assert request.path == "http://gateway.invalid:8438/api/v1/compute/executions/e-1/status"
    assert request.headers["authorization"] == "Bearer node-credential"


def test_no_proxy_sends_calls_straight_to_the_gateway(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    gateway = RecordingServer(lambda _: Reply(204))
    monkeypatch.setenv("http_proxy", "http://proxy.invalid:3128")
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    with gateway.running():
        status_through(gateway.url)
    [request] = gateway.requests
    assert request.path == "/api/v1/compute/executions/e-1/status"
