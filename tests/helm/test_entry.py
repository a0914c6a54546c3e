"""The way in (entry.gatewayAPI, entry.ingress, entry.loadBalancer), the certificates
cert-manager issues for the services and the gateway (certManager), and what the NetworkPolicies
add for them (NodeLocal DNS, egress by CIDR, the load balancer's source ranges)."""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Iterator
from typing import Any

import helm_python as helm
import pytest
from chart_support import (
    NAMESPACE,
    RELEASE,
    SCENARIOS,
    SERVICES,
    Obj,
    by_name,
    component_name,
    container,
    containers,
    deployed_services,
    deployment,
    env_of,
    merged_values,
    mounted_volume,
    objects,
    of_kind,
    overlay,
    parse_manifests,
    pod_of,
    pods_selected,
    render,
    scenario_values,
    schemaless,
    service_container,
)
from grpc_health.v1 import health, health_pb2
from grpc_reflection.v1alpha import reflection, reflection_pb2

from services.api.imaging.v1 import gateway_pb2

ENTRY_KINDS = ("gatewayAPI", "ingress", "loadBalancer")
ROUTE_KINDS = ("GRPCRoute", "HTTPRoute")
# The public API the entries expose, and the services every gRPC server also answers that must
# stay inside the cluster.
PUBLIC = {s.full_name: s for s in gateway_pb2.DESCRIPTOR.services_by_name.values()}
INTERNAL = {
    s.full_name: s
    for module in (health_pb2, reflection_pb2)
    for s in module.DESCRIPTOR.services_by_name.values()
}
H2C = "kubernetes.io/h2c"
# OpenShift's router turns an Ingress with this annotation into a passthrough Route.
OPENSHIFT_TERMINATION = "route.openshift.io/termination"
# The label the API server sets on every namespace.
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"
# Key usages that say nothing about the role of a certificate.
NEUTRAL_USAGES = {"digital signature", "key encipherment"}
_GO_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_GO_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")


def _go_seconds(text: str) -> float:
    """Seconds of a Go duration such as 360s, 6m or 1h2m3.5s."""
    parts = _GO_PART.findall(text)
    assert parts and "".join(n + u for n, u in parts) == text, f"not a Go duration: {text!r}"
    return sum(float(n) * _GO_UNITS[u] for n, u in parts)


@functools.cache
def _manifests(scenario: str) -> dict[str, str]:
    """A scenario's rendered templates as text, NOTES.txt included (read only)."""
    return render(scenario_values(scenario))


def _notes(scenario: str) -> str:
    return next(text for name, text in _manifests(scenario).items() if name.endswith("NOTES.txt"))


def _routes(objs: list[Obj]) -> list[Obj]:
    return [o for o in objs if o["kind"] in ROUTE_KINDS]


def _load_balancers(objs: list[Obj]) -> list[Obj]:
    return [s for s in of_kind(objs, "Service") if s["spec"].get("type") == "LoadBalancer"]


def _entries(objs: list[Obj]) -> list[Obj]:
    return [*_routes(objs), *of_kind(objs, "Ingress"), *_load_balancers(objs)]


def _passthrough(ingress: Obj) -> bool:
    annotations = ingress["metadata"].get("annotations") or {}
    return bool(annotations.get(OPENSHIFT_TERMINATION) == "passthrough")


def _backend_refs(objs: list[Obj]) -> Iterator[tuple[str, str, int]]:
    """(entry kind, Service name, Service port) of every backend the routes and Ingresses name."""
    for route in _routes(objs):
        for rule in route["spec"]["rules"]:
            for ref in rule["backendRefs"]:
                assert ref.get("kind", "Service") == "Service" and ref.get("group", "") == ""
                assert ref.get("namespace", NAMESPACE) == NAMESPACE
                yield "gatewayAPI", ref["name"], ref["port"]
    for ingress in of_kind(objs, "Ingress"):
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                service = path["backend"]["service"]
                yield "ingress", service["name"], service["port"]["number"]


def _service_port(service: Obj, number: int) -> Obj:
    matches = [p for p in service["spec"]["ports"] if p["port"] == number]
    assert len(matches) == 1, f"{service['metadata']['name']} has {len(matches)} ports {number}"
    return matches[0]


def _assert_reaches_api(objs: list[Obj], service: Obj, port: Obj, backend: str) -> None:
    """``port`` of ``service`` lands on the port where ``backend``'s container serves its API."""
    selector = {"matchLabels": service["spec"]["selector"]}
    assert pods_selected(objs, selector) == {backend}, service["metadata"]["name"]
    target = port["targetPort"]
    assert isinstance(target, str), "a named targetPort follows the container's port"
    deploy = deployment(objs, backend)
    owners = [
        (c, p)
        for c in containers(deploy, init=False)
        for p in c.get("ports", [])
        if p["name"] == target
    ]
    assert len(owners) == 1, f"{len(owners)} container ports named {target}"
    ((c, container_port),) = owners
    assert c["name"] == backend
    assert container_port["containerPort"] == int(env_of(c)["IMAGING_PORT"])
    assert container_port["protocol"] == port["protocol"] == "TCP"


