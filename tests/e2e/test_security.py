"""Security end to end on a real gateway with a config file: every route against every kind of credential and
capability, namespaces, CI tokens, join tokens, agent isolation, open mode, redaction, audit, rate limits."""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import bcrypt
import httpx
import pytest
import yaml

from tests.conftest import Cluster, Gateway, free_port, shoal_command, wait_for
from tests.specs import wasm_job

ADMIN_PASSWORD = "admin-password-1"
ALICE_PASSWORD = "alice-password-1"
KEYS = {  # API keys of users with one kind of capability each
    "reader": "reader-key-000000000000",
    "writer": "writer-key-000000000000",
    "jobs": "jobs-key-00000000000000",
    "nodes": "nodes-key-0000000000000",
    "agent": "agent-key-0000000000000",
    "bob": "bob-key-000000000000000",
}
CAPABILITIES = {"reader": ["read:*"], "writer": ["write:*"], "jobs": ["read:job", "write:job"],
                "nodes": ["read:node", "write:node"], "agent": ["read:agent"], "bob": ["read:job", "write:job"]}
JOIN_SECRET = "shared-join-secret-123456"


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


ADMIN = basic("admin", ADMIN_PASSWORD)
ALICE = basic("alice", ALICE_PASSWORD)


def write_config(path: Path) -> Path:
    users: list[dict[str, Any]] = [
        {"Alias": "root", "Username": "admin", "Password": bcrypt.hashpw(ADMIN_PASSWORD.encode(),
                                                                         bcrypt.gensalt(4)).decode(),
         "Capabilities": [{"Actions": ["*"]}]},
        {"Username": "alice", "Password": ALICE_PASSWORD, "Capabilities": [{"Actions": ["read:job", "write:job"]}],
         "Namespaces": ["team-a"]},
    ]
    for name, key in KEYS.items():
        user: dict[str, Any] = {"Alias": name, "APIKey": key, "Capabilities": [{"Actions": CAPABILITIES[name]}]}
        if name == "bob":
            user["Namespaces"] = ["team-b"]
        users.append(user)
    path.write_text(yaml.safe_dump({"Auth": {"Users": users}, "Compute": {"JoinToken": JOIN_SECRET}}))
    return path


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    root = tmp_path_factory.mktemp("security")
    running = Cluster(root)
    gateway = running.gateway(config=str(write_config(root / "shoal.yaml")), auth_failures_per_minute="100000")
    running.agent(gateway, "--token", JOIN_SECRET)
    yield gateway
    running.close()


def call(gateway: Gateway, method: str, path: str, headers: dict[str, str] | None = None,
         **kwargs: Any) -> httpx.Response:
    return httpx.request(method, gateway.url + path, headers=headers or {}, timeout=30, **kwargs)


def submit(gateway: Gateway, headers: dict[str, str], job: dict[str, Any] | None = None) -> str:
    response = call(gateway, "PUT", "/api/v1/orchestrator/jobs", headers, json={"Job": job or wasm_job("echo", "x")})
    assert response.status_code == 200, response.text
    return str(response.json()["JobID"])


# -- the permission matrix --------------------------------------------------------------------------------

