"""Connection strings: checked without ever quoting them, and shown only with passwords hidden.

``redact_dsn`` hides the password in any text (a DSN in every form libpq and redis-py read, an
error message, a log line). ``postgres_dsn_problem`` and ``redis_url_problem`` say what is wrong
with a DSN or URL in words of their own: the drivers' parse errors quote the string, password
included, so their text is only looked at, never passed on.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from psycopg.conninfo import conninfo_to_dict, make_conninfo

__all__ = [
    "database_of",
    "postgres_dsn_problem",
    "redact_dsn",
    "redact_url",
    "redis_url_problem",
    "with_database",
]


# URL userinfo. libpq ends it at the first "@" before any "/", urllib at the last "@" of the
# netloc; running to the last "@" of the whitespace-free token covers both, and a password
# with an unescaped "@", "/", "?" or "#" too. The price: a rare URL with "@" in its path after
# a "host:port" is over-redacted.
_URL_USERINFO = re.compile(r"://[^/@:]*:")
_WHITESPACE = re.compile(r"(\s+)")
# libpq ``password = value`` and ``PGPASSWORD=value`` (any key ending in "password"). The
# value is libpq's (quoted with backslash escapes, or up to whitespace) or a shell word made
# of quoted parts; an unterminated leading quote runs to the end of the text, and a quote
# that is never closed later on is taken as a plain character.
_QUOTED = r"'(?:\\.|[^'\\])*'" + r'|"(?:\\.|[^"\\])*"'
_KV_PASSWORD = re.compile(
    r"(?<![\w?&])(?P<head>\w*password\s*=\s*)"
    rf"(?P<secret>(?:{_QUOTED}|'(?:\\.|[^'\\])*|\\.|[^\s\\])(?:{_QUOTED}|\\.|[^\s\\])*)",
    re.IGNORECASE | re.DOTALL,
)
# ``?password=`` / ``&sslpassword=`` in a URL query (PostgreSQL and Redis URLs alike).
_QUERY_PASSWORD = re.compile(r"(?P<head>[?&]\w*password=)(?P<secret>[^\s&]+)", re.IGNORECASE)
# A mapping's repr or JSON: ``'password': 'value'``, ``"sslpassword": "value"``.
_MAPPING_PASSWORD = re.compile(
    rf"(?P<head>(?P<q>['\"])\w*password(?P=q)\s*:\s*)(?P<secret>{_QUOTED})",
    re.IGNORECASE | re.DOTALL,
)


def _mask(match: re.Match[str]) -> str:
    return f"{match['head']}***"


def _mask_quoted(match: re.Match[str]) -> str:
    quote = match["secret"][0]
    return f"{match['head']}{quote}***{quote}"


def redact_dsn(text: str) -> str:
    """Return ``text`` with every password in it replaced by ``***``, safe for logs and errors.

    Covers URL user info (``postgresql://app:pw@host``, ``redis://:pw@host``,
    ``unix://:pw@/path``), ``password=`` / ``sslpassword=`` in URL queries and libpq
    ``key=value`` strings (quoted or not), ``PGPASSWORD=...`` assignments and quoted
    ``"password": "..."`` mappings, anywhere in ``text``. Text without a password is returned
    unchanged; this never raises.
    """
    if not isinstance(text, str):  # a caller's mistake must not turn into a leak or a crash
        text = str(text)
    text = _redact_userinfo(text)
    # Key=value before query parameters: a libpq value may itself hold "?password=". (An
    # empty libpq value, '', hides nothing.)
    text = _KV_PASSWORD.sub(lambda m: m[0] if m["secret"] == "''" else _mask(m), text)
    text = _QUERY_PASSWORD.sub(_mask, text)
    return _MAPPING_PASSWORD.sub(_mask_quoted, text)


def _redact_userinfo(text: str) -> str:
    # Token by token rather than one regex: a regex would backtrack from every "://" to the
    # token's last "@", quadratic on a long token.
    parts = _WHITESPACE.split(text)
    for i in range(0, len(parts), 2):  # the odd items are the whitespace between tokens
        token = parts[i]
        last_at = token.rfind("@")
        head = _URL_USERINFO.search(token, 0, last_at) if last_at > 0 else None
        if head is not None and head.end() < last_at:
            parts[i] = f"{token[: head.end()]}***{token[last_at:]}"
    return "".join(parts)


def redact_url(url: str) -> str:
    """Return ``url`` with any password replaced by ``***`` (same as :func:`redact_dsn`)."""
    return redact_dsn(url)


_PG_DSN_FORMS = (
    "use postgresql://user:password@host:port/dbname or key=value pairs "
    "(host=... port=... dbname=... user=... password=...)"
)
_URL_SCHEME = re.compile(r"\s*(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*)://")
_PORT = re.compile(r"\s*[0-9]{1,5}\s*")
# libpq's own wording, by which a parse error is told apart (its text quotes the value).
_PG_PARSE_PROBLEMS = (  # (first match wins: some of these messages contain others' words)
    ("unexpected spaces", "it has spaces in the URL; percent-encode them as %20"),
    ("forbidden value %00", "it has %00 (a NUL character) in the URL"),
    (
        "percent-encoded",
        "it has an invalid percent-escape (% must be followed by two hex digits; write a "
        "literal % as %25)",
    ),
    (
        "invalid connection option",
        "it uses an unknown connection keyword (see libpq's list of connection parameters)",
    ),
    (
        "invalid URI query parameter",
        "it uses an unknown connection keyword in the query (see libpq's list of connection "
        "parameters)",
    ),
    ("unterminated quoted string", "it has an unterminated quoted value"),
)


def with_database(dsn: str, database: str) -> str:
    """``dsn`` naming ``database`` instead of its own (a valid DSN in, a valid DSN out)."""
    params = conninfo_to_dict(dsn)
    params["dbname"] = database
    return make_conninfo("", **params)


def database_of(dsn: str) -> str:
    """The database ``dsn`` names (``postgres`` when it names none)."""
    return str(conninfo_to_dict(dsn).get("dbname") or "postgres")


def postgres_dsn_problem(dsn: str) -> str | None:
    """What is wrong with a PostgreSQL DSN, in words that never quote it; None if fine."""
    try:
        return _check_postgres_dsn(dsn)
    except Exception:  # noqa: BLE001 - an unforeseen failure must not carry the DSN out
        return f"the DSN could not be checked; {_PG_DSN_FORMS}"


def _check_postgres_dsn(dsn: str) -> str | None:
    if not dsn.strip():
        return f"the DSN is empty; leave it unset for the embedded server, or {_PG_DSN_FORMS}"
    if "\x00" in dsn:
        # libpq would silently cut the string there.
        return f"the DSN contains a NUL character; {_PG_DSN_FORMS}"
    url = _URL_SCHEME.match(dsn)
    if url is not None and url["scheme"] not in ("postgresql", "postgres"):
        return (
            "the DSN's URL scheme is not supported (only postgresql:// and postgres://, in "
            "lower case; SQLAlchemy-style schemes such as postgresql+psycopg:// are not); "
            f"{_PG_DSN_FORMS}"
        )
    from psycopg.conninfo import conninfo_to_dict

    problem = None
    try:
        params = conninfo_to_dict(dsn)
    except Exception as exc:  # noqa: BLE001 - any parse failure means "malformed"
        # Only libpq's wording is looked at, never passed on: its text quotes the DSN or a
        # piece of it. (The message is built outside this block so no exception context
        # keeps that text alive.)
        reason = str(exc)
        problem = next(
            (why for phrase, why in _PG_PARSE_PROBLEMS if phrase in reason),
            "it is not a valid connection string",
        )
        params = {}
    if problem is not None:
        return f"the DSN cannot be parsed: {problem}; {_PG_DSN_FORMS}"

    # libpq accepts these, but then a password with an unescaped "@" or "/" lands in the
    # host, port or database name, which its connection errors quote.
    if url is not None:
        escape = f"percent-encode @ and / in the user name and password (%40, %2F); {_PG_DSN_FORMS}"
        authority_and_path = dsn[url.end() :].split("?", 1)[0]
        userinfo, at, _ = authority_and_path.partition("@")
        if at and ("/" in userinfo or authority_and_path.count("@") > 1):
            return f"the DSN's user name or password part is malformed; {escape}"
    else:
        escape = f"check the host= and port= values; {_PG_DSN_FORMS}"
    if "@" in str(params.get("host", "")):
        return f"the DSN's host contains @; {escape}"
    for port in str(params.get("port", "")).split(","):
        if port.strip() and not (_PORT.fullmatch(port) and 0 < int(port) <= 65535):
            return f"the DSN's port is not a number from 1 to 65535; {escape}"
    return None


_REDIS_URL_FORMS = (
    "use redis://[[user]:password@]host:port/db, rediss://... for TLS, "
    "or unix://[[user]:password@]/path/to/socket"
)


def redis_url_problem(url: str) -> str | None:
    """What is wrong with a Redis URL, in words that never quote it; None if fine."""
    try:
        return _check_redis_url(url)
    except Exception:  # noqa: BLE001 - an unforeseen failure must not carry the URL out
        return f"the URL could not be checked; {_REDIS_URL_FORMS}"


def _check_redis_url(url: str) -> str | None:
    scheme = _URL_SCHEME.match(url)
    if scheme is None or scheme.start("scheme") != 0:
        return f"the URL does not start with a scheme; {_REDIS_URL_FORMS}"
    if scheme["scheme"] not in ("redis", "rediss", "unix"):
        return f"the URL's scheme is not supported (only redis, rediss, unix); {_REDIS_URL_FORMS}"
    if "\x00" in url:
        return f"the URL contains a NUL character; {_REDIS_URL_FORMS}"
    from redis.connection import parse_url

    # redis-py leaves parse_url untyped; this gives it its type.
    parse: Callable[[str], dict[str, Any]] = parse_url
    failed = False
    try:
        parse(url)
    except Exception:  # noqa: BLE001 - any parse failure means "malformed"
        # redis-py's message may quote the port or a query value: it is not passed on.
        failed = True
    if failed:
        return (
            "the URL cannot be parsed (a bad port, host or query value; percent-encode "
            f"special characters in the password); {_REDIS_URL_FORMS}"
        )
    return None
