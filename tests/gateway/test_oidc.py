"""OIDC JWTs: real keys, real signatures, and a real JWKS server on loopback whose request count we watch."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from gateway.errors import ConfigurationError, Unauthorized
from gateway.oidc import REFETCH_SECONDS, JWTIdentity, OIDCConfig, OIDCVerifier, looks_like_jwt
from tests.conftest import free_port

ISSUER = "https://idp.example.com/"
AUDIENCE = "https://shoal.example.com"


@dataclass
class JWKSServer:
    """Serves `{"keys": keys}` at /jwks; `status` other than 200 makes it fail; `requests` counts every GET."""

    keys: list[dict[str, Any]] = field(default_factory=list)
    status: int = 200
    body: bytes | None = None
    delay: float = 0.0
    requests: int = 0
    port: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}/jwks"


@pytest.fixture
def jwks_server() -> Iterator[JWKSServer]:
    state = JWKSServer()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            with state.lock:
                state.requests += 1
            time.sleep(state.delay)  # widens the race in the concurrency test; decides nothing
            body = state.body if state.body is not None else json.dumps({"keys": state.keys}).encode()
            self.send_response(state.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()
    thread.join(5)


@dataclass
class Signer:
    private: Any
    kid: str
    alg: str

    def jwk(self, **extra: Any) -> dict[str, Any]:
        to_jwk = RSAAlgorithm.to_jwk if self.alg.startswith(("RS", "PS")) else ECAlgorithm.to_jwk
        return {**to_jwk(self.private.public_key(), as_dict=True), "kid": self.kid, "use": "sig", **extra}

    def token(self, *, drop: tuple[str, ...] = (), headers: dict[str, Any] | None = None, **claims: Any) -> str:
        now = int(time.time())
        payload = {"iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "iat": now, "exp": now + 300,
                   "permissions": ["read:job", "write:job"], "namespaces": ["team-a"], **claims}
        for name in drop:
            del payload[name]
        return jwt.encode(payload, self.private, algorithm=self.alg, headers={"kid": self.kid, **(headers or {})})


@pytest.fixture(scope="module")
def rsa_keys() -> list[rsa.RSAPrivateKey]:
    return [rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in range(3)]


@pytest.fixture
def signer(rsa_keys: list[rsa.RSAPrivateKey], jwks_server: JWKSServer) -> Signer:
    signer = Signer(rsa_keys[0], "key-1", "RS256")
    jwks_server.keys = [signer.jwk(alg="RS256")]
    return signer


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


MakeVerifier = Callable[..., OIDCVerifier]


@pytest.fixture
def make_verifier(jwks_server: JWKSServer, clock: Clock) -> Iterator[MakeVerifier]:
    """Verifiers for the test's JWKS server and clock; keyword arguments override `OIDCConfig` fields."""
    made: list[OIDCVerifier] = []

    def make(**overrides: Any) -> OIDCVerifier:
        config = OIDCConfig(issuer=ISSUER, audience=AUDIENCE, jwks_uri=jwks_server.uri, **overrides)
        made.append(OIDCVerifier(config, clock=clock))
        return made[-1]

    yield make
    for verifier in made:
        verifier.close()


@pytest.fixture
def verifier(make_verifier: MakeVerifier) -> OIDCVerifier:
    return make_verifier()


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def refused(verifier: OIDCVerifier, token: str) -> str:
    with pytest.raises(Unauthorized) as caught:
        verifier.verify(token)
    assert caught.value.status == 401
    return caught.value.message


# --- good tokens ---------------------------------------------------------------------------------------------------


def test_a_good_token_gives_subject_capabilities_namespaces_and_expiry(signer: Signer, verifier: OIDCVerifier) -> None:
    token = signer.token(exp=2_000_000_000)
    assert verifier.verify(token) == JWTIdentity(
        subject="alice", capabilities=("read:job", "write:job"), namespaces=("team-a",), expires_at=2_000_000_000.0)


def test_audience_may_be_a_list_and_capabilities_a_space_separated_scope(signer: Signer,
                                                                         verifier: OIDCVerifier) -> None:
    identity = verifier.verify(signer.token(aud=["other", AUDIENCE], permissions="read:job  read:node"))
    assert identity.capabilities == ("read:job", "read:node")


def test_no_namespaces_claim_means_every_namespace(signer: Signer, verifier: OIDCVerifier) -> None:
    assert verifier.verify(signer.token(drop=("namespaces",))).namespaces is None
    assert verifier.verify(signer.token(namespaces=[])).namespaces == ()