J = "{job}"
ROUTES: list[tuple[str, str, str | None]] = [  # method, path, capability (None: open; "": any valid credential)
    ("GET", "/api/v1/agent/alive", None),
    ("GET", "/api/v1/agent/version", None),
    ("GET", "/api/v1/openapi.json", None),
    ("GET", "/api/v1/orchestrator/jobs", "read:job"),
    ("PUT", "/api/v1/orchestrator/jobs", "write:job"),
    ("POST", "/api/v1/orchestrator/jobs", "write:job"),
    ("PUT", "/api/v1/orchestrator/jobs/diff", "write:job"),
    ("GET", f"/api/v1/orchestrator/jobs/{J}", "read:job"),
    ("GET", f"/api/v1/orchestrator/jobs/{J}/executions", "read:job"),
    ("GET", f"/api/v1/orchestrator/jobs/{J}/history", "read:job"),
    ("GET", f"/api/v1/orchestrator/jobs/{J}/versions", "read:job"),
    ("GET", f"/api/v1/orchestrator/jobs/{J}/results", "read:job"),
    ("GET", f"/api/v1/orchestrator/jobs/{J}/logs", "read:job"),
    ("PUT", "/api/v1/orchestrator/jobs/j-missing/rerun", "write:job"),
    ("DELETE", "/api/v1/orchestrator/jobs/j-missing", "write:job"),
    ("POST", "/api/v1/uploads", "write:job"),
    ("GET", "/api/v1/orchestrator/nodes", "read:node"),
    ("GET", "/api/v1/orchestrator/nodes/n-missing", "read:node"),
    ("PUT", "/api/v1/orchestrator/nodes", "write:node"),
    ("POST", "/api/v1/orchestrator/nodes/join-tokens", "write:node"),
    ("GET", "/api/v1/agent/node", "read:agent"),
    ("GET", "/api/v1/agent/config", "read:agent"),
    ("GET", "/api/v1/audit", "*"),
    ("GET", "/api/v1/auth/tokens", ""),
]
HOLDERS = {"admin": ["*"], **CAPABILITIES}


def credentials(name: str) -> dict[str, str]:
    return ADMIN if name == "admin" else bearer(KEYS[name])


def body_for(method: str, path: str) -> dict[str, Any]:
    if path == "/api/v1/uploads":
        return {"json": {"Name": "x.bin", "Size": 1, "SHA256": "0" * 64}}
    if (path.endswith("/jobs") and method in ("PUT", "POST")) or path.endswith("/diff"):
        return {"json": {"Job": wasm_job("echo", "matrix")}}
    return {"json": {}} if method in ("PUT", "POST") else {}


def expected_status(capability: str | None, holder: str) -> str:
    if capability is None or capability == "":
        return "allowed"
    held = HOLDERS[holder]
    verb = capability.split(":")[0]
    ok = "*" in held or capability in held or f"{verb}:*" in held
    return "allowed" if ok else "forbidden"


def test_every_route_with_every_credential(secured: Gateway) -> None:
    job_id = submit(secured, ADMIN)
    failures = []
    for method, template, capability in ROUTES:
        path = template.replace(J, job_id)
        params = {"follow": "false"} if path.endswith("/logs") else None
        for holder in HOLDERS:
            response = call(secured, method, path, credentials(holder), params=params, **body_for(method, template))
            wanted = expected_status(capability, holder)
            got = "forbidden" if response.status_code == 403 else (
                "unauthenticated" if response.status_code == 401 else "allowed")
            if got != wanted:
                failures.append(f"{method} {template} as {holder}: {response.status_code} {response.text[:120]}")
            if got == "forbidden" == wanted:
                assert response.json()["Message"].endswith(f"does not have the required capability '{capability}'")
        anonymous = call(secured, method, path, params=params, **body_for(method, template))
        bad = call(secured, method, path, bearer("not-a-key-at-all-000000"), params=params,
                   **body_for(method, template))
        if capability is None:
            assert anonymous.status_code not in (401, 403), f"{method} {template} should be open"
        else:
            for response in (anonymous, bad):
                if response.status_code != 401:
                    failures.append(f"{method} {template} without valid credentials: {response.status_code}")
    assert failures == []


def test_errors_keep_the_gateways_shape_and_name_the_problem(secured: Gateway) -> None:
    missing = call(secured, "GET", "/api/v1/orchestrator/jobs")
    assert missing.status_code == 401
    assert set(missing.json()) >= {"Status", "Message", "Code", "RequestID"}
    assert missing.json()["Message"].startswith("Missing Authorization header")
    assert missing.headers["x-request-id"] == missing.json()["RequestID"]
    assert "www-authenticate" in missing.headers
    wrong_password = call(secured, "GET", "/api/v1/orchestrator/jobs", basic("admin", "not-the-password"))
    assert (wrong_password.status_code, wrong_password.json()["Message"]) == (401, "invalid username or password")
    scheme = call(secured, "GET", "/api/v1/orchestrator/jobs", {"Authorization": "Digest x"})
    assert scheme.status_code == 401 and "unsupported authentication method" in scheme.json()["Message"]
    forbidden = call(secured, "GET", "/api/v1/orchestrator/nodes", bearer(KEYS["jobs"]))
    assert forbidden.json()["Message"] == "user 'jobs' does not have the required capability 'read:node'"


