"""SSRF guard for callback URLs: user input that makes the worker send requests.

Checked twice. At enqueue (:func:`check_callback_url`) the URL's form and any
literal address are checked, without DNS. At delivery
(:func:`resolve_callback_url`) the host name is resolved, every address it
resolves to is checked, and the delivery connects to exactly the address that
was checked (:class:`Target`), so a DNS answer that changes between the check
and the connection (DNS rebinding) cannot redirect the request.

Refused unless ``HATZ_CALLBACK_ALLOW_PRIVATE`` or ``HATZ_CALLBACK_ALLOW_HOSTS``
opens them: loopback, private, link-local (cloud metadata), CGNAT, multicast,
reserved and unspecified addresses, IPv6 ULA/link-local/site-local, IPv4-mapped
and IPv4-compatible IPv6, and NAT64/6to4 embeddings of a refused IPv4 address.
Always refused: schemes other than http(s), credentials in the URL, and IPv4
addresses spelled in decimal, octal or hex (``http://2130706433/``), which
resolvers read as addresses while humans and naive filters read them as names.

The same guard checks ``https://`` file inputs (:mod:`worker.files`), with their
own allowance (``HATZ_FILE_URL_ALLOW_PRIVATE``, ``HATZ_FILE_URL_ALLOW_HOSTS``):
see :class:`Allowance`.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from config import Settings
from worker.errors import UnsafeCallbackURLError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
#: ``(host, port) -> addresses``; tests inject one so they never do real DNS.
Resolver = Callable[[str, int], Sequence[str]]

_CGNAT = ipaddress.IPv4Network("100.64.0.0/10")
_THIS_NETWORK = ipaddress.IPv4Network("0.0.0.0/8")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")
_6TO4 = ipaddress.IPv6Network("2002::/16")
_SITE_LOCAL = ipaddress.IPv6Network("fec0::/10")
_ULA = ipaddress.IPv6Network("fc00::/7")
_NUMERIC_PART = re.compile(r"^(0x[0-9a-f]*|[0-9]+)$")
_LOCAL_NAMES = ("localhost", "localhost.localdomain")


def system_resolver(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (``getaddrinfo``), in the resolver's order."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    seen: list[str] = []
    for info in infos:
        address = str(info[4][0])
        if address not in seen:
            seen.append(address)
    return seen


@dataclass(frozen=True)
class Allowance:
    """What the guard lets through despite the refused ranges, and the settings that say so."""

    private: bool
    hosts: Sequence[str]
    #: The settings' prefix, named in refusals (``HATZ_CALLBACK`` -> ``..._ALLOW_HOSTS``).
    setting: str = "HATZ_CALLBACK"

    @classmethod
    def callbacks(cls, settings: Settings) -> Allowance:
        """Callbacks' allowance: ``HATZ_CALLBACK_ALLOW_PRIVATE`` and ``..._ALLOW_HOSTS``."""
        return cls(settings.callback_allow_private, settings.callback_allow_hosts)

    @classmethod
    def file_urls(cls, settings: Settings) -> Allowance:
        """File inputs' allowance: ``HATZ_FILE_URL_ALLOW_PRIVATE`` and ``..._ALLOW_HOSTS``."""
        return cls(settings.file_url_allow_private, settings.file_url_allow_hosts, "HATZ_FILE_URL")