def _gateway_grpc_rule(objs: list[Obj], values: dict[str, Any]) -> Obj:
    """The ingress rule of the gateway's NetworkPolicy on its gRPC port."""
    spec = by_name(objs, "NetworkPolicy", component_name("gateway"))["spec"]
    grpc = {("TCP", values["ports"]["grpc"])}
    rules = [r for r in spec["ingress"] if {(p["protocol"], p["port"]) for p in r["ports"]} == grpc]
    assert len(rules) == 1
    return rules[0]


def _ip_blocks(cidrs: list[str]) -> list[Obj]:
    return [{"ipBlock": {"cidr": c}} for c in cidrs]


def _tcp(ports: list[int]) -> list[Obj]:
    return [{"protocol": "TCP", "port": p} for p in ports]


# --- every entry reaches the gateway's API ----------------------------------------------------


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_entries_reach_the_port_their_backend_serves_its_api_on(scenario: str) -> None:
    objs = objects(scenario)
    entry = merged_values(scenario)["entry"]
    enabled = [k for k in ENTRY_KINDS if entry[k]["enabled"]]
    expected = set()
    for kind in enabled:
        backend = entry[kind]["backend"]
        if kind == "gatewayAPI":
            expected.add((entry[kind]["kind"], component_name(f"{backend}-entry")))
        elif kind == "ingress":
            expected.add(("Ingress", component_name(f"{backend}-entry")))
        else:
            expected.add(("Service", component_name(f"{backend}-lb")))
    # One object per enabled kind; a scenario without entries renders none.
    assert {(o["kind"], o["metadata"]["name"]) for o in _entries(objs)} == expected
    if not enabled:
        assert not of_kind(objs, "BackendTLSPolicy")
        return

    refs = list(_backend_refs(objs))
    assert {kind for kind, _, _ in refs} == set(enabled) - {"loadBalancer"}
    for kind, name, number in refs:
        service = by_name(objs, "Service", name)
        _assert_reaches_api(objs, service, _service_port(service, number), entry[kind]["backend"])
    for lb in _load_balancers(objs):
        (port,) = lb["spec"]["ports"]
        assert port["port"] == entry["loadBalancer"]["port"]
        _assert_reaches_api(objs, lb, port, entry["loadBalancer"]["backend"])


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_entries_carry_their_values(scenario: str) -> None:
    objs = objects(scenario)
    entry = merged_values(scenario)["entry"]
    for route in _routes(objs):
        gateway_api = entry["gatewayAPI"]
        assert route["metadata"]["namespace"] == NAMESPACE
        assert route["spec"]["parentRefs"] == gateway_api["parentRefs"]
        assert route["spec"].get("hostnames", []) == gateway_api["hostnames"]
    for ingress in of_kind(objs, "Ingress"):
        values = entry["ingress"]
        assert ingress["spec"].get("ingressClassName", "") == values["className"]
        assert (ingress["metadata"].get("annotations") or {}) == values["annotations"]
        assert [r["host"] for r in ingress["spec"]["rules"]] == values["hosts"]
        assert ingress["spec"].get("tls", []) == values["tls"]
    for lb in _load_balancers(objs):
        values = entry["loadBalancer"]
        spec = lb["spec"]
        assert spec.get("loadBalancerClass", "") == values["loadBalancerClass"]
        assert spec.get("loadBalancerSourceRanges", []) == values["loadBalancerSourceRanges"]
        assert spec["externalTrafficPolicy"] == values["externalTrafficPolicy"]
        assert (lb["metadata"].get("annotations") or {}) == values["annotations"]


# --- only the public API ----------------------------------------------------------------------


def _method_paths(services: dict[str, Any]) -> set[str]:
    return {f"/{name}/{m.name}" for name, s in services.items() for m in s.methods}


def _matched(prefixes: list[str], path: str) -> bool:
    """Whether an HTTP path prefix (Gateway API PathPrefix, Ingress Prefix) matches ``path``."""
    return any(path == p.rstrip("/") or path.startswith(p.rstrip("/") + "/") for p in prefixes)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_routes_and_ingress_paths_expose_only_the_public_api(scenario: str) -> None:
    objs = objects(scenario)
    entry = merged_values(scenario)["entry"]
    grpc_services: list[str] = []  # GRPCRoute method matches
    prefixes: list[str] = []  # HTTPRoute and Ingress path prefixes
    for route in _routes(objs):
        for rule in route["spec"]["rules"]:
            assert rule["matches"], "a rule without matches routes every path"
            for match in rule["matches"]:
                if route["kind"] == "GRPCRoute":
                    assert set(match) == {"method"}
                    assert match["method"]["type"] == "Exact" and "method" not in match["method"]
                    grpc_services.append(match["method"]["service"])
                else:
                    assert set(match) == {"path"} and match["path"]["type"] == "PathPrefix"
                    prefixes.append(match["path"]["value"])
    for ingress in of_kind(objs, "Ingress"):
        if _passthrough(ingress):
            continue  # layer 4: see test_openshift_passthrough_ingress_routes_by_host_only
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                assert path["pathType"] == "Prefix"
                prefixes.append(path["path"])

    l7_ingress = any(not _passthrough(i) for i in of_kind(objs, "Ingress"))
    routed = entry["gatewayAPI"]["enabled"] or l7_ingress
    assert bool(grpc_services or prefixes) == routed
    if not routed:
        return
    # What every service process registers besides its API (services/common/server.py).
    assert {health.SERVICE_NAME, reflection.SERVICE_NAME} <= set(INTERNAL)
    if grpc_services:
        assert set(grpc_services) == set(PUBLIC)
        assert not set(grpc_services) & set(INTERNAL)
    if prefixes:
        assert {p.rstrip("/") for p in prefixes} == {f"/{name}" for name in PUBLIC}
        for path in _method_paths(PUBLIC):
            assert _matched(prefixes, path), path
        for path in _method_paths(INTERNAL):
            assert not _matched(prefixes, path), path