def test_claim_names_are_configurable(signer: Signer, make_verifier: MakeVerifier) -> None:
    verifier = make_verifier(capabilities_claim="scope", namespaces_claim="https://shoal/ns")
    claims: dict[str, Any] = {"scope": "read:job", "https://shoal/ns": ["b"]}
    identity = verifier.verify(signer.token(**claims))
    assert (identity.capabilities, identity.namespaces) == (("read:job",), ("b",))
    assert "`scope`" in refused(verifier, signer.token())


def test_ec_keys_and_a_jwk_without_alg_work_for_every_pinned_algorithm(
        rsa_keys: list[rsa.RSAPrivateKey], jwks_server: JWKSServer, make_verifier: MakeVerifier) -> None:
    ec_signer = Signer(ec.generate_private_key(ec.SECP256R1()), "ec-1", "ES256")
    ps_signer = Signer(rsa_keys[1], "rsa-no-alg", "PS256")
    jwks_server.keys = [ec_signer.jwk(alg="ES256"), ps_signer.jwk()]  # PyJWT alone would bind this RSA key to RS256
    verifier = make_verifier(algorithms=("ES256", "PS256", "RS256"))
    assert verifier.verify(ec_signer.token(sub="ec")).subject == "ec"
    assert verifier.verify(ps_signer.token(sub="ps")).subject == "ps"
    as_rs256 = Signer(rsa_keys[1], "rsa-no-alg", "RS256")
    assert verifier.verify(as_rs256.token(sub="rs")).subject == "rs"


def test_a_token_without_kid_is_accepted_only_when_the_jwks_has_one_key(
        signer: Signer, rsa_keys: list[rsa.RSAPrivateKey], jwks_server: JWKSServer, verifier: OIDCVerifier,
        make_verifier: MakeVerifier) -> None:
    no_kid = jwt.encode({"iss": ISSUER, "aud": AUDIENCE, "sub": "k", "exp": int(time.time()) + 60,
                         "permissions": []}, signer.private, algorithm="RS256")
    assert verifier.verify(no_kid).subject == "k"
    jwks_server.keys.append(Signer(rsa_keys[1], "key-2", "RS256").jwk())
    other = make_verifier()
    assert "no `kid`" in refused(other, no_kid)


# --- bad tokens ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("claims", "drop", "expected"), [
    ({"exp": int(time.time()) - 3600}, (), "expired"),
    ({}, ("exp",), "no `exp` claim"),
    ({"nbf": int(time.time()) + 3600}, (), "not valid yet"),
    ({"iss": "https://evil.example.com/"}, (), "issuer (iss)"),
    ({"iss": ISSUER.rstrip("/")}, (), "issuer (iss)"),  # a prefix of the issuer is not the issuer
    ({}, ("iss",), "no `iss` claim"),
    ({"aud": "https://other.example.com"}, (), "audience (aud)"),
    ({"aud": [AUDIENCE[:-1]]}, (), "audience (aud)"),
    ({}, ("aud",), "no `aud` claim"),
    ({}, ("sub",), "no `sub` claim"),
    ({}, ("permissions",), "no `permissions` claim"),
    ({"permissions": ["read:job", 7]}, (), "`permissions` claim must be a list of strings"),
    ({"permissions": {"read": True}}, (), "`permissions` claim must be a list of strings"),
    ({"namespaces": 3}, (), "`namespaces` claim must be a list of strings"),
])
def test_bad_claims_are_refused_naming_the_problem(signer: Signer, verifier: OIDCVerifier, claims: dict[str, Any],
                                                   drop: tuple[str, ...], expected: str) -> None:
    assert expected in refused(verifier, signer.token(drop=drop, **claims))


def test_expiry_within_leeway_is_accepted_and_beyond_it_refused(signer: Signer, make_verifier: MakeVerifier) -> None:
    verifier = make_verifier(leeway=120)
    assert verifier.verify(signer.token(exp=int(time.time()) - 60)).subject == "alice"
    assert "expired" in refused(verifier, signer.token(exp=int(time.time()) - 600))


def test_a_token_signed_by_another_key_under_a_published_kid_is_refused(
        signer: Signer, rsa_keys: list[rsa.RSAPrivateKey], verifier: OIDCVerifier) -> None:
    forged = Signer(rsa_keys[2], signer.kid, "RS256").token()
    assert "signature does not verify" in refused(verifier, forged)
    head, payload, signature = signer.token().split(".")
    tampered = json.loads(base64.urlsafe_b64decode(payload + "=="))
    tampered["permissions"].append("admin")
    assert "signature does not verify" in refused(verifier, f"{head}.{b64(json.dumps(tampered).encode())}.{signature}")


