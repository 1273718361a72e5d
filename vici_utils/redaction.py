"""Keeping secrets out of everything we show or write: `redact(text)` and `redact_url(url)`.

Secrets are the values of the API key variables and of any environment variable whose name looks secret
(api_key, secret, token, password), as they are *now*. Servers can echo them (an answer that quotes the
key, an error that prints it), and a base URL can carry credentials (`https://user:token@host`), so
answers are redacted where they enter the program and URLs wherever they are displayed.

Light on purpose (no third-party imports): the runner and params code can use it too.
"""
from __future__ import annotations

import base64
import os
import re
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

MARK = "[REDACTED]"
KEY_VARS = ("GEMINI_API_KEY", "GOOGLE_API_KEY", "OPENAI_API_KEY")
SECRET_NAME = re.compile(r"(api[_-]?key|secret|token|password)", re.IGNORECASE)
MIN_SECRET_LEN = 8       # shorter values of secret-named variables would blank ordinary words
MIN_KEY_LEN = 4          # the API key variables themselves: always secret, even when short
_USERINFO = re.compile(r"(?<=://)[^/\s@?#]+@")
_SECRET_QUERY = re.compile(r"^(key|sig|signature|auth|.*(api[_-]?key|secret|token|password).*)$", re.IGNORECASE)
SECRET_REF = re.compile(r"\$\{(\w+)\}")  # ${NAME}: a parameter's reference to an environment variable
_remembered: set[str] = set()  # secrets met outside the environment (credentials in a URL), for this process


def secret_values() -> list[str]:
    """The current secret values, longest first (so a secret containing another is replaced whole)."""
    values = {os.environ.get(v, "") for v in KEY_VARS if len(os.environ.get(v, "")) >= MIN_KEY_LEN}
    values |= {value for name, value in os.environ.items() if SECRET_NAME.search(name) and len(value) >= MIN_SECRET_LEN}
    return sorted(values | _remembered, key=len, reverse=True)


def remember_url_credentials(url: str | None) -> None:
    """Treat the credentials of `url` (user:password@) as secrets from now on, in the forms a server could
    echo them: the password, and the HTTP Basic token made from them."""
    parts = urlsplit(url or "")
    if parts.password or parts.username:
        user, password = unquote(parts.username or ""), unquote(parts.password or "")
        basic = base64.b64encode(f"{user}:{password}".encode()).decode()
        _remembered.update(v for v in (password, basic) if len(v) >= MIN_KEY_LEN)


def redact(text: str) -> str:
    """`text` with every current secret value, and any credentials in a URL (`scheme://user:pw@`),
    replaced by [REDACTED]."""
    if not isinstance(text, str) or not text:
        return text
    for value in secret_values():
        text = text.replace(value, MARK)
    return _USERINFO.sub(MARK + "@", text)


def redact_url(url: str | None) -> str | None:
    """A URL fit to display or store: no user:password@, no secret-looking query values, no env secrets."""
    if not url:
        return url
    parts = urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]
    query = urlencode([(k, MARK if _SECRET_QUERY.match(k) else v) for k, v in parse_qsl(parts.query, True)],
                      safe="[]")
    return redact(urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment)))


def expand_secret_refs(text: str | None) -> str | None:
    """Replace each ${NAME} with the environment variable's value at the point of use, and redact that value
    from then on. Parameters keep references to secret-named variables (and every reference in a URL)
    unexpanded, so params.yaml, run.json and the notebooks never hold the value."""
    if not text:
        return text

    def value(m: re.Match) -> str:
        if m.group(1) not in os.environ:
            raise KeyError(f"${{{m.group(1)}}} is not set in the environment")
        found = os.environ[m.group(1)]
        if len(found) >= MIN_KEY_LEN:  # every expanded part of a URL is a secret from now on
            _remembered.add(found)
        return found

    return SECRET_REF.sub(value, text)


def clear_credentials(url: str) -> list[str]:
    """What in `url` is a credential written in clear (not a ${NAME} reference): the password of
    user:password@, and secret-named query values."""
    parts = urlsplit(SECRET_REF.sub("", url))
    found = ["user:password@"] if parts.password else []
    found += [f"?{k}=" for k, v in parse_qsl(parts.query) if v and _SECRET_QUERY.match(k)]
    return found