def test_openshift_passthrough_ingress_routes_by_host_only() -> None:
    """A passthrough Route cannot see paths (TLS ends at the gateway): it must have none."""
    (ingress,) = of_kind(objects("openshift"), "Ingress")
    assert _passthrough(ingress)
    for rule in ingress["spec"]["rules"]:
        for path in rule["http"]["paths"]:
            assert path.get("path", "") == "" and path["pathType"] == "ImplementationSpecific"


# --- timeouts ---------------------------------------------------------------------------------


def _longest_call_seconds(objs: list[Obj], values: dict[str, Any]) -> float:
    """An AnalyzeStream's upload window plus the gateway's per-call timeout."""
    gateway = values["gateway"]
    receive = float(gateway["admission"]["streamReceiveSeconds"])
    call = float(gateway["env"]["IMAGING_CALL_TIMEOUT_SECONDS"])
    env = env_of(service_container(objs, "gateway"))
    assert float(env["IMAGING_STREAM_RECEIVE_SECONDS"]) == receive
    assert float(env["IMAGING_CALL_TIMEOUT_SECONDS"]) == call
    return receive + call


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_entry_timeouts_outlast_the_longest_call(scenario: str) -> None:
    objs = objects(scenario)
    values = merged_values(scenario)
    longest = _longest_call_seconds(objs, values)
    gateway_api = values["entry"]["gatewayAPI"]
    http_routes = of_kind(objs, "HTTPRoute")
    assert bool(http_routes) == (gateway_api["enabled"] and gateway_api["kind"] == "HTTPRoute")
    for route in http_routes:
        for rule in route["spec"]["rules"]:
            # Without it the implementation's default (often 15 s) cuts every study.
            assert _go_seconds(rule["timeouts"]["request"]) >= longest
    for ingress in of_kind(objs, "Ingress"):
        for key, value in (ingress["metadata"].get("annotations") or {}).items():
            if key.rsplit("/", 1)[-1].endswith("timeout"):
                assert _go_seconds(value) >= longest, key


def test_dev_cpu_http_route_sets_its_request_timeout() -> None:
    objs = objects("dev-cpu")
    (route,) = of_kind(objs, "HTTPRoute")
    (rule,) = route["spec"]["rules"]
    seconds = _go_seconds(rule["timeouts"]["request"])
    assert seconds >= _longest_call_seconds(objs, merged_values("dev-cpu"))
    assert _go_seconds("6m") == _go_seconds("360s") == 360.0


# --- appProtocol and the Gateway's check of the gateway's certificate --------------------------


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_app_protocol_is_h2c_exactly_where_the_gateway_speaks_plaintext(scenario: str) -> None:
    objs = objects(scenario)
    values = merged_values(scenario)
    tls = values["tls"]["enabled"]
    for svc in deployed_services(scenario):
        service = by_name(objs, "Service", component_name(svc))
        port = _service_port(service, values["ports"]["grpc"])
        # Gateway API backends read kubernetes.io/h2c as HTTP/2 in cleartext; behind TLS the
        # gateway and the inner services speak gRPC over TLS.
        plaintext_gateway = svc == "gateway" and not tls
        assert port["appProtocol"] == (H2C if plaintext_gateway else "grpc"), svc
    for lb in _load_balancers(objs):
        (port,) = lb["spec"]["ports"]
        assert (port.get("appProtocol") == H2C) == (not tls)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_backend_tls_policy_checks_the_certificate_the_gateway_serves(scenario: str) -> None:
    objs = objects(scenario)
    values = merged_values(scenario)
    gateway_api = values["entry"]["gatewayAPI"]
    policies = of_kind(objs, "BackendTLSPolicy")
    wanted = gateway_api["enabled"] and gateway_api["backendTLS"]["enabled"]
    if not (wanted and values["tls"]["enabled"]):
        assert policies == []  # a plaintext backend needs none
        return
    (policy,) = policies
    (route,) = _routes(objs)
    ((_, service_name, number),) = list(_backend_refs(objs))
    service = by_name(objs, "Service", service_name)
    (target,) = policy["spec"]["targetRefs"]
    assert (target["group"], target["kind"], target["name"]) == ("", "Service", service_name)
    # The policy covers the very port the route sends to.
    assert target["sectionName"] == _service_port(service, number)["name"]
    assert target["sectionName"] in {p["name"] for p in service["spec"]["ports"]}
    validation = policy["spec"]["validation"]
    assert validation["caCertificateRefs"] == gateway_api["backendTLS"]["caCertificateRefs"]
    hostname = validation["hostname"]
    service_host = f"{service_name}.{NAMESPACE}.svc.{values['clusterDomain']}"
    assert hostname == (gateway_api["backendTLS"]["hostname"] or service_host)
    assert route["metadata"]["namespace"] == policy["metadata"]["namespace"] == NAMESPACE
    if values["certManager"]["enabled"]:
        certificate = by_name(objs, "Certificate", component_name("gateway-tls"))
        assert hostname in certificate["spec"]["dnsNames"]