@pytest.mark.parametrize("token", ["", "abc", "a.b", "not.a.jwt", "eyJhbGciOi.eyJzdWIi.sig", "a b.c d.e f",
                                   f"{b64(b'[1]')}.{b64(b'{}')}.x"])
def test_malformed_tokens_are_refused(verifier: OIDCVerifier, jwks_server: JWKSServer, token: str) -> None:
    assert "not a well-formed JWT" in refused(verifier, token)
    assert jwks_server.requests == 0


def test_unsigned_alg_none_token_is_refused(signer: Signer, verifier: OIDCVerifier, jwks_server: JWKSServer) -> None:
    payload = jwt.decode(signer.token(), options={"verify_signature": False})
    token = f"{b64(json.dumps({'alg': 'none', 'kid': signer.kid}).encode())}.{b64(json.dumps(payload).encode())}."
    assert looks_like_jwt(token)  # so the gateway hands it to the verifier rather than trying it as an API key
    assert "signed with 'none'" in refused(verifier, token)
    assert jwks_server.requests == 0


def test_hs256_signed_with_the_public_key_pem_is_refused(signer: Signer, verifier: OIDCVerifier) -> None:
    """The key-confusion attack: the public key, used as an HMAC secret, must not verify anything."""
    pem = signer.private.public_key().public_bytes(serialization.Encoding.PEM,
                                                   serialization.PublicFormat.SubjectPublicKeyInfo)
    header = {"alg": "HS256", "kid": signer.kid}
    payload = jwt.decode(signer.token(), options={"verify_signature": False})
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    signature = b64(hmac.new(pem, signing_input.encode(), hashlib.sha256).digest())
    assert "signed with 'HS256'" in refused(verifier, f"{signing_input}.{signature}")


def test_an_algorithm_not_pinned_is_refused_even_with_a_valid_signature(signer: Signer,
                                                                        make_verifier: MakeVerifier) -> None:
    verifier = make_verifier(algorithms=("ES256",))
    assert "signed with 'RS256'" in refused(verifier, signer.token())


def test_a_token_whose_alg_does_not_fit_the_key_is_refused(rsa_keys: list[rsa.RSAPrivateKey], jwks_server: JWKSServer,
                                                           make_verifier: MakeVerifier) -> None:
    rsa_signer = Signer(rsa_keys[0], "rsa", "RS256")
    ec_signer = Signer(ec.generate_private_key(ec.SECP256R1()), "ec", "ES256")
    jwks_server.keys = [rsa_signer.jwk(alg="RS256"), ec_signer.jwk()]
    verifier = make_verifier(algorithms=("RS256", "PS256", "ES256"))
    as_ps256 = Signer(rsa_keys[0], "rsa", "PS256").token()  # right key, but the JWK says RS256 only
    assert "is for 'RS256'" in refused(verifier, as_ps256)
    ec_kid_rsa_signature = Signer(rsa_keys[0], "ec", "RS256").token()
    assert "cannot verify 'RS256'" in refused(verifier, ec_kid_rsa_signature)


def test_encryption_keys_in_the_jwks_are_not_used_for_signatures(signer: Signer, jwks_server: JWKSServer,
                                                                 verifier: OIDCVerifier) -> None:
    jwks_server.keys = [signer.jwk(use="enc")]
    assert "not in the identity provider's JWKS" in refused(verifier, signer.token())


# --- the JWKS: caching, rotation, outages -----------------------------------------------------------------------


def test_the_jwks_is_fetched_lazily_once_and_again_when_the_cache_expires(
        signer: Signer, jwks_server: JWKSServer, verifier: OIDCVerifier, clock: Clock) -> None:
    assert jwks_server.requests == 0
    for _ in range(5):
        verifier.verify(signer.token())
    assert jwks_server.requests == 1
    clock.now += 299
    verifier.verify(signer.token())
    assert jwks_server.requests == 1
    clock.now += 1
    verifier.verify(signer.token())
    assert jwks_server.requests == 2


