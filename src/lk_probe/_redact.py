"""Nothing secret leaves lk_probe: every string that becomes an attribute, an event attribute or a status message
goes through :func:`clean` (attributes through :func:`clean_attributes`).

Removed: URL query strings and fragments, ``user:password@`` in URLs (livekit 1.1.2 prints ``?access_token=…``-free but ``join_request=<b64>``
and ``sid=`` query strings; other builds may print tokens), JWTs anywhere (``eyJ….….…``), ``Bearer …`` and
``Authorization`` values, ``key=value`` / ``key: "value"`` pairs whose key names a secret (token, secret, password,
credential, join_request, signature, …), and any value registered with :func:`add_secret` (the API secret from
``LIVEKIT_API_SECRET`` is registered automatically). Text is cut to :data:`MAX_LEN` characters.
"""

from __future__ import annotations

import math
import os
import re
import threading
from typing import Any

MAX_LEN = 1024

_secrets: set[str] = set()
_secrets_lock = threading.Lock()
_secrets_tuple: tuple[str, ...] = ()

# scheme://anything-without-space?query  -> keep up to the '?'
_URL_QUERY_RE = re.compile(r"([a-zA-Z][a-zA-Z0-9+.-]{0,15}://[^\s?#\"'<>]*)[?#][^\s\"'<>]*")
# user:password@ in a URL (proxy URLs)
_USERINFO_RE = re.compile(r"([a-zA-Z][a-zA-Z0-9+.-]{0,15}://)[^@/\s\"'<>]{1,256}@")
# a JWT: three base64url segments, the first starting with eyJ ('{"')
_JWT_RE = re.compile(r"eyJ[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]{2,}\.?[A-Za-z0-9_-]*")
_BEARER_RE = re.compile(r"(?i)\b(bearer)\s+[A-Za-z0-9._~+/=-]+")
_SECRET_KEYS = (r"access_token|token|join_request|secret|api_secret|password|passwd|pwd|credential|credentials"
                r"|signature|sig|authorization|auth|apikey|api_key|key|sid|ice-pwd|ice-ufrag|username")
# key=value (query-string-like, also a query without its URL)
_KV_RE = re.compile(r"(?i)(" + _SECRET_KEYS + r")=([^&\s\"',;)}\]]+)")
# key: "value" / "key": "value" (Rust Debug and JSON)
_KQ_RE = re.compile(r"(?i)(\"?\b(?:" + _SECRET_KEYS + r")\"?\s*:\s*)\"(?:[^\"\\]|\\.)*\"")
# a bare query string with no URL before it: ?a=b&c=d
_BARE_QUERY_RE = re.compile(r"\?[A-Za-z0-9_.-]{1,64}=[^\s\"'<>]*")


def add_secret(value: str | None) -> None:
    """Register a literal that must never appear in anything lk_probe emits (e.g. an API secret)."""
    global _secrets_tuple
    if not value or len(value) < 6:
        return
    with _secrets_lock:
        _secrets.add(value)
        _secrets_tuple = tuple(sorted(_secrets, key=len, reverse=True))


add_secret(os.environ.get("LIVEKIT_API_SECRET"))


def clean(text: object, max_len: int = MAX_LEN) -> str:
    """Redact and truncate. Never raises for str input; non-str values are ``str()``-ed first."""
    s = text if isinstance(text, str) else str(text)
    # cut before the regexes run (bounded work), leaving room for a secret that straddles the cut to be caught:
    # whatever survives is cut again at the end
    if len(s) > max_len * 4:
        s = s[: max_len * 4]
    for secret in _secrets_tuple:
        if secret in s:
            s = s.replace(secret, "<redacted>")
    if "://" in s:
        s = _URL_QUERY_RE.sub(r"\1", s)
        if "@" in s:
            s = _USERINFO_RE.sub(r"\1<redacted>@", s)
    if "=" in s:
        s = _KV_RE.sub("<redacted>", s)  # the key goes too: "access_token" itself must not appear
        if "?" in s:
            s = _BARE_QUERY_RE.sub("", s)
    if "eyJ" in s:
        s = _JWT_RE.sub("<jwt>", s)
    if ":" in s:
        s = _KQ_RE.sub(lambda m: m.group(1) + '"<redacted>"', s)
    low = s.lower()
    if "bearer" in low:
        s = _BEARER_RE.sub(r"\1 <redacted>", s)
    if len(s) > max_len:
        s = s[: max_len - 1] + "…"
        # a cut can leave the start of a JWT/secret-looking run: redo the JWT pass on the cut text
        if "eyJ" in s:
            s = _JWT_RE.sub("<jwt>", s)
    return s


class Cleaned(dict):  # type: ignore[type-arg]
    """Attributes :func:`clean_attributes` has made: passed on (the Rust bridge to the Recorder), not cleaned again."""


def clean_attributes(attrs: dict[str, Any] | None) -> dict[str, Any]:
    """A copy of ``attrs`` fit to leave the process: every str value cleaned; None values dropped (OTel rejects
    them); infinite and NaN floats dropped (common backends cannot represent them: one shows ``Infinity``, another
    nothing); other scalars passed through; anything else turned into a cleaned string. Attributes it made before
    (:class:`Cleaned`) are copied as they are: each value is redacted once."""
    if not attrs:
        return Cleaned()
    if type(attrs) is Cleaned:
        return Cleaned(attrs)
    out = Cleaned()
    for k, v in attrs.items():
        if v is None:
            continue
        if isinstance(v, str):
            out[k] = clean(v)
        elif isinstance(v, float):
            if math.isfinite(v):
                out[k] = v
        elif isinstance(v, (bool, int)):
            out[k] = v
        elif isinstance(v, (list, tuple)):
            out[k] = [clean(x) if isinstance(x, str) else x for x in v
                      if isinstance(x, (str, bool, int)) or isinstance(x, float) and math.isfinite(x)]
        else:
            out[k] = clean(v)
    return out