def test_backend_tls_hostname_override_joins_the_gateway_certificate() -> None:
    hostname = "imaging-gateway.internal.example"
    values = overlay(
        scenario_values("entry-tls"),
        {"entry": {"gatewayAPI": {"backendTLS": {"hostname": hostname}}}},
    )
    objs = parse_manifests(render(values))
    (policy,) = of_kind(objs, "BackendTLSPolicy")
    assert policy["spec"]["validation"]["hostname"] == hostname
    certificate = by_name(objs, "Certificate", component_name("gateway-tls"))
    assert hostname in certificate["spec"]["dnsNames"]


# --- cert-manager -----------------------------------------------------------------------------


def _chart_issuer(objs: list[Obj], ref: Obj) -> Obj | None:
    """The Issuer of this render ``ref`` names, or None (an issuer the chart does not render)."""
    if ref.get("kind") != "Issuer" or ref.get("group", "cert-manager.io") != "cert-manager.io":
        return None
    matches = [i for i in of_kind(objs, "Issuer") if i["metadata"]["name"] == ref["name"]]
    assert len(matches) <= 1
    return matches[0] if matches else None


def _ca_secret(objs: list[Obj], certificate: Obj) -> str:
    """The Secret of the CA that signs ``certificate`` (a chart CA Issuer's)."""
    issuer = _chart_issuer(objs, certificate["spec"]["issuerRef"])
    assert issuer is not None and "ca" in issuer["spec"], certificate["metadata"]["name"]
    secret: str = issuer["spec"]["ca"]["secretName"]
    return secret


def _notes_dns_names(notes: str) -> list[str]:
    """The DNS names NOTES.txt asks the services' certificate to carry."""
    assert notes.count("these DNS names:") == 1
    names = []
    for line in notes.split("these DNS names:", 1)[1].splitlines()[1:]:
        listed = re.fullmatch(r"\s+- (\S+)", line)
        if listed is None:
            break
        names.append(listed.group(1))
    return names


def _dialled_hosts(objs: list[Obj]) -> set[str]:
    """Hosts of the peer addresses the gateway dials (IMAGING_*_ADDRESS)."""
    env = env_of(service_container(objs, "gateway"))
    addresses = [v for k, v in env.items() if re.fullmatch(r"IMAGING_\w+_ADDRESS", k)]
    assert "IMAGING_TRITON_ADDRESS" in env
    return {a.removeprefix("dns:///").rsplit(":", 1)[0] for a in addresses}