@dataclass(frozen=True)
class Target:
    """Where one delivery goes: the URL's parts and the checked address to connect to."""

    scheme: str
    host: str
    port: int
    path: str
    address: str

    @property
    def host_header(self) -> str:
        """The ``Host`` header: the URL's host (and port when not the default)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"


def _number(part: str) -> int:
    if part.startswith("0x"):
        return int(part, 16)
    return int(part, 8) if len(part) > 1 and part[0] == "0" else int(part)


def _ipv4_from_spelling(host: str) -> ipaddress.IPv4Address | None:
    """The address an ``inet_aton``-style spelling means (``0x7f.1``), or None for a name."""
    parts = host.split(".")
    if not parts or not all(_NUMERIC_PART.match(p) for p in parts) or len(parts) > 4:
        return None
    try:
        values = [_number(p) for p in parts]
    except ValueError:  # "0x" alone, or "08" (not octal): not an address, refuse as malformed
        raise UnsafeCallbackURLError(f"host {host!r} is a malformed IPv4 address") from None
    *head, last = values
    if any(v > 255 for v in head) or last >= 256 ** (4 - len(head)):
        raise UnsafeCallbackURLError(f"host {host!r} is an out-of-range IPv4 address")
    number = last
    for i, value in enumerate(head):
        number += value << (8 * (3 - i))
    return ipaddress.IPv4Address(number)


def parse_host(host: str) -> IPAddress | None:
    """The address a URL host denotes, or None when it is a name to resolve.

    Raises :class:`UnsafeCallbackURLError` for an IPv4 address spelled any way
    but the canonical dotted decimal (decimal, octal, hex, shortened forms).
    """
    host = host.lower().rstrip(".")
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    spelled = _ipv4_from_spelling(host)
    if spelled is not None:
        raise UnsafeCallbackURLError(
            f"host {host!r} is the IPv4 address {spelled} in a non-standard spelling "
            "(decimal, octal or hex); use the dotted-decimal form"
        )
    return None


def _ipv4_reason(ip: ipaddress.IPv4Address) -> str | None:
    if ip in _THIS_NETWORK:
        return "unspecified address"
    if ip.is_loopback:
        return "loopback address"
    if ip.is_link_local:
        return "link-local address (incl. cloud metadata)"
    if ip in _CGNAT:
        return "carrier-grade NAT address"
    if ip.is_multicast:
        return "multicast address"
    if ip.is_reserved or ip == ipaddress.IPv4Address("255.255.255.255"):
        return "reserved address"
    if ip.is_private:
        return "private address"
    if not ip.is_global:
        return "non-global address"
    return None


def blocked_reason(ip: IPAddress) -> str | None:
    """Why the guard refuses ``ip`` (e.g. ``"loopback address"``), or None if it is public."""
    if isinstance(ip, ipaddress.IPv4Address):
        return _ipv4_reason(ip)
    if ip.is_unspecified:
        return "unspecified address"
    if ip.is_loopback:
        return "loopback address"
    if ip.ipv4_mapped is not None:
        return f"IPv4-mapped IPv6 address (of {ip.ipv4_mapped})"
    if int(ip) >> 32 == 0:
        return f"IPv4-compatible IPv6 address (of {ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)})"
    if ip in _NAT64:
        embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        inner = _ipv4_reason(embedded)
        return f"NAT64 embedding of a {inner} ({embedded})" if inner else None
    if ip in _6TO4:
        embedded = ipaddress.IPv4Address((int(ip) >> 80) & 0xFFFFFFFF)
        inner = _ipv4_reason(embedded)
        return f"6to4 embedding of a {inner} ({embedded})" if inner else None
    if ip in _NAT64_LOCAL:
        return "local-use NAT64 address"
    if ip.is_link_local:
        return "link-local address"
    if ip in _SITE_LOCAL:
        return "site-local address"
    if ip in _ULA:
        return "unique local address"
    if ip.is_multicast:
        return "multicast address"
    if ip.is_reserved:
        return "reserved address"
    if ip.is_private or not ip.is_global:
        return "non-global address"
    return None


def _allowed_by_settings(host: str, ip: IPAddress | None, allow: Allowance) -> bool:
    if allow.private:
        return True
    for entry in allow.hosts:
        try:
            network = ipaddress.ip_network(entry, strict=False)
        except ValueError:
            if host == entry.lower().rstrip("."):
                return True
            continue
        if ip is not None and ip.version == network.version and ip in network:
            return True
    return False


def _check_address(host: str, ip: IPAddress, allow: Allowance, *, resolved: bool) -> None:
    if _allowed_by_settings(host, ip, allow):
        return
    reason = blocked_reason(ip)
    if reason is None:
        return
    where = f"host {host!r} resolves to {ip}" if resolved else f"address {ip}"
    raise UnsafeCallbackURLError(
        f"{where}, a {reason} (set {allow.setting}_ALLOW_HOSTS or {allow.setting}_ALLOW_PRIVATE "
        "to allow it)"
    )


def _split(url: str) -> tuple[str, str, int, str]:
    """``(scheme, host, port, path)``; raises :class:`UnsafeCallbackURLError` if malformed."""
    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in url):
        # No HTTP client sends these as they are: refuse now, not after eight attempts.
        raise UnsafeCallbackURLError("the URL has a space or a control character (encode it)")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UnsafeCallbackURLError(f"malformed URL ({exc})") from None
    if port == 0:
        raise UnsafeCallbackURLError("port 0 is not a port one can connect to")
    if parts.scheme not in ("http", "https"):
        raise UnsafeCallbackURLError(f"scheme {parts.scheme!r} is not http or https")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise UnsafeCallbackURLError("credentials in the URL")
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise UnsafeCallbackURLError("no host")
    if any(c.isspace() or c in "\\%" for c in host) and ":" not in host:
        raise UnsafeCallbackURLError(f"host {host!r} has characters a host name cannot have")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return parts.scheme, host, port or (443 if parts.scheme == "https" else 80), path


def check_callback_url(url: str, settings: Settings) -> None:
    """Refuse a callback URL by its form and literal address (no DNS; enqueue time).

    Raises :class:`UnsafeCallbackURLError` with the reason.
    """
    check_url(url, Allowance.callbacks(settings))


def check_url(url: str, allow: Allowance) -> None:
    """:func:`check_callback_url` under any :class:`Allowance`."""
    _, host, _, _ = _split(url)
    ip = parse_host(host)
    if ip is not None:
        _check_address(host, ip, allow, resolved=False)
    elif host in _LOCAL_NAMES or host.endswith(".localhost"):
        # Always loopback (RFC 6761); refuse early rather than at the first delivery.
        _check_address(host, ipaddress.IPv4Address("127.0.0.1"), allow, resolved=True)


def resolve_callback_url(url: str, settings: Settings, resolver: Resolver | None = None) -> Target:
    """Check a callback URL, resolve its host and check every address (delivery time).

    Returns the :class:`Target` to connect to: the first checked address, so
    the connection goes exactly where the check looked. Raises
    :class:`UnsafeCallbackURLError` when refused; ``OSError`` (e.g.
    ``socket.gaierror``) when the name does not resolve.
    """
    return resolve_url(url, Allowance.callbacks(settings), resolver)


def resolve_url(url: str, allow: Allowance, resolver: Resolver | None = None) -> Target:
    """:func:`resolve_callback_url` under any :class:`Allowance`."""
    check_url(url, allow)
    scheme, host, port, path = _split(url)
    literal = parse_host(host)
    if literal is not None:
        return Target(scheme, host, port, path, str(literal))
    addresses = list((resolver or system_resolver)(host, port))
    if not addresses:
        raise socket.gaierror(f"{host} resolved to no address")
    parsed = [ipaddress.ip_address(a.split("%", 1)[0]) for a in addresses]
    # Every address must pass, not just the one we pick: a name that resolves to
    # both a public and an internal address is an attack, not a misconfiguration.
    for ip in parsed:
        _check_address(host, ip, allow, resolved=True)
    return Target(scheme, host, port, path, str(parsed[0]))