# -- namespaces -------------------------------------------------------------------------------------------


def test_a_namespaced_user_cannot_read_or_guess_its_way_into_another_namespace(secured: Gateway) -> None:
    alices = submit(secured, ALICE)
    assert call(secured, "GET", f"/api/v1/orchestrator/jobs/{alices}", ALICE).json()["Job"]["Namespace"] == "team-a"
    bob = bearer(KEYS["bob"])
    bobs = submit(secured, bob)
    for path in ("", "/executions", "/history", "/versions", "/results", "/logs"):
        for params in ({}, {"namespace": "team-a"}, {"namespace": "*"}):
            response = call(secured, "GET", f"/api/v1/orchestrator/jobs/{alices}{path}", bob, params=params)
            assert response.status_code == 404, (path, params, response.text)
        prefix = call(secured, "GET", f"/api/v1/orchestrator/jobs/{alices[:10]}{path}", bob)
        assert prefix.status_code == 404
    for method, path in (("DELETE", ""), ("PUT", "/rerun")):
        response = call(secured, method, f"/api/v1/orchestrator/jobs/{alices}{path}", bob,
                        params={"namespace": "team-a"}, json={})
        assert response.status_code == 404, response.text
    listed = call(secured, "GET", "/api/v1/orchestrator/jobs", bob, params={"namespace": "*"}).json()["Items"]
    assert bobs in {j["ID"] for j in listed} and {j["Namespace"] for j in listed} == {"team-b"}
    assert call(secured, "GET", "/api/v1/orchestrator/jobs", bob, params={"namespace": "team-a"}).status_code == 404
    into_a = call(secured, "PUT", "/api/v1/orchestrator/jobs", bob,
                  json={"Job": wasm_job("echo", "x") | {"Namespace": "team-a"}})
    assert into_a.status_code == 403
    everything = call(secured, "GET", "/api/v1/orchestrator/jobs", ADMIN, params={"namespace": "*"}).json()["Items"]
    assert {alices, bobs} <= {j["ID"] for j in everything}


def test_uploads_belong_to_a_namespace(secured: Gateway) -> None:
    bob = bearer(KEYS["bob"])
    data = b"bob's data"
    upload = call(secured, "POST", "/api/v1/uploads", bob,
                  json={"Name": "d.bin", "Size": len(data), "SHA256": hashlib.sha256(data).hexdigest()}).json()
    assert upload["Key"].startswith("uploads/team-b/")
    assert httpx.put(upload["URL"], content=data, headers=upload["Headers"]).status_code == 200
    refused = call(secured, "POST", "/api/v1/uploads", bob, json={"Name": "d.bin", "Size": 1, "SHA256": "0" * 64,
                                                                  "Namespace": "team-a"})
    assert refused.status_code == 404
    job = wasm_job("ls", "/inputs", inputs=[{"Target": "/inputs/d.bin", "Source": upload["Source"]}])
    stolen = call(secured, "PUT", "/api/v1/orchestrator/jobs", ALICE, json={"Job": job})
    assert stolen.status_code == 400 and "is not an upload of namespace 'team-a'" in stolen.json()["Message"]


# -- CI tokens --------------------------------------------------------------------------------------------


def create_token(gateway: Gateway, headers: dict[str, str], **body: Any) -> httpx.Response:
    return call(gateway, "POST", "/api/v1/auth/tokens", headers, json=body)