def _secret_of(objs: list[Obj], service: str, path: str) -> str:
    deploy = pod_of(objs, service) if service in SERVICES else deployment(objs, service)
    c = container(deploy, service)
    _, volume = mounted_volume(deploy, c, path)
    secret: str = volume["secret"]["secretName"]
    return secret


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_cert_manager_issuers_form_two_chains(scenario: str) -> None:
    objs = objects(scenario)
    cm = merged_values(scenario)["certManager"]
    certificates = of_kind(objs, "Certificate")
    issuers = of_kind(objs, "Issuer")
    if not cm["enabled"]:
        assert certificates == [] and issuers == []
        return
    for obj in [*certificates, *issuers]:
        assert obj["metadata"]["namespace"] == NAMESPACE
    cas = [c for c in certificates if c["spec"].get("isCA")]
    for certificate in certificates:
        issuer = _chart_issuer(objs, certificate["spec"]["issuerRef"])
        if issuer is not None and "selfSigned" in issuer["spec"]:
            # The self-signed Issuer signs the chart's root CAs and nothing else.
            assert certificate in cas, certificate["metadata"]["name"]
    for ca in cas:
        issuer = _chart_issuer(objs, ca["spec"]["issuerRef"])
        assert issuer is not None and "selfSigned" in issuer["spec"]
    for issuer in issuers:
        if "ca" in issuer["spec"]:
            signing = [
                c for c in cas if c["spec"]["secretName"] == issuer["spec"]["ca"]["secretName"]
            ]
            assert len(signing) == 1, issuer["metadata"]["name"]
        else:
            assert set(issuer["spec"]) == {"selfSigned"}

    leaves = {
        "internal": [component_name("services-tls")],
        "gateway": [component_name("gateway-tls")],
    }
    if cm["entryClient"]["enabled"]:
        leaves["gateway"].append(component_name("entry-client"))
    leaf_names = {name for names in leaves.values() for name in names}
    assert {c["metadata"]["name"] for c in certificates if c not in cas} == leaf_names
    for domain, names in leaves.items():
        for name in names:
            ref = by_name(objs, "Certificate", name)["spec"]["issuerRef"]
            if cm[domain]["issuerRef"]:
                assert ref == cm[domain]["issuerRef"]
            else:
                issuer = _chart_issuer(objs, ref)
                assert issuer is not None and "ca" in issuer["spec"], name
    # Two trust domains: a gateway client certificate opens nothing behind the gateway.
    services = by_name(objs, "Certificate", component_name("services-tls"))
    gateway = by_name(objs, "Certificate", component_name("gateway-tls"))
    assert _ca_secret(objs, services) != _ca_secret(objs, gateway)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_cert_manager_certificates_are_the_ones_the_pods_use(scenario: str) -> None:
    objs = objects(scenario)
    values = merged_values(scenario)
    tls = values["tls"]
    if not values["certManager"]["enabled"]:
        assert not of_kind(objs, "Certificate")
        return
    services = by_name(objs, "Certificate", component_name("services-tls"))["spec"]
    gateway = by_name(objs, "Certificate", component_name("gateway-tls"))["spec"]
    assert services["secretName"] == tls["secretName"]
    assert gateway["secretName"] == tls["gateway"]["secretName"]
    assert services["secretName"] != gateway["secretName"]
    for svc in SERVICES:
        env = env_of(service_container(objs, svc))
        # The gateway dials the services with theirs and serves its public port with its own.
        own = "IMAGING_PEER_TLS_CERT" if svc == "gateway" else "IMAGING_TLS_CERT"
        assert _secret_of(objs, svc, env[own]) == services["secretName"], svc
    gateway_env = env_of(service_container(objs, "gateway"))
    for key in ("IMAGING_TLS_CERT", "IMAGING_TLS_CA"):
        # ca.crt of the gateway's Secret is the CA it accepts client certificates from.
        assert _secret_of(objs, "gateway", gateway_env[key]) == gateway["secretName"]
    triton = container(deployment(objs, "triton"), "triton")
    (cert_arg,) = [a for a in triton["args"] if a.startswith("--grpc-server-cert=")]
    path = cert_arg.split("=", 1)[1]
    assert _secret_of(objs, "triton", path) == services["secretName"]


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_cert_manager_names_match_what_is_dialled(scenario: str) -> None:
    objs = objects(scenario)
    values = merged_values(scenario)
    cm = values["certManager"]
    notes = _notes(scenario)
    # NOTES.txt lists the names the services' certificate needs exactly when TLS is on.
    assert ("these DNS names:" in notes) == values["tls"]["enabled"]
    if not cm["enabled"]:
        assert not of_kind(objs, "Certificate")
        return
    services = by_name(objs, "Certificate", component_name("services-tls"))["spec"]
    assert services["dnsNames"] == _notes_dns_names(notes)
    headless = {
        s["metadata"]["name"]
        for s in of_kind(objs, "Service")
        if s["spec"].get("clusterIP") == "None"
    }
    assert {"server auth", "client auth"} <= set(services["usages"])
    for host in _dialled_hosts(objs):
        try:
            ipaddress.ip_address(host)
        except ValueError:
            assert host in services["dnsNames"], host
            # Each name is a headless peers Service of the release, by its cluster FQDN.
            name, namespace, svc, domain = host.split(".", 3)
            assert name in headless and (namespace, svc) == (NAMESPACE, "svc"), host
            assert domain == values["clusterDomain"]
        else:
            assert host in services["ipAddresses"], host
    if values["tls"]["allowedPeers"]:
        # The inner services answer only these identities, and the gateway dials with this one.
        assert services["commonName"] in values["tls"]["allowedPeers"]

    gateway = by_name(objs, "Certificate", component_name("gateway-tls"))["spec"]
    gateway_host = f"{component_name('gateway')}.{NAMESPACE}.svc.{values['clusterDomain']}"
    assert gateway_host in gateway["dnsNames"]
    assert set(cm["gateway"]["dnsNames"]) <= set(gateway["dnsNames"])
    assert set(gateway["usages"]) - NEUTRAL_USAGES == {"server auth"}
    for ingress in of_kind(objs, "Ingress"):
        if _passthrough(ingress):  # callers' TLS ends at the gateway, by the name they dial
            assert {r["host"] for r in ingress["spec"]["rules"]} <= set(gateway["dnsNames"])

    clients = [
        c
        for c in of_kind(objs, "Certificate")
        if c["metadata"]["name"] == component_name("entry-client")
    ]
    if not cm["entryClient"]["enabled"]:
        assert clients == []
        return
    (client,) = clients
    assert client["spec"]["secretName"] == cm["entryClient"]["secretName"]
    assert set(client["spec"]["usages"]) - NEUTRAL_USAGES == {"client auth"}
    assert "dnsNames" not in client["spec"]
    # From the gateway's issuer, so its CA is the ca.crt the gateway accepts clients from.
    assert client["spec"]["issuerRef"] == gateway["issuerRef"]


