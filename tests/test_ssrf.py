"""The SSRF guard, table-driven: every refused form, at enqueue and after (injected) DNS."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest

from tests.conftest import make_settings
from worker.api.runs import enqueue_run
from worker.context import Context
from worker.errors import InvalidRunError, UnsafeCallbackURLError
from worker.webhooks.ssrf import check_callback_url, resolve_callback_url

GUARDED = make_settings(callback_allow_private=False)

# (url, the reason's tell-tale words) for URLs refused without any DNS.
REFUSED_LITERALS = [
    ("ftp://example.com/hook", "scheme"),
    ("file:///etc/passwd", "scheme"),
    ("gopher://example.com/", "scheme"),
    ("javascript:alert(1)", "scheme"),
    ("http://user:pw@example.com/hook", "credentials"),
    ("http://user@example.com/hook", "credentials"),
    ("http:///hook", "no host"),
    ("http://127.0.0.1/hook", "loopback"),
    ("http://127.1.2.3:8080/hook", "loopback"),
    ("http://localhost/hook", "loopback"),
    ("http://api.localhost/hook", "loopback"),
    ("http://10.0.0.5/", "private"),
    ("http://172.16.3.4/", "private"),
    ("http://192.168.1.1/", "private"),
    ("http://169.254.169.254/latest/meta-data/", "link-local"),
    ("http://169.254.1.1/", "link-local"),
    ("http://100.64.0.1/", "carrier-grade NAT"),
    ("http://100.127.255.254/", "carrier-grade NAT"),
    ("http://224.0.0.1/", "multicast"),
    ("http://239.255.255.250/", "multicast"),
    ("http://240.0.0.1/", "reserved"),
    ("http://255.255.255.255/", "reserved"),
    ("http://0.0.0.0/", "unspecified"),
    ("http://0.1.2.3/", "unspecified"),
    ("http://192.0.2.10/", "address"),  # documentation range: not global
    ("http://[::1]/hook", "loopback"),
    ("http://[::]/hook", "unspecified"),
    ("http://[fe80::1]/", "link-local"),
    ("http://[fe80::1%25eth0]/", "link-local"),
    ("http://[fc00::1]/", "unique local"),
    ("http://[fd12:3456::1]/", "unique local"),
    ("http://[fec0::1]/", "site-local"),
    ("http://[ff02::1]/", "multicast"),
    ("http://[::ffff:127.0.0.1]/", "IPv4-mapped"),
    ("http://[::ffff:8.8.8.8]/", "IPv4-mapped"),
    ("http://[::ffff:7f00:1]/", "IPv4-mapped"),
    ("http://[::127.0.0.1]/", "IPv4-compatible"),
    ("http://[::10.0.0.1]/", "IPv4-compatible"),
    ("http://[64:ff9b::127.0.0.1]/", "NAT64 embedding of a loopback"),
    ("http://[64:ff9b::a9fe:a9fe]/", "NAT64 embedding of a link-local"),
    ("http://[64:ff9b::10.1.2.3]/", "NAT64 embedding of a private"),
    ("http://[2002:7f00:1::]/", "6to4 embedding of a loopback"),
    ("http://[2002:a9fe:a9fe::1]/", "6to4 embedding of a link-local"),
    ("http://[2002:c0a8:101::1]/", "6to4 embedding of a private"),
    ("http://[64:ff9b:1::1]/", "local-use NAT64"),
    ("http://2130706433/", "non-standard spelling"),
    ("http://0177.0.0.1/", "non-standard spelling"),
    ("http://0x7f.1/", "non-standard spelling"),
    ("http://0x7f000001/", "non-standard spelling"),
    ("http://127.1/", "non-standard spelling"),
    ("http://017700000001/", "non-standard spelling"),
    ("http://0x7f.0.0.1/", "non-standard spelling"),
    ("http://010.0.0.1/", "non-standard spelling"),
    ("http://3232235777/", "non-standard spelling"),  # 192.168.1.1
    ("http://08.1.2.3/", "malformed IPv4"),
    ("http://1.2.3.256/", "out-of-range"),
]


@pytest.mark.parametrize(("url", "reason"), REFUSED_LITERALS)
def test_guard_refuses_at_enqueue(url: str, reason: str) -> None:
    with pytest.raises(UnsafeCallbackURLError) as refused:
        check_callback_url(url, GUARDED)
    assert reason in refused.value.reason


@pytest.mark.parametrize(("url", "reason"), REFUSED_LITERALS)
def test_guard_refuses_the_same_forms_at_delivery(url: str, reason: str) -> None:
    def no_dns(host: str, port: int) -> Sequence[str]:
        raise AssertionError(f"a refused URL must not be resolved ({host})")

    with pytest.raises(UnsafeCallbackURLError) as refused:
        resolve_callback_url(url, GUARDED, no_dns)
    assert reason in refused.value.reason


# (what the name resolves to, reason) for names that only show their colours after DNS.
REFUSED_RESOLUTIONS = [
    (["127.0.0.1"], "loopback"),
    (["10.1.2.3"], "private"),
    (["169.254.169.254"], "link-local"),
    (["100.100.100.200"], "carrier-grade NAT"),
    (["::1"], "loopback"),
    (["fd00::5"], "unique local"),
    (["fe80::5%eth0"], "link-local"),
    (["::ffff:10.0.0.1"], "IPv4-mapped"),
    (["64:ff9b::7f00:1"], "NAT64 embedding of a loopback"),
    (["2002:0a00:0001::1"], "6to4 embedding of a private"),
    (["93.184.216.34", "10.0.0.1"], "private"),  # one bad answer among good ones
    (["0.0.0.0"], "unspecified"),
]


@pytest.mark.parametrize(("addresses", "reason"), REFUSED_RESOLUTIONS)
def test_guard_refuses_names_that_resolve_to_internal_addresses(
    addresses: list[str], reason: str
) -> None:
    with pytest.raises(UnsafeCallbackURLError) as refused:
        resolve_callback_url("https://hooks.example.com/h", GUARDED, lambda h, p: addresses)
    assert reason in refused.value.reason
    assert "hooks.example.com" in str(refused.value)


def test_delivery_connects_to_the_checked_address_with_the_original_host() -> None:
    asked: list[tuple[str, int]] = []

    def resolver(host: str, port: int) -> Sequence[str]:
        asked.append((host, port))
        return ["93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946"]

    target = resolve_callback_url("https://Hooks.Example.com:8443/h?x=1", GUARDED, resolver)

    assert asked == [("hooks.example.com", 8443)]
    assert target.address == "93.184.216.34"
    assert target.host == "hooks.example.com"
    assert target.host_header == "hooks.example.com:8443"
    assert target.path == "/h?x=1"
    assert target.scheme == "https"


@pytest.mark.parametrize(
    "url",
    [
        "https://hooks.example.com/hatz",
        "http://93.184.216.34/x",
        "http://[2606:4700::1111]/x",
        "http://[64:ff9b::808:808]/x",  # NAT64 of a public address
        "http://[2002:808:808::1]/x",  # 6to4 of a public address
    ],
)
def test_guard_allows_public_destinations(url: str) -> None:
    check_callback_url(url, GUARDED)
    target = resolve_callback_url(url, GUARDED, lambda h, p: ["93.184.216.34"])
    assert target.address


def test_allow_private_opens_internal_addresses_but_not_odd_spellings() -> None:
    open_settings = make_settings(callback_allow_private=True)

    check_callback_url("http://127.0.0.1:8080/hook", open_settings)
    assert resolve_callback_url("http://localhost/h", open_settings, lambda h, p: ["::1"])

    with pytest.raises(UnsafeCallbackURLError):
        check_callback_url("http://2130706433/", open_settings)
    with pytest.raises(UnsafeCallbackURLError):
        check_callback_url("ftp://127.0.0.1/", open_settings)


def test_allow_hosts_opens_named_hosts_and_cidrs_only() -> None:
    settings = make_settings(
        callback_allow_private=False, callback_allow_hosts="hooks.internal,10.20.0.0/16"
    )

    resolve_callback_url("http://hooks.internal/h", settings, lambda h, p: ["10.9.9.9"])
    resolve_callback_url("http://10.20.3.4/h", settings)
    resolve_callback_url("http://other.internal/h", settings, lambda h, p: ["10.20.0.7"])
    with pytest.raises(UnsafeCallbackURLError):
        resolve_callback_url("http://other.internal/h", settings, lambda h, p: ["10.21.0.7"])
    with pytest.raises(UnsafeCallbackURLError):
        check_callback_url("http://127.0.0.1/h", settings)


def test_enqueue_refuses_a_guarded_callback_and_enqueues_nothing(
    context_factory: Callable[..., Context],
) -> None:
    ctx = context_factory(GUARDED)

    with pytest.raises(InvalidRunError) as refused:
        enqueue_run("app-1", {}, callback_url="http://169.254.169.254/latest", context=ctx)

    assert refused.value.problems == [
        "callback_url refused: address 169.254.169.254, a link-local address (incl. cloud "
        "metadata) (set HATZ_CALLBACK_ALLOW_HOSTS or HATZ_CALLBACK_ALLOW_PRIVATE to allow it)"
    ]
    assert ctx.ledger.run_ids() == []