def test_a_ci_token_is_scoped_shown_once_and_revocable(secured: Gateway) -> None:
    made = create_token(secured, ADMIN, Name="ci", Capabilities=["read:job", "write:job"], Namespace="team-a",
                        ExpiresIn=3600)
    assert made.status_code == 201, made.text
    secret, token = made.json()["Secret"], made.json()["Token"]
    assert secret.startswith("shoal_ci_") and len(secret) > 40 and token["Prefix"] == secret[:13]
    assert token["LastUsed"] is None

    ci = bearer(secret)
    job_id = submit(secured, ci)
    assert call(secured, "GET", f"/api/v1/orchestrator/jobs/{job_id}", ci).json()["Job"]["Namespace"] == "team-a"
    assert call(secured, "GET", "/api/v1/orchestrator/nodes", ci).status_code == 403
    assert call(secured, "GET", "/api/v1/orchestrator/jobs", ci, params={"namespace": "default"}).status_code == 404
    assert create_token(secured, ci, Name="x", Capabilities=["read:job"]).status_code == 403  # no token from a token

    listed = call(secured, "GET", "/api/v1/auth/tokens", ADMIN).json()["Items"]
    mine = next(t for t in listed if t["ID"] == token["ID"])
    assert mine["LastUsed"] is not None and mine["Active"] is True
    assert secret not in json.dumps(listed)
    tampered = secret[:-1] + ("A" if secret[-1] != "A" else "B")
    assert call(secured, "GET", "/api/v1/orchestrator/jobs", bearer(tampered)).status_code == 401

    revoked = call(secured, "DELETE", f"/api/v1/auth/tokens/{token['ID']}", ADMIN)
    assert revoked.status_code == 200 and revoked.json()["Token"]["Active"] is False
    refused = call(secured, "GET", "/api/v1/orchestrator/jobs", ci)
    assert refused.status_code == 401 and "revoked" in refused.json()["Message"]


def test_an_expired_token_stops_working(secured: Gateway) -> None:
    made = create_token(secured, ADMIN, Name="short", Capabilities=["read:job"], ExpiresIn=1).json()
    short = bearer(made["Secret"])
    first = call(secured, "GET", "/api/v1/orchestrator/jobs", short)
    if first.status_code != 401:  # it may already have expired on a slow machine
        assert first.status_code == 200
    wait_for(lambda: call(secured, "GET", "/api/v1/orchestrator/jobs", short).status_code == 401, timeout=10,
             what="the token to expire")


def test_no_one_grants_more_than_they_hold(secured: Gateway) -> None:
    too_much = create_token(secured, ALICE, Name="x", Capabilities=["read:node"])
    assert too_much.status_code == 403 and "'read:node'" in too_much.json()["Message"]
    elsewhere = create_token(secured, ALICE, Name="x", Capabilities=["read:job"], Namespace="team-b")
    assert elsewhere.status_code == 404
    mine = create_token(secured, ALICE, Name="alice-ci", Capabilities=["read:job"])
    assert mine.status_code == 201 and mine.json()["Token"]["Namespace"] == "team-a"
    assert [t["Name"] for t in call(secured, "GET", "/api/v1/auth/tokens", ALICE).json()["Items"]] == ["alice-ci"]
    other = create_token(secured, ADMIN, Name="admins", Capabilities=["read:job"]).json()["Token"]
    assert call(secured, "DELETE", f"/api/v1/auth/tokens/{other['ID']}", ALICE).status_code == 404
    for bad in ({"Name": "", "Capabilities": ["read:job"]}, {"Name": "x", "Capabilities": ["read:everything"]},
                {"Name": "x", "Capabilities": ["read:job"], "ExpiresIn": 0}):
        response = create_token(secured, ADMIN, **bad)
        assert response.status_code == 400, response.text


# -- agents -----------------------------------------------------------------------------------------------


def test_nodes_join_only_with_a_join_token(secured: Gateway) -> None:
    info = {"Engines": ["wasm"], "Publishers": ["s3managed"], "StorageSources": ["inline"]}
    assert call(secured, "POST", "/api/v1/compute/register", json=info).status_code == 401
    assert call(secured, "POST", "/api/v1/compute/register", bearer("wrong"), json=info).status_code == 401
    made = call(secured, "POST", "/api/v1/orchestrator/nodes/join-tokens", bearer(KEYS["nodes"]),
                json={"ExpiresIn": 600}).json()
    assert made["Secret"].startswith("shoal_join_")
    joined = call(secured, "POST", "/api/v1/compute/register", bearer(made["Secret"]), json=info)
    assert joined.status_code == 200 and joined.json()["Credential"] != made["Secret"]
    assert call(secured, "POST", "/api/v1/compute/register", bearer(JOIN_SECRET), json=info).status_code == 200
    short = call(secured, "POST", "/api/v1/orchestrator/nodes/join-tokens", ADMIN, json={"ExpiresIn": 1}).json()
    wait_for(lambda: call(secured, "POST", "/api/v1/compute/register", bearer(short["Secret"]),
                          json=info).status_code == 401, timeout=10, what="the join token to expire")