INTERNAL_REF = {"name": "hospital-internal-ca", "kind": "ClusterIssuer", "group": "cert-manager.io"}
GATEWAY_REF = {"name": "hospital-gateway-ca", "kind": "Issuer", "group": "cert-manager.io"}


@pytest.mark.parametrize(
    "refs",
    [{"internal": INTERNAL_REF, "gateway": GATEWAY_REF}, {"internal": INTERNAL_REF}],
    ids=["both", "internal only"],
)
def test_issuer_refs_replace_the_bootstrapped_cas(refs: dict[str, Obj]) -> None:
    cm = {domain: {"issuerRef": ref} for domain, ref in refs.items()}
    objs = parse_manifests(render(overlay(scenario_values("entry-tls"), {"certManager": cm})))
    own = [d for d in ("internal", "gateway") if d not in refs]
    cas = [c for c in of_kind(objs, "Certificate") if c["spec"].get("isCA")]
    assert {c["metadata"]["name"] for c in cas} == {component_name(f"{d}-ca") for d in own}
    if not own:
        assert of_kind(objs, "Issuer") == []
    leaves = {
        "internal": ["services-tls"],
        "gateway": ["gateway-tls", "entry-client"],
    }
    for domain, names in leaves.items():
        for name in names:
            certificate = by_name(objs, "Certificate", component_name(name))
            if domain in refs:
                assert certificate["spec"]["issuerRef"] == refs[domain]
            else:
                assert _ca_secret(objs, certificate) == component_name(f"{domain}-ca")


def test_cert_manager_needs_tls() -> None:
    with pytest.raises(helm.HelmRenderError, match=r"set tls\.enabled"):
        render({"certManager": {"enabled": True}})


# --- values the chart refuses -----------------------------------------------------------------

FAILURES = {
    "gatewayAPI without parentRefs": (
        {"entry": {"gatewayAPI": {"enabled": True}}},
        "entry.gatewayAPI.parentRefs is required",
    ),
    "backendTLS without caCertificateRefs": (
        overlay(
            scenario_values("entry-tls"),
            {"entry": {"gatewayAPI": {"backendTLS": {"caCertificateRefs": []}}}},
        ),
        "entry.gatewayAPI.backendTLS.caCertificateRefs is required with tls.enabled",
    ),
    "ingress without hosts": (
        {"entry": {"ingress": {"enabled": True}}},
        "entry.ingress.hosts is required",
    ),
    "load balancer Cluster with gatewayIngressFrom": (
        overlay(
            scenario_values("mtls"),
            {"entry": {"loadBalancer": {"externalTrafficPolicy": "Cluster"}}},
        ),
        "entry.loadBalancer.externalTrafficPolicy must be Local",
    ),
    "load balancer without source ranges behind a restricted policy": (
        overlay(
            scenario_values("mtls"),
            {"entry": {"loadBalancer": {"loadBalancerSourceRanges": []}}},
        ),
        "entry.loadBalancer.loadBalancerSourceRanges is empty",
    ),
    "edge route with TLS and no caller authentication": (
        overlay(scenario_values("entry-tls"), {"gateway": {"auth": {"apiKeysSecret": ""}}}),
        "entry.gatewayAPI ends the callers' TLS",
    ),
    "terminating Ingress with TLS and no caller authentication": (
        overlay(
            scenario_values("openshift"),
            {
                "gateway": {"auth": {"apiKeysSecret": ""}},
                "entry": {"ingress": {"passthrough": False}},
            },
        ),
        "entry.ingress ends the callers' TLS",
    ),
    "request timeout on a GRPCRoute": (
        overlay(
            scenario_values("entry-tls"), {"entry": {"gatewayAPI": {"requestTimeout": "360s"}}}
        ),
        "entry.gatewayAPI.requestTimeout applies to an HTTPRoute only",
    ),
    "one Secret for two certificates": (
        overlay(
            scenario_values("entry-tls"),
            {"certManager": {"entryClient": {"secretName": "imaging-gateway-tls"}}},
        ),
        "must differ",
    ),
}


@pytest.mark.parametrize(("values", "message"), FAILURES.values(), ids=FAILURES.keys())
def test_inconsistent_entries_fail_to_render(values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm.HelmRenderError, match=re.escape(message)):
        render(values)


def test_cluster_traffic_policy_is_fine_without_source_restrictions() -> None:
    objs = parse_manifests(
        render({"entry": {"loadBalancer": {"enabled": True, "externalTrafficPolicy": "Cluster"}}})
    )
    (lb,) = _load_balancers(objs)
    assert lb["spec"]["externalTrafficPolicy"] == "Cluster"
    (port,) = lb["spec"]["ports"]
    assert port["appProtocol"] == H2C
    assert "from" not in _gateway_grpc_rule(objs, merged_values("default"))


