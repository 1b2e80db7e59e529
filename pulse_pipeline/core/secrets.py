"""Secret masking: the one function that hides passwords, tokens and keys at every boundary.

CLI output, logs, Dagster event logs, run tags, materialization metadata, MLflow params and error
messages all go through `mask` before they leave the process. In any surrounding text it masks:

- URL passwords, `scheme://user:***@host`: the LAST `@` of the authority separates the userinfo
  from the host, so a password holding an unescaped `@`, `:`, `/`, `?` or `#` is masked whole;
- secret query parameters, `?password=***`, `&X-Amz-Signature=***`, `&token=***`, ...;
- libpq `key=value` strings, `password=***`, `password='***'`, `sslpassword=***`;
- assignments to secret-looking names (`PULSE_S3_SECRET_KEY=***`, `"api_key": "***"`,
  `Authorization: Bearer ***`), a bare `Bearer <token>`, and PEM private-key blocks;
- every literal given in `known` (configured secrets), longest first; a known URL keeps only its
  scheme and host.

Standard library only; the patterns are compiled on first use, so importing this stays cheap.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from functools import lru_cache
from itertools import pairwise
from urllib.parse import quote, unquote, unquote_plus

__all__ = ["MASK", "SecretsFilter", "mask", "quote_password", "url_secrets"]

MASK = "***"

# -- secret names ---------------------------------------------------------------------------------

# Identifier parts (after splitting on `_`, `-`, `.` and camelCase) that make a name secret.
_SECRET_WORDS = frozenset(
    {
        "password",
        "passwords",
        "passwd",
        "pwd",
        "passphrase",
        "secret",
        "secrets",
        "token",
        "apikey",
        "secretkey",
        "accesskey",
        "privatekey",
        "credential",
        "credentials",
        "authorization",
    }
)
# A part ending like this is secret too: PGPASSWORD, sslpassword, clientsecret, authtoken.
_SECRET_SUFFIXES = ("password", "passwd", "secret", "token", "apikey", "secretkey", "accesskey")
_SECRET_PAIRS = frozenset({("api", "key"), ("secret", "key"), ("access", "key"), ("private", "key")})
# A secret word followed only by these parts names something about a secret, not the secret itself
# (token_count, password_file, secret_name, access_token_url).
_NOT_SECRET_TAIL = frozenset(
    {
        "arn",
        "backend",
        "budget",
        "client",
        "count",
        "counts",
        "dir",
        "enabled",
        "endpoint",
        "env",
        "expiration",
        "expires",
        "expiry",
        "field",
        "file",
        "files",
        "filter",
        "ids",
        "idx",
        "index",
        "kind",
        "accuracy",
        "f1",
        "per",
        "rate",
        "second",
        "seconds",
        "total",
        "usage",
        "len",
        "length",
        "limit",
        "manager",
        "max",
        "min",
        "name",
        "names",
        "num",
        "path",
        "paths",
        "policy",
        "provider",
        "required",
        "rotation",
        "size",
        "store",
        "ttl",
        "type",
        "types",
        "uri",
        "url",
        "var",
        "version",
    }
)
# Tokenizer vocabulary entries (pad_token, eos_token_id), not credentials.
_TOKENIZER_TOKENS = frozenset({"additional", "bos", "cls", "eos", "mask", "pad", "sep", "special", "unk"})
_EXTRA_SECRET_NAMES = frozenset({"x-amz-signature", "x-goog-signature"})
# Query parameter names masked although some are too generic for assignments in free text (`key`).
_QUERY_SECRET_NAMES = frozenset(
    {
        "password",
        "sslpassword",
        "token",
        "access_token",
        "refresh_token",
        "id_token",
        "api_key",
        "apikey",
        "api-key",
        "secret",
        "client_secret",
        "key",
        "sig",
        "signature",
        "x-amz-signature",
        "x-amz-credential",
        "x-amz-security-token",
        "x-goog-signature",
        "x-goog-credential",
        "auth",
        "authorization",
    }
)

# -- patterns (source text; compiled by `_rx` on first use) ---------------------------------------

_SCHEME = r"(?<![A-Za-z0-9+.\-])[A-Za-z][A-Za-z0-9+.\-]*://"
# An unquoted value: up to whitespace; a quote that looks like a closing one (followed by
# whitespace, punctuation or the end) ends it too, and trailing punctuation is not part of it.
_UNQUOTED = r"""(?:[^\s"'`]|["'`](?=[^\s,;:})\]]))*[^\s"'`,;:.)\]}>]"""
_AUTH_SCHEME = r"(?:[Bb]earer|BEARER|[Bb]asic|BASIC|[Tt]oken|[Dd]igest|[Nn]egotiate)[ \t]+"


class _Patterns:
    """The compiled patterns, built once on first use (`_rx`), so that importing stays cheap."""

    def __init__(self) -> None:
        # A URL in free text: scheme, `://`, and all up to whitespace, a quote, `<`, `>`, `)` or `,`.
        self.url = re.compile(_SCHEME + r"""[^\s"'`<>),]*""")
        self.scheme = re.compile(_SCHEME)
        self.not_user = re.compile(r"[/?#]")
        self.host = re.compile(r"[^/?#]*")
        # `?name=value` / `&name=value` (also HTML-escaped `&amp;name=value`).
        self.query = re.compile(r"""([?&](?:amp;)?)([A-Za-z0-9_.\-]+)=([^&#\s"'`<>),]+)""")
        # `name=value`, `name: value`, `"name": "value"`, `'name': 'value'`, `\"name\": \"value\"`,
        # libpq `password='s3 cret'`; not a query parameter (that is `query`'s), not `==` or `::`.
        # The value sits in a lookahead, so that a match consumes only the name: assignments nested
        # in the value of a harmless one (`"dsn": "host=db password=x"`) are still found.
        self.assign = re.compile(
            r"""(?<![\w.\-?&])"""
            r"""(?P<name>(?P<q>\\?["']?)-{0,2}[A-Za-z_][\w.\-]*(?P=q))"""
            r"""(?P<sep>[ \t]*[:=](?![=:])[ \t]*)"""
            r"""(?=(?P<scheme>""" + _AUTH_SCHEME + r""")?"""
            r"""(?P<value>"(?:[^"\\\n]|\\.)*\""""
            r"""|'(?:[^'\\\n]|\\.)*'"""
            r"""|\\"(?:[^"\\\n]|\\\\.)*\\\""""
            r"""|""" + _UNQUOTED + r"""))"""
        )
        self.auth_scheme = re.compile(_AUTH_SCHEME)
        # `Bearer <token>` anywhere; the token must look like one (a digit or one of `._~+/=-`, or
        # 16+ letters), so that prose ("the bearer token") is left alone.
        self.bearer = re.compile(
            r"(?<![\w\-])(?P<word>[Bb]earer|BEARER)(?P<space>[ \t]+)"
            r"(?=[A-Za-z0-9\-._~+/]*[0-9._~+/=\-]|[A-Za-z]{16})"
            r"(?P<value>" + _UNQUOTED + r")"
        )
        self.pem = re.compile(
            r"(-----BEGIN (?P<kind>[A-Z0-9 ]*PRIVATE KEY)-----)(?P<body>.*?)(-----END (?P=kind)-----)",
            re.DOTALL,
        )
        self.secretish = re.compile(r"pass|pwd|secret|token|key|credential|authoriz|signature", re.IGNORECASE)
        self.camel = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
        self.non_alnum = re.compile(r"[^A-Za-z0-9]+")
        self.hex_escape = re.compile(r"%[0-9A-Fa-f]{2}")
        self.backslash_escape = re.compile(r"\\(.)")
        # What makes a password split differently under the usual first-`@` / first-`/` parsers.
        self.needs_quoting = re.compile(r"[@/?#\[\]\s\x00-\x1f\x7f]|%(?![0-9A-Fa-f]{2})")


@lru_cache(maxsize=1)
def _rx() -> _Patterns:
    return _Patterns()


# Characters a password may keep in a URL's userinfo: unreserved and sub-delims (RFC 3986).
_USERINFO_SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~!$&'()*+,;=")


@lru_cache(maxsize=4096)
def _is_secret_name(name: str) -> bool:
    """True when the identifier `name` (any case; `_`, `-`, `.` or camelCase parts) names a secret."""
    name = name.strip("\\\"'")
    if name.lower() in _EXTRA_SECRET_NAMES:
        return True
    rx = _rx()
    parts = [p for p in rx.non_alnum.split(rx.camel.sub("_", name).lower()) if p]
    for i, part in enumerate(parts):
        if part in _SECRET_WORDS or part.endswith(_SECRET_SUFFIXES):
            end = i + 1
        elif i + 1 < len(parts) and (part, parts[i + 1]) in _SECRET_PAIRS:
            end = i + 2
        else:
            continue
        if part == "token" and i > 0 and parts[i - 1] in _TOKENIZER_TOKENS:
            continue
        tail = parts[end:]
        if not tail or any(p not in _NOT_SECRET_TAIL for p in tail):
            return True
    return False


def _is_secret_query_name(name: str) -> bool:
    return name.lower() in _QUERY_SECRET_NAMES or _is_secret_name(name)


# -- URLs -----------------------------------------------------------------------------------------


def _split_userinfo(rest: str) -> tuple[str, str, str] | None:
    """(user, password, what follows the `@`) of `rest` (the text after `scheme://`), by the last-`@`
    rule; None when there is no `user:password@` (no `@`, no `:`, or a "user" that is a path)."""
    at = rest.rfind("@")
    if at < 0:
        return None
    userinfo = rest[:at]
    colon = userinfo.find(":")
    if colon < 0:
        return None
    user = userinfo[:colon]
    if _rx().not_user.search(user):
        return None
    return user, userinfo[colon + 1 :], rest[at + 1 :]


def _mask_one_url(url: str) -> str:
    head = _rx().scheme.match(url)
    split = _split_userinfo(url[head.end() :]) if head else None
    if head is None or split is None:
        return url
    user, password, after = split
    if not password or password == MASK:
        return url
    return f"{url[: head.end()]}{user}:{MASK}@{after}"


def _mask_url_run(match: re.Match[str]) -> str:
    run = match.group()
    starts = [m.start() for m in _rx().scheme.finditer(run)]
    if len(starts) <= 1:
        return _mask_one_url(run)
    # Several URLs glued together (`redis://...;postgresql://...`): each has its own userinfo.
    return "".join(_mask_one_url(run[a:b]) for a, b in pairwise([0, *starts[1:], len(run)]))


def _known_url_replacement(url: str) -> str:
    """A known URL as shown: scheme and host kept, the rest (user, password, path, query) masked."""
    head = _rx().scheme.match(url)
    if head is None:
        return MASK
    rest = url[head.end() :]
    split = _split_userinfo(rest)
    after = split[2] if split else rest
    host_match = _rx().host.match(after)
    host = host_match.group() if host_match else ""
    return f"{url[: head.end()]}{host}/{MASK}" if host else f"{url[: head.end()]}{MASK}"


# -- the substitutions ----------------------------------------------------------------------------


def _mask_query(m: re.Match[str]) -> str:
    prefix, name, value = m.groups()
    if value == MASK or not _is_secret_query_name(name):
        return m.group()
    return f"{prefix}{name}={MASK}"


def _masked_value(name: str, scheme: str, value: str) -> str:
    """What replaces `scheme` + `value` assigned to the secret `name` (quotes are kept)."""
    # `Authorization: Bearer abc` keeps its scheme word; for any other name it is part of the secret.
    is_authorization = "authoriz" in name.lower()
    if not is_authorization:
        scheme = ""
    for quote_mark in ('\\"', '"', "'"):
        n = len(quote_mark)
        if len(value) >= 2 * n and value.startswith(quote_mark) and value.endswith(quote_mark):
            inner_scheme = _rx().auth_scheme.match(value[n:-n]) if is_authorization else None
            kept = inner_scheme.group() if inner_scheme else ""
            return f"{scheme}{quote_mark}{kept}{MASK}{quote_mark}"
    return f"{scheme}{MASK}"


# A figure or a JSON literal is no credential (token_f1: 0.83, tokens_per_second: 412.5, api_key: null).
_NOT_A_SECRET_VALUE = re.compile(r"""-?\d+\.\d+(?:[eE][-+]?\d+)?|true|false|null|None|NaN""")


def _mask_assignments(text: str) -> str:
    out: list[str] = []
    pos = 0
    for m in _rx().assign.finditer(text):
        if m.start() < pos:  # inside a value masked already
            continue
        name = m.group("name")
        if not _is_secret_name(name) or _NOT_A_SECRET_VALUE.fullmatch(m.group("value")):
            continue
        out += [text[pos : m.end()], _masked_value(name, m.group("scheme") or "", m.group("value"))]
        pos = m.end("value")
    if not out:
        return text
    out.append(text[pos:])
    return "".join(out)


def _mask_bearer(m: re.Match[str]) -> str:
    return f"{m.group('word')}{m.group('space')}{MASK}"


def _mask_pem(m: re.Match[str]) -> str:
    return f"{m.group(1)}{MASK}{m.group(4)}"


# -- known literals -------------------------------------------------------------------------------


def _known_items(known: object) -> tuple[str, ...]:
    """`known` as a tuple of strings; one string or SecretStr counts as one item, not as characters."""
    if known is None:
        return ()
    if isinstance(known, str | bytes) or hasattr(known, "get_secret_value"):
        known = (known,)
    items: list[str] = []
    for item in known:  # type: ignore[attr-defined]
        if hasattr(item, "get_secret_value"):  # pydantic SecretStr
            item = item.get_secret_value()
        if isinstance(item, bytes):
            item = item.decode("utf-8", "replace")
        if isinstance(item, str) and item:
            items.append(item)
    return tuple(items)


def _percent_encoded(value: str) -> str:
    try:
        return quote(value, safe="")
    except UnicodeError:
        return value


@lru_cache(maxsize=256)
def _replacements(known: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    """(literal, replacement) pairs for `known`, longest literal first; shorter than 4 is ignored."""
    pairs: dict[str, str] = {}

    def add(literal: str, replacement: str = MASK) -> None:
        if len(literal) >= 4 and MASK not in literal and literal not in pairs:
            pairs[literal] = replacement

    for item in known:
        stripped = item.strip()
        if _rx().scheme.match(stripped):
            add(stripped, _known_url_replacement(stripped))
            for part in url_secrets(stripped):  # its password may show up alone
                add(part)
        else:
            for variant in (item, stripped, _percent_encoded(stripped)):  # also as it appears in a URL
                add(variant)
    return tuple(sorted(pairs.items(), key=lambda kv: (-len(kv[0]), kv[0])))


# -- the API --------------------------------------------------------------------------------------


def _as_text(value: object) -> str:
    if isinstance(value, str):
        return value
    try:
        return str(value)
    except Exception:
        try:
            return repr(value)
        except Exception:
            return f"<unprintable {type(value).__name__}>"


def mask(text: str, known: Iterable[str] = ()) -> str:
    """`text` with every secret replaced by MASK."""
    try:
        text = _as_text(text)
        rx = _rx()
        for literal, replacement in _replacements(_known_items(known)):
            if literal in text:
                text = text.replace(literal, replacement)
        if "://" in text:
            text = rx.url.sub(_mask_url_run, text)
        if "=" in text:
            text = rx.query.sub(_mask_query, text)
        if rx.secretish.search(text):
            text = _mask_assignments(text)
        if "earer" in text or "EARER" in text:
            text = rx.bearer.sub(_mask_bearer, text)
        if "PRIVATE KEY-----" in text:
            text = rx.pem.sub(_mask_pem, text)
        return text
    except Exception:  # masking never breaks the caller, and never falls back to the raw text
        return MASK


def url_secrets(url: str) -> list[str]:
    """The secret parts of one URL or libpq DSN (the password, secret query values), for `known`:
    so a password also gets masked where it shows up alone (e.g. a driver's error message)."""
    found: list[str] = []
    try:
        rx = _rx()
        text = _as_text(url).strip()
        head = rx.scheme.match(text)
        if head is not None:
            rest = text[head.end() :]
            split = _split_userinfo(rest)
            if split is not None:
                found += [split[1], unquote(split[1])]
            after = split[2] if split is not None else rest
            for pair in after.partition("?")[2].partition("#")[0].split("&"):
                name, eq, value = pair.partition("=")
                if eq and value and _is_secret_query_name(name):
                    found += [value, unquote_plus(value)]
        else:  # a libpq DSN, or `NAME=value` text
            for m in rx.assign.finditer(text):
                if _is_secret_name(m.group("name")):
                    value = m.group("value")
                    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
                        found += [value, rx.backslash_escape.sub(r"\1", value[1:-1])]
                    else:
                        found.append(value)
    except Exception:
        pass
    return [s for s in dict.fromkeys(found) if s and s != MASK]


def _encode_password(password: str) -> str:
    hex_escape = _rx().hex_escape
    out: list[str] = []
    i = 0
    while i < len(password):
        if hex_escape.match(password, i):  # already percent-encoded: not encoded twice
            out.append(password[i : i + 3])
            i += 3
            continue
        ch = password[i]
        out.append(ch if ch in _USERINFO_SAFE else quote(ch, safe=""))
        i += 1
    return "".join(out)


def quote_password(url: str) -> str:
    """The URL with its password percent-encoded, so that a password holding '@', ':', '/', '#' or '?'
    parses (the LAST '@' of the authority separates userinfo from the host). A URL that already
    parses the same way, has no password, or is not a URL, is returned unchanged. Already
    percent-encoded passwords are not encoded twice."""
    try:
        head = _rx().scheme.match(url)
        split = _split_userinfo(url[head.end() :]) if head else None
        if head is None or split is None:
            return url
        user, password, after = split
        if not password or not _rx().needs_quoting.search(password):
            return url
        return f"{url[: head.end()]}{user}:{_encode_password(password)}@{after}"
    except Exception:
        return url


class SecretsFilter(logging.Filter):
    """A logging filter that masks record messages (msg % args rendered first) and exception text.

    Attach it to a handler, so that it also sees records propagated from child loggers. The exception
    is rendered once, masked into `exc_text`, and `exc_info` is dropped, so that no formatter can
    render the unmasked traceback again.
    """

    def __init__(self, known: Iterable[str] = ()) -> None:
        super().__init__()
        self.known = _known_items(known)

    def filter(self, record: logging.LogRecord) -> bool:
        """Mask `record` in place; never drops it."""
        try:
            message = record.getMessage()
        except Exception:
            message = _as_text(record.msg)
        record.msg = mask(message, self.known)
        record.args = ()
        if record.exc_info and not record.exc_text:
            try:
                record.exc_text = logging.Formatter().formatException(record.exc_info)
            except Exception:
                record.exc_text = _as_text(record.exc_info[1])
        if record.exc_text:
            record.exc_text = mask(record.exc_text, self.known)
        record.exc_info = None
        if record.stack_info:
            record.stack_info = mask(record.stack_info, self.known)
        return True