def test_an_agent_can_touch_only_its_own_executions(secured: Gateway) -> None:
    info = {"Engines": ["wasm"], "Publishers": ["s3managed"], "StorageSources": ["inline"], "Labels": {"iso": "1"}}
    nodes = [call(secured, "POST", "/api/v1/compute/register", bearer(JOIN_SECRET), json=info).json()
             for _ in range(2)]
    owner, other = (bearer(n["Credential"]) for n in nodes)
    job = wasm_job("echo", "mine")
    job["Constraints"] = [{"Key": "iso", "Operator": "=", "Values": ["1"]}]
    job_id = submit(secured, ADMIN, job)
    claimed = call(secured, "POST", "/api/v1/compute/poll", owner, json={"FreeSlots": 1, "Wait": 5}).json()
    [assignment] = [a for a in claimed["Executions"] if a["JobID"] == job_id]
    execution = assignment["ExecutionID"]
    for path, body in (("status", {"State": "Running"}), ("logs", {"Chunks": [{"Stream": "stdout", "Offset": 0,
                                                                               "Data": "forged"}]}),
                       ("publish", {"Size": 1, "SHA256": "0" * 64}), ("complete", {"ExitCode": 0}),
                       ("fail", {"Message": "forged"})):
        response = call(secured, "POST", f"/api/v1/compute/executions/{execution}/{path}", other, json=body)
        assert response.status_code == 404, (path, response.text)
    user_key = call(secured, "POST", f"/api/v1/compute/executions/{execution}/complete", bearer(KEYS["writer"]),
                    json={"ExitCode": 0})
    assert user_key.status_code == 401  # a user's key is no node credential
    assert call(secured, "POST", f"/api/v1/compute/executions/{execution}/status", owner,
                json={"State": "Running"}).status_code == 200


# -- configuration, secrets, audit, rate limits ----------------------------------------------------------


def test_the_config_is_shown_without_secrets_and_secrets_stay_out_of_the_log(secured: Gateway) -> None:
    shown = call(secured, "GET", "/api/v1/agent/config", bearer(KEYS["agent"]))
    assert shown.status_code == 200
    text = shown.text
    for secret in (*KEYS.values(), ADMIN_PASSWORD, ALICE_PASSWORD, JOIN_SECRET, "$2b$"):
        assert secret not in text
    assert text.count("<redacted>") >= len(KEYS) + 3
    made = create_token(secured, ADMIN, Name="logged?", Capabilities=["read:job"]).json()["Secret"]
    call(secured, "GET", "/api/v1/orchestrator/jobs", bearer(made))
    log = secured.process.output()
    for secret in (*KEYS.values(), ADMIN_PASSWORD, ALICE_PASSWORD, JOIN_SECRET, made):
        assert secret not in log


def test_the_audit_log_says_who_did_what(secured: Gateway) -> None:
    job_id = submit(secured, ALICE, wasm_job("spin"))  # still running when it is stopped
    assert call(secured, "DELETE", f"/api/v1/orchestrator/jobs/{job_id}", ALICE, params={"namespace": "team-a"}
                ).status_code == 200
    token = create_token(secured, ADMIN, Name="audited", Capabilities=["read:job"]).json()["Token"]
    call(secured, "DELETE", f"/api/v1/auth/tokens/{token['ID']}", ADMIN)
    entries = call(secured, "GET", "/api/v1/audit", ADMIN, params={"limit": 1000}).json()["Items"]
    seen = {(e["Actor"], e["Action"], e["Target"]) for e in entries}
    assert ("alice", "job.submit", job_id) in seen and ("alice", "job.stop", job_id) in seen
    assert ("root", "token.create", token["ID"]) in seen and ("root", "token.revoke", token["ID"]) in seen
    only_alice = call(secured, "GET", "/api/v1/audit", ADMIN, params={"actor": "alice", "limit": 1000}).json()
    assert {e["Actor"] for e in only_alice["Items"]} == {"alice"}
    assert call(secured, "GET", "/api/v1/audit", ALICE).status_code == 403