def _with_backend(kind: str, backend: str) -> dict[str, Any]:
    required: dict[str, Any] = {
        "gatewayAPI": {"parentRefs": [{"name": "edge"}]},
        "ingress": {"hosts": ["imaging.example.com"]},
        "loadBalancer": {},
    }[kind]
    return {"entry": {kind: {"enabled": True, "backend": backend, **required}}}


@pytest.fixture(scope="module")
def schemaless_chart(tmp_path_factory: pytest.TempPathFactory) -> Iterator[helm.Chart]:
    with schemaless(tmp_path_factory.mktemp("chart")) as chart:
        yield chart


@pytest.mark.parametrize("kind", ENTRY_KINDS)
def test_unknown_backend_is_refused(kind: str, schemaless_chart: helm.Chart) -> None:
    assert _entries(parse_manifests(render(_with_backend(kind, "gateway"))))
    with pytest.raises(helm.HelmValuesError, match=f"/entry/{kind}/backend"):
        render(_with_backend(kind, "triton"))
    # The template's own guard, for a chart without its schema.
    with pytest.raises(helm.HelmRenderError, match='unknown backend "triton"'):
        schemaless_chart.render(_with_backend(kind, "triton"), name=RELEASE, namespace=NAMESPACE)


# --- NetworkPolicy ----------------------------------------------------------------------------


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_dns_rule_follows_the_values(scenario: str) -> None:
    objs = objects(scenario)
    dns = merged_values(scenario)["networkPolicy"]["dns"]
    (rule,) = by_name(objs, "NetworkPolicy", component_name("allow-dns"))["spec"]["egress"]
    selectors = {"namespaceSelector": dns["namespaceSelector"], "podSelector": dns["podSelector"]}
    assert rule["to"] == [selectors, *_ip_blocks(dns["ipBlocks"])]
    assert rule["ports"] == [{"protocol": p, "port": dns["port"]} for p in ("UDP", "TCP")]


def test_production_dns_reaches_node_local_dns_cache() -> None:
    dns = merged_values("gpu-production")["networkPolicy"]["dns"]
    # NodeLocal DNSCache listens on a link-local address of every node and, with kube-proxy in
    # iptables mode, on the kube-dns ClusterIP (a single address in the cluster's range).
    link_local = [
        c
        for c in dns["ipBlocks"]
        if ipaddress.ip_network(c).subnet_of(ipaddress.ip_network("169.254.0.0/16"))
    ]
    assert link_local
    assert all(ipaddress.ip_network(c).num_addresses == 1 for c in dns["ipBlocks"])
    (rule,) = by_name(objects("gpu-production"), "NetworkPolicy", component_name("allow-dns"))[
        "spec"
    ]["egress"]
    assert {"ipBlock": {"cidr": "169.254.20.10/32"}} in rule["to"]
    assert any("podSelector" in peer and "namespaceSelector" in peer for peer in rule["to"])


def test_openshift_dns_is_the_dns_default_daemonset() -> None:
    default = merged_values("default")["networkPolicy"]["dns"]
    dns = merged_values("openshift")["networkPolicy"]["dns"]
    (rule,) = by_name(objects("openshift"), "NetworkPolicy", component_name("allow-dns"))["spec"][
        "egress"
    ]
    assert dns["port"] != default["port"]
    assert {(p["protocol"], p["port"]) for p in rule["ports"]} == {
        ("UDP", dns["port"]),
        ("TCP", dns["port"]),
    }
    (peer,) = rule["to"]
    namespace = peer["namespaceSelector"]["matchLabels"][NAMESPACE_NAME_LABEL]
    assert namespace == "openshift-dns"
    assert peer["namespaceSelector"] == dns["namespaceSelector"] != default["namespaceSelector"]
    assert peer["podSelector"] == dns["podSelector"] != default["podSelector"]


def _triton_egress(objs: list[Obj]) -> list[Obj]:
    egress: list[Obj] = by_name(objs, "NetworkPolicy", component_name("triton"))["spec"]["egress"]
    return egress


def test_production_triton_reaches_only_the_object_store_ranges() -> None:
    values = merged_values("gpu-production")
    assert values["triton"]["modelRepository"]["source"] == "objectStore"
    store = values["networkPolicy"]["egress"]["objectStore"]
    assert store["cidrs"]
    (rule,) = _triton_egress(objects("gpu-production"))
    assert rule["to"] == _ip_blocks(store["cidrs"])
    assert rule["ports"] == _tcp(store["ports"])


def test_object_store_without_cidrs_opens_its_ports_to_any_address() -> None:
    objs = parse_manifests(
        render(
            {
                "triton": {
                    "modelRepository": {"source": "objectStore", "objectStore": {"uri": "s3://b/m"}}
                }
            }
        )
    )
    store = merged_values("default")["networkPolicy"]["egress"]["objectStore"]
    assert store["cidrs"] == []
    assert _triton_egress(objs) == [{"ports": _tcp(store["ports"])}]
    assert _triton_egress(objects("default")) == []  # a model PVC needs no egress