def test_key_rotation_is_picked_up_with_exactly_one_refetch(
        signer: Signer, rsa_keys: list[rsa.RSAPrivateKey], jwks_server: JWKSServer, verifier: OIDCVerifier) -> None:
    verifier.verify(signer.token())
    assert jwks_server.requests == 1
    rotated = Signer(rsa_keys[1], "key-2", "RS256")
    jwks_server.keys = [rotated.jwk(), signer.jwk()]
    assert verifier.verify(rotated.token(sub="bob")).subject == "bob"
    assert jwks_server.requests == 2
    for _ in range(3):
        verifier.verify(rotated.token())
        verifier.verify(signer.token())
    assert jwks_server.requests == 2


def test_unknown_kids_do_not_cause_a_refetch_storm(signer: Signer, rsa_keys: list[rsa.RSAPrivateKey],
                                                   jwks_server: JWKSServer, verifier: OIDCVerifier,
                                                   clock: Clock) -> None:
    verifier.verify(signer.token())
    for n in range(10):
        message = refused(verifier, Signer(rsa_keys[2], f"forged-{n}", "RS256").token())
        assert f"signing key 'forged-{n}' is not in the identity provider's JWKS" in message
    assert jwks_server.requests == 2
    clock.now += REFETCH_SECONDS
    refused(verifier, Signer(rsa_keys[2], "forged-later", "RS256").token())
    assert jwks_server.requests == 3