def test_failed_authentication_is_rate_limited(cluster: Cluster, tmp_path: Path) -> None:
    gateway = cluster.gateway(config=str(write_config(tmp_path / "shoal.yaml")), auth_failures_per_minute="5")
    statuses = [call(gateway, "GET", "/api/v1/orchestrator/jobs", bearer(f"wrong-key-{i}-0000000000")).status_code
                for i in range(7)]
    assert statuses == [401] * 5 + [429] * 2
    blocked = call(gateway, "GET", "/api/v1/orchestrator/jobs", ADMIN)
    assert blocked.status_code == 429 and "too many failed authentications" in blocked.json()["Message"]
    assert call(gateway, "GET", "/api/v1/agent/alive").status_code == 200  # open routes stay open


def test_without_credentials_the_gateway_serves_only_loopback(tmp_path: Path) -> None:
    port = free_port()
    ran = subprocess.run(shoal_command("serve", "--host", "0.0.0.0", "--port", str(port), "--data-dir",
                                       str(tmp_path / "gw")), capture_output=True, text=True, timeout=60)
    assert ran.returncode != 0
    assert "refusing to serve on 0.0.0.0 with no credentials configured" in ran.stdout + ran.stderr


def test_the_cli_reads_credentials_from_the_environment(secured: Gateway) -> None:
    def shoal(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(shoal_command(*args, "--api-url", secured.url), capture_output=True, text=True,
                              timeout=60, env={k: v for k, v in secured.env.items() if "API_" not in k} | env)

    assert shoal("job", "list").returncode != 0
    assert shoal("job", "list", SHOAL_API_USERNAME="admin", SHOAL_API_PASSWORD=ADMIN_PASSWORD).returncode == 0
    assert shoal("node", "list", BACALHAU_API_KEY=KEYS["reader"]).returncode == 0
    denied = shoal("node", "list", SHOAL_API_KEY=KEYS["jobs"])
    assert denied.returncode != 0 and "required capability 'read:node'" in denied.stderr
    made = shoal("token", "create", "--name", "cli", "--capabilities", "read:job", "--expires-in", "1h",
                 SHOAL_API_USERNAME="admin", SHOAL_API_PASSWORD=ADMIN_PASSWORD)
    assert made.returncode == 0, made.stderr
    secret = made.stdout.strip().splitlines()[-1]
    assert secret.startswith("shoal_ci_")
    assert shoal("job", "list", SHOAL_API_KEY=secret).returncode == 0
    listed = shoal("token", "list", "--output", "json", SHOAL_API_USERNAME="admin", SHOAL_API_PASSWORD=ADMIN_PASSWORD)
    token_id = next(t["ID"] for t in json.loads(listed.stdout)["Items"] if t["Name"] == "cli")
    assert shoal("token", "revoke", token_id, SHOAL_API_KEY=KEYS["writer"]).returncode != 0  # not the writer's
    assert shoal("token", "revoke", token_id, SHOAL_API_USERNAME="admin",
                 SHOAL_API_PASSWORD=ADMIN_PASSWORD).returncode == 0
    assert shoal("job", "list", SHOAL_API_KEY=secret).returncode != 0
    hashed = subprocess.run(shoal_command("auth", "hash-password"), input="a-long-password\na-long-password\n",
                            capture_output=True, text=True, timeout=60)
    assert hashed.returncode == 0, hashed.stderr
    assert bcrypt.checkpw(b"a-long-password", hashed.stdout.strip().splitlines()[-1].encode())


def test_secrets_in_a_spec_reach_the_task_but_are_not_echoed(secured: Gateway) -> None:
    job = wasm_job("env", env={"API_TOKEN": "s3cr3t-value", "GREETING": "hello"})
    job["Tasks"][0]["InputSources"].append({"Target": "/inputs", "Source": {"Type": "urlDownload", "Params": {
        "URL": "http://bob:hunter2@127.0.0.1:9/data.txt?X-Amz-Signature=abc123&part=1"}}})
    job_id = submit(secured, ADMIN, job)
    shown = call(secured, "GET", f"/api/v1/orchestrator/jobs/{job_id}", ADMIN).text
    versions = call(secured, "GET", f"/api/v1/orchestrator/jobs/{job_id}/versions", ADMIN).text
    listed = call(secured, "GET", "/api/v1/orchestrator/jobs", ADMIN).text
    for text in (shown, versions, listed):
        assert "s3cr3t-value" not in text and "hunter2" not in text and "abc123" not in text
    described = json.loads(shown)["Job"]["Tasks"][0]
    assert described["Env"] == {"API_TOKEN": "<redacted>", "GREETING": "hello"}
    assert described["InputSources"][1]["Source"]["Params"]["URL"] == (
        "http://bob:<redacted>@127.0.0.1:9/data.txt?X-Amz-Signature=<redacted>&part=1")

    job = wasm_job("env", env={"API_TOKEN": "s3cr3t-value"})
    job_id = submit(secured, ADMIN, job)

    def output() -> str | None:
        [execution] = call(secured, "GET", f"/api/v1/orchestrator/jobs/{job_id}/executions", ADMIN).json()["Items"]
        return execution["RunOutput"]["Stdout"] if execution["RunOutput"] else None

    assert "API_TOKEN=s3cr3t-value" in wait_for(output, timeout=60, what="the job to run")  # as submitted


# -- OIDC ------------------------------------------------------------------------------------------------


def test_jwts_from_the_identity_provider_carry_capabilities_and_namespaces(cluster: Cluster, tmp_path: Path) -> None:
    import http.server
    import threading
    import time

    import jwt
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key())) | {"kid": "k1", "alg": "RS256",
                                                                               "use": "sig"}
    body = json.dumps({"keys": [jwk]}).encode()

    class JWKS(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), JWKS)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    issuer = "https://id.example.com/"
    config = tmp_path / "oidc.yaml"
    config.write_text(yaml.safe_dump({"Auth": {"OIDC": {
        "Issuer": issuer, "Audience": "shoal", "JWKSUri": f"http://127.0.0.1:{server.server_address[1]}/jwks"}}}))
    try:
        gateway = cluster.gateway(config=str(config))

        def token(**claims: Any) -> dict[str, str]:
            now = int(time.time())
            payload = {"iss": issuer, "aud": "shoal", "sub": "carol", "iat": now, "exp": now + 300,
                       "permissions": ["read:job", "write:job"], "namespaces": ["team-c"]} | claims
            payload = {name: value for name, value in payload.items() if value is not None}
            return bearer(jwt.encode(payload, key, algorithm="RS256", headers={"kid": "k1"}))

        job_id = submit(gateway, token())
        assert call(gateway, "GET", f"/api/v1/orchestrator/jobs/{job_id}", token()).json()["Job"]["Namespace"] == \
            "team-c"
        assert call(gateway, "GET", f"/api/v1/orchestrator/jobs/{job_id}", token(namespaces=["team-d"])
                    ).status_code == 404
        assert call(gateway, "GET", "/api/v1/orchestrator/nodes", token()).status_code == 403
        assert call(gateway, "GET", "/api/v1/orchestrator/jobs", token(exp=int(time.time()) - 120)).status_code == 401
        assert call(gateway, "GET", "/api/v1/orchestrator/jobs", token(aud="other")).status_code == 401
        forged = jwt.encode({"iss": issuer, "aud": "shoal", "sub": "x", "exp": int(time.time()) + 60,
                             "permissions": ["*"]}, "a-guessed-shared-secret-of-32-bytes!", algorithm="HS256",
                            headers={"kid": "k1"})
        assert call(gateway, "GET", "/api/v1/orchestrator/jobs", bearer(forged)).status_code == 401
        entries = call(gateway, "GET", "/api/v1/audit", token(permissions=["*"], namespaces=None)).json()["Items"]
        assert ("jwt:carol", "job.submit", job_id) in {(e["Actor"], e["Action"], e["Target"]) for e in entries}
    finally:
        server.shutdown()