EXTRA = {
    "components": ["decoder", "triton", "model-rollout"],
    "cidrs": ["10.20.0.0/16"],
    "ports": [9000],
}


@pytest.mark.parametrize("layout_colocated", [True, False], ids=["colocated", "separate-pods"])
def test_extra_egress_lands_in_the_policy_of_the_pod_that_runs_the_component(
    layout_colocated: bool,
) -> None:
    values = {
        "dataPlane": {"colocated": layout_colocated},
        "rollout": {"rbac": {"create": True}},
        "networkPolicy": {"egress": {"extra": [EXTRA]}},
    }
    objs = parse_manifests(render(values))
    rule = {"to": _ip_blocks(EXTRA["cidrs"]), "ports": _tcp(EXTRA["ports"])}
    policies = {
        p["metadata"]["name"]: p["spec"].get("egress", []) for p in of_kind(objs, "NetworkPolicy")
    }
    # A colocated decoder is a container of the gateway's pod, whose policy then carries it.
    decoder_pod = "gateway" if layout_colocated else "decoder"
    assert rule in policies[component_name(decoder_pod)]
    assert rule in policies[component_name("triton")]
    assert rule in policies[component_name("model-rollout")]
    holders = {name for name, egress in policies.items() if rule in egress}
    assert holders == {component_name(c) for c in (decoder_pod, "triton", "model-rollout")}
    assert (component_name("decoder") in policies) == (not layout_colocated)


def test_load_balancer_source_ranges_are_admitted_by_the_gateway_policy() -> None:
    objs = objects("mtls")
    values = merged_values("mtls")
    lb = values["entry"]["loadBalancer"]
    assert lb["enabled"] and lb["loadBalancerSourceRanges"]
    assert values["networkPolicy"]["gatewayIngressFrom"]
    # Local keeps the callers' addresses, which the policy then sees.
    (service,) = _load_balancers(objs)
    assert service["spec"]["externalTrafficPolicy"] == "Local"
    peers = _gateway_grpc_rule(objs, values)["from"]
    for block in _ip_blocks(lb["loadBalancerSourceRanges"]):
        assert block in peers
    for peer in values["networkPolicy"]["gatewayIngressFrom"]:
        assert peer in peers


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_no_scenario_depends_on_ingress_nginx(scenario: str) -> None:
    text = "\n".join(_manifests(scenario).values())
    assert text.strip()
    assert not re.search(r"ingress-nginx|nginx\.ingress\.kubernetes\.io", text, re.IGNORECASE)


# --- production as shipped --------------------------------------------------------------------


@pytest.mark.parametrize("scenario", ["gpu-production", "entry-tls"])
def test_secure_as_shipped(scenario: str) -> None:
    objs = objects(scenario)
    values = merged_values(scenario)
    assert values["tls"]["enabled"]
    keys = values["gateway"]["auth"]["apiKeysSecret"]
    assert keys
    gateway_env = env_of(service_container(objs, "gateway"))
    assert _secret_of(objs, "gateway", gateway_env["IMAGING_API_KEYS_FILE"]) == keys
    for svc in SERVICES:
        assert env_of(service_container(objs, svc))["IMAGING_REFLECTION"] == "false", svc
    assert _entries(objs)

    # The gateway's gRPC port admits the Gateway's proxies' namespace, and nothing else.
    (route,) = of_kind(objs, "GRPCRoute")
    namespaces = sorted(
        {
            ref.get("namespace", route["metadata"]["namespace"])
            for ref in route["spec"]["parentRefs"]
        }
    )
    expected = [
        {"namespaceSelector": {"matchLabels": {NAMESPACE_NAME_LABEL: ns}}} for ns in namespaces
    ]
    assert _gateway_grpc_rule(objs, values)["from"] == expected


def test_passthrough_callers_need_no_key_but_the_notes_warn() -> None:
    """Passthrough callers are identified by their own certificates: allowed without keys, with
    a warning in the notes; with keys, no warning."""
    values = overlay(scenario_values("openshift"), {"gateway": {"auth": {"apiKeysSecret": ""}}})
    notes = next(v for k, v in render(values).items() if k.endswith("NOTES.txt"))
    assert "Warning: the gateway is reachable from outside the cluster" in notes
    notes = next(
        v for k, v in render(scenario_values("openshift")).items() if k.endswith("NOTES.txt")
    )
    assert "Warning: the gateway is reachable" not in notes


def test_bootstrapped_cas_keep_their_key_and_leaves_rotate() -> None:
    """A CA renewed with a new key would orphan every leaf it signed until they are reissued."""
    objs = objects("entry-tls")
    for certificate in of_kind(objs, "Certificate"):
        policy = certificate["spec"]["privateKey"]["rotationPolicy"]
        assert policy == ("Never" if certificate["spec"].get("isCA") else "Always")


def test_request_timeout_follows_the_gateway_api_duration_format() -> None:
    with pytest.raises(helm.HelmValuesError, match="requestTimeout"):
        render(
            overlay(
                scenario_values("dev-cpu"), {"entry": {"gatewayAPI": {"requestTimeout": "1.5s"}}}
            )
        )