def test_the_first_fetch_happens_once_under_concurrency(signer: Signer, jwks_server: JWKSServer,
                                                        verifier: OIDCVerifier) -> None:
    jwks_server.delay = 0.2
    token = signer.token()
    barrier = threading.Barrier(16)
    results: list[str] = []

    def verify() -> None:
        barrier.wait()
        results.append(verifier.verify(token).subject)

    threads = [threading.Thread(target=verify) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert results == ["alice"] * 16
    assert jwks_server.requests == 1


def test_an_unreachable_jwks_is_unauthorized_not_a_crash(signer: Signer, clock: Clock) -> None:
    config = OIDCConfig(issuer=ISSUER, audience=AUDIENCE, jwks_uri=f"http://127.0.0.1:{free_port()}/jwks")
    verifier = OIDCVerifier(config, clock=clock)
    message = refused(verifier, signer.token())
    verifier.close()
    assert message.startswith(f"cannot reach the identity provider's JWKS at {config.jwks_uri}")


@pytest.mark.parametrize(("status", "body", "expected"), [
    (503, None, "cannot reach the identity provider's JWKS"),
    (200, b"<html>", "is not JSON"),
    (200, b'{"keys": []}', "has no usable keys"),
    (200, b'{"keys": [{"kty": "nope"}]}', "has no usable keys"),
    (200, b"[1, 2]", "has no usable keys"),
])
def test_a_failing_jwks_is_unauthorized(signer: Signer, jwks_server: JWKSServer, verifier: OIDCVerifier,
                                        status: int, body: bytes | None, expected: str) -> None:
    jwks_server.status, jwks_server.body = status, body
    assert expected in refused(verifier, signer.token())


def test_after_a_failed_fetch_the_provider_is_not_hammered(signer: Signer, jwks_server: JWKSServer,
                                                           verifier: OIDCVerifier, clock: Clock) -> None:
    jwks_server.status = 503
    for _ in range(5):
        assert "cannot reach" in refused(verifier, signer.token())
    assert jwks_server.requests == 1
    jwks_server.status = 200
    assert "cannot reach" in refused(verifier, signer.token())
    assert jwks_server.requests == 1
    clock.now += REFETCH_SECONDS
    assert verifier.verify(signer.token()).subject == "alice"
    assert jwks_server.requests == 2


def test_keys_already_fetched_stay_in_use_while_the_provider_is_down(signer: Signer, jwks_server: JWKSServer,
                                                                      verifier: OIDCVerifier, clock: Clock) -> None:
    verifier.verify(signer.token())
    jwks_server.status = 503
    clock.now += 300
    assert verifier.verify(signer.token()).subject == "alice"
    assert jwks_server.requests == 2
    message = refused(verifier, Signer(signer.private, "new-kid", "RS256").token())
    assert "refreshing it failed: cannot reach" in message


# --- looks_like_jwt ------------------------------------------------------------------------------------------------


def test_looks_like_jwt_tells_jwts_from_api_keys(signer: Signer) -> None:
    assert looks_like_jwt(signer.token())
    for api_key in ["", "shoal_abc123", "a.b.c", "abc.def.ghi", "ci-token-with-dashes_and_underscores",
                    f"{signer.token()}.extra", f"{b64(b'[1]')}.{b64(b'{}')}.sig", "eyJ.eyJ.sig", " " + signer.token()]:
        assert not looks_like_jwt(api_key), api_key


# --- configuration -------------------------------------------------------------------------------------------------

GOOD = {"Issuer": ISSUER, "Audience": AUDIENCE, "JWKSUri": "https://idp.example.com/.well-known/jwks.json"}


def test_from_mapping_reads_the_auth_oidc_section_with_case_insensitive_keys() -> None:
    config = OIDCConfig.from_mapping({"auth": {"oidc": {
        "issuer": ISSUER, "AUDIENCE": AUDIENCE, "jwksuri": GOOD["JWKSUri"], "Algorithms": ["RS256", "ES256"],
        "capabilitiesClaim": "scope", "NamespacesClaim": "ns", "Leeway": 5, "CacheSeconds": 60}}})
    assert config == OIDCConfig(issuer=ISSUER, audience=AUDIENCE, jwks_uri=GOOD["JWKSUri"],
                                algorithms=("RS256", "ES256"), capabilities_claim="scope", namespaces_claim="ns",
                                leeway=5, cache_seconds=60)
    assert OIDCConfig.from_mapping(GOOD) == OIDCConfig.from_mapping({"OIDC": GOOD})
    assert OIDCConfig.from_mapping(GOOD).algorithms == ("RS256",)
    assert OIDCConfig.from_mapping({**GOOD, "Algorithms": "RS256, PS256"}).algorithms == ("RS256", "PS256")


def test_every_config_field_has_a_key() -> None:
    values = {"issuer": "i", "audience": "a", "jwks_uri": "http://h/", "algorithms": ["ES384"],
              "capabilities_claim": "c", "namespaces_claim": "n", "leeway": 1, "cache_seconds": 2}
    assert {f.name for f in fields(OIDCConfig)} == set(values)
    keys = ["Issuer", "Audience", "JWKSUri", "Algorithms", "CapabilitiesClaim", "NamespacesClaim", "Leeway",
            "CacheSeconds"]
    config = OIDCConfig.from_mapping(dict(zip(keys, values.values(), strict=True)))
    assert [getattr(config, name) for name in values] == ["i", "a", "http://h/", ("ES384",), "c", "n", 1, 2]


@pytest.mark.parametrize(("change", "expected"), [
    ({"Issuer": None}, "Auth.OIDC.Issuer is required"),
    ({"Audience": None}, "Auth.OIDC.Audience is required"),
    ({"JWKSUri": None}, "Auth.OIDC.JWKSUri is required"),
    ({"Issuer": ""}, "Auth.OIDC.Issuer must be a non-empty string"),
    ({"Audience": ["a", "b"]}, "Auth.OIDC.Audience must be a non-empty string"),
    ({"JWKSUri": "file:///etc/jwks.json"}, "Auth.OIDC.JWKSUri must be an http(s) URL"),
    ({"Algorithms": ["RS256", "HS256"]}, "Auth.OIDC.Algorithms: 'HS256' is not an asymmetric"),
    ({"Algorithms": ["none"]}, "Auth.OIDC.Algorithms: 'none' is not an asymmetric"),
    ({"Algorithms": []}, "Auth.OIDC.Algorithms must name at least one"),
    ({"Algorithms": [256]}, "Auth.OIDC.Algorithms must be a list"),
    ({"CapabilitiesClaim": ""}, "Auth.OIDC.CapabilitiesClaim must be a non-empty string"),
    ({"NamespacesClaim": 3}, "Auth.OIDC.NamespacesClaim must be a non-empty string"),
    ({"Leeway": -1}, "Auth.OIDC.Leeway must be a number"),
    ({"CacheSeconds": "soon"}, "Auth.OIDC.CacheSeconds must be a number"),
    ({"Audiance": AUDIENCE}, "Auth.OIDC.Audiance is not a known setting"),
])
def test_from_mapping_errors_name_the_key(change: dict[str, Any], expected: str) -> None:
    data = {key: value for key, value in {**GOOD, **change}.items() if value is not None}
    with pytest.raises(ConfigurationError) as caught:
        OIDCConfig.from_mapping(data)
    assert expected in caught.value.message


def test_an_hmac_algorithm_is_refused_when_built_directly_too() -> None:
    with pytest.raises(ConfigurationError, match="'HS256' is not an asymmetric"):
        OIDCConfig(issuer=ISSUER, audience=AUDIENCE, jwks_uri=GOOD["JWKSUri"], algorithms=("HS256",))
