"""How a test server is configured: defaults, environment, overrides."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Literal, Optional

import attr

from aiosmtpd.smtp import DATA_SIZE_DEFAULT
from aiosmtpd.testing._faults import Fault

TLSMode = Literal["off", "starttls", "implicit"]
TLS_MODES: tuple[TLSMode, ...] = ("off", "starttls", "implicit")

#: Environment variables read by :meth:`ServerConfig.from_env`.
ENV = {
    "host": "AIOSMTPD_TEST_HOST",
    "port": "AIOSMTPD_TEST_PORT",
    "tls": "AIOSMTPD_TEST_TLS",
    "login": "AIOSMTPD_TEST_LOGIN",
    "password": "AIOSMTPD_TEST_PASSWORD",
    "auth_required": "AIOSMTPD_TEST_AUTH_REQUIRED",
    "require_starttls": "AIOSMTPD_TEST_REQUIRE_STARTTLS",
    "data_size_limit": "AIOSMTPD_TEST_SIZE_LIMIT",
}

DEFAULT_LOGIN = "user"
DEFAULT_PASSWORD = "password"


def _tls_mode(value: Any) -> TLSMode:
    if value is True:
        return "starttls"
    if value is False or value is None:
        return "off"
    text = str(value).lower()
    aliases = {"": "off", "none": "off", "no": "off", "false": "off", "0": "off",
               "ssl": "implicit", "smtps": "implicit", "tls": "implicit"}
    text = aliases.get(text, text)
    # Not "if text in TLS_MODES": the mypy releases for Python 3.9 do not
    # narrow that to TLSMode.
    for mode in TLS_MODES:
        if text == mode:
            return mode
    raise ValueError(f"tls must be one of {', '.join(TLS_MODES)}, not {value!r}")


def _faults(value: Iterable[Fault]) -> tuple[Fault, ...]:
    faults = tuple(value)
    for fault in faults:
        if not isinstance(fault, Fault):
            raise TypeError(f"faults must be Fault objects, got {type(fault).__name__}")
    return faults


def _credentials(value: Optional[Mapping[str, str]]) -> dict[str, str]:
    return dict(value or {})


def _size_limit(value: Any) -> Optional[int]:
    if value is None:
        return None
    limit = int(value)
    return limit if limit > 0 else None


def _flag(text: str) -> bool:
    return text.strip().lower() in ("1", "true", "yes", "on")


@attr.s(frozen=True, auto_attribs=True, kw_only=True)
class ServerConfig:
    """Everything a test server can be told; every field has a default."""

    #: The address to listen on.
    host: str = "127.0.0.1"
    #: 0 lets the system pick a free port (the only xdist-safe choice).
    port: int = attr.ib(default=0, converter=int)
    #: ``"off"``, ``"starttls"`` or ``"implicit"`` (SMTPS).
    tls: TLSMode = attr.ib(default="off", converter=_tls_mode)
    #: Refuse mail commands until the client has done STARTTLS.
    require_starttls: bool = False
    #: ``{login: password}``; non-empty turns AUTH (PLAIN and LOGIN) on.
    credentials: dict[str, str] = attr.ib(factory=dict, converter=_credentials)
    #: Refuse mail commands until the client has authenticated.
    auth_required: bool = False
    #: Offer AUTH only over TLS; ``None``: only if TLS is on.
    auth_require_tls: Optional[bool] = None
    #: The SIZE limit in bytes; ``None`` for no limit.
    data_size_limit: Optional[int] = attr.ib(default=DATA_SIZE_DEFAULT, converter=_size_limit)
    enable_SMTPUTF8: bool = True
    #: The host name in the greeting and the EHLO reply.
    server_hostname: str = "localhost"
    #: Idle timeout of a connection, in seconds.
    timeout: float = 300.0
    faults: tuple[Fault, ...] = attr.ib(default=(), converter=_faults)

    def evolve(self, **changes: Any) -> ServerConfig:
        """A copy with some fields changed; unknown names are an error."""
        known = {a.name for a in attr.fields(ServerConfig)}
        unknown = sorted(set(changes) - known - {"login", "password"})
        if unknown:
            raise TypeError(
                f"unknown smtpd option(s): {', '.join(unknown)}; "
                f"known: {', '.join(sorted(known | {'login', 'password'}))}"
            )
        if "login" in changes or "password" in changes:
            # A convenience for the common single-account case.
            login = changes.pop("login", None) or DEFAULT_LOGIN
            password = changes.pop("password", None) or DEFAULT_PASSWORD
            changes["credentials"] = {login: password}
        return attr.evolve(self, **changes)

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> ServerConfig:
        """The defaults, overridden by the ``AIOSMTPD_TEST_*`` variables."""
        changes: dict[str, Any] = {}
        for field in ("host", "tls"):
            if ENV[field] in environ:
                changes[field] = environ[ENV[field]]
        if ENV["port"] in environ:
            changes["port"] = int(environ[ENV["port"]])
        if ENV["data_size_limit"] in environ:
            changes["data_size_limit"] = int(environ[ENV["data_size_limit"]])
        for field in ("auth_required", "require_starttls"):
            if ENV[field] in environ:
                changes[field] = _flag(environ[ENV[field]])
        if ENV["login"] in environ or ENV["password"] in environ:
            changes["login"] = environ.get(ENV["login"])
            changes["password"] = environ.get(ENV["password"])
        return cls().evolve(**changes)

    @property
    def auth_enabled(self) -> bool:
        return bool(self.credentials)

    @property
    def effective_auth_require_tls(self) -> bool:
        if self.auth_require_tls is not None:
            return self.auth_require_tls
        return self.tls != "off"
