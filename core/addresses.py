"""Which image URLs a trial may fetch: an `http(s)://` image_url whose host resolves to a loopback,
private, link-local (the cloud metadata service, 169.254.169.254, included), multicast, reserved or
unspecified address is refused, unless the job sets `allow_private_image_urls: true`.

A labelled data set is often someone else's file; without this, one line of it makes the training
machine read its cloud credentials from the metadata service, or any service of its private network,
and hand the bytes back as an "image" (through the skipped-image reasons). Every address the name
resolves to is checked, and the fetch follows no redirect (a public URL that redirects to a private
one fails as an image that does not decode). Bucket URLs (s3://, gs://) name a bucket, not a host,
and are not concerned.
"""
from __future__ import annotations

import functools
import ipaddress
import socket
from urllib.parse import urlsplit

SETTING = "allow_private_image_urls"
_WEB = ("http", "https")


class PrivateAddressError(OSError):
    """An image URL refused because of where it points."""


def is_web(url: str) -> bool:
    return url.split("://", 1)[0].lower() in _WEB


def check_public(url: str) -> None:
    """Raise PrivateAddressError when `url` is a web URL whose host is, or resolves to, an address
    that is not public; OSError when its host does not resolve."""
    if not is_web(url):
        return
    parts = urlsplit(url)
    host = parts.hostname
    if not host:
        raise PrivateAddressError(f"{url}: no host name")
    for address in _addresses(host, parts.port or (443 if parts.scheme.lower() == "https" else 80)):
        kind = _not_public(address)
        if kind:
            shown = host if host == address else f"{host} resolves to {address}, which"
            raise PrivateAddressError(f"{shown} is a {kind} address: refused (set {SETTING}: true in the "
                                      "job file to fetch images from such addresses)")


@functools.lru_cache(maxsize=4096)
def _addresses(host: str, port: int) -> tuple[str, ...]:
    """Every address `host` resolves to (one lookup per host and process: images share hosts)."""
    try:
        return (str(ipaddress.ip_address(host.strip("[]"))),)
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise OSError(f"cannot resolve host {host!r}: {exc.strerror}") from None
    return tuple(sorted({info[4][0].split("%", 1)[0] for info in infos}))


def _not_public(text: str) -> str | None:
    address = ipaddress.ip_address(text)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped   # ::ffff:169.254.169.254 is the metadata service too
    for kind in ("loopback", "link_local", "private", "multicast", "reserved", "unspecified"):
        if getattr(address, f"is_{kind}"):
            return kind.replace("_", "-")
    return None
