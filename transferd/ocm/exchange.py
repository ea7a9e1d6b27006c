"""Credentials for reading a share: the bearer secret, or a token exchanged for it.

When a share requires it (``must-exchange-token``), the secret is exchanged at
the sender's ``tokenEndPoint``: first the draft-05 form-encoded request
(``grant_type=authorization_code``), then, if the sender does not understand
it, the v1.1 JSON shape (``grant_type=ocm_authorization_code``).  Tokens are
short-lived (often 300 s) and come without a refresh token, so the
``TokenExchanger`` exchanges again before ``expires_in`` runs out — and,
because the mover asks its ``HeaderProvider`` before every request, a long
copy picks up the fresh token without restarting the file.

``share_headers`` is the workers' hook: the HeaderProvider for a job that came
from a share, or None for any other job.  Neither the secret nor a token is
ever logged or put into an exception message.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping

import aiohttp
from redis.asyncio import Redis

from transferd.endpoint_tokens import bearer_headers
from transferd.errors import AuthError, RetryableError

__all__ = [
    "TokenExchanger",
    "exchange_once",
    "refresh_margin_s",
    "share_headers",
]

log = logging.getLogger(__name__)
HeaderProvider = Callable[[], Awaitable[Mapping[str, str]]]
MAX_EXCHANGERS = 1000


def refresh_margin_s(expires_in_s: float) -> float:
    """How long before expiry to exchange again: a third of the lifetime, at most a minute."""
    return min(60.0, max(0.5, expires_in_s / 3))


async def exchange_once(
    session: aiohttp.ClientSession, token_endpoint: str, client_id: str, secret: str
) -> tuple[str, float]:
    """Exchange ``secret`` once; returns (access token, expires_in seconds)."""
    timeout = aiohttp.ClientTimeout(total=30)
    attempts: list[dict[str, object]] = [
        {"data": {"grant_type": "authorization_code", "client_id": client_id, "code": secret}},
        {"json": {"grant_type": "ocm_authorization_code", "client_id": client_id,
                  "code": secret}},
    ]
    last_status = 0
    for kwargs in attempts:
        try:
            async with session.post(token_endpoint, timeout=timeout, allow_redirects=False,
                                    headers={"Accept": "application/json"},
                                    **kwargs) as resp:  # type: ignore[arg-type]
                last_status = resp.status
                if resp.status in (401, 403):
                    raise AuthError(f"the token endpoint refused the share secret ({resp.status})")
                if resp.status >= 500:
                    raise RetryableError(f"the token endpoint answered {resp.status}")
                if resp.status != 200:
                    continue  # maybe the other request shape
                try:
                    answer = json.loads(await resp.read())
                except ValueError:
                    raise RetryableError("the token endpoint did not answer JSON") from None
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise RetryableError(f"token exchange failed: {type(exc).__name__}") from None
        token = answer.get("access_token") if isinstance(answer, dict) else None
        if not isinstance(token, str) or not token:
            raise AuthError("the token endpoint answered no access_token")
        expires = answer.get("expires_in", 300)
        expires_s = float(expires) if isinstance(expires, int | float) else 300.0
        return token, max(1.0, expires_s)
    raise AuthError(f"the token endpoint refused both request shapes ({last_status})")


class TokenExchanger:
    """Holds the current exchanged token and renews it before it expires."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        token_endpoint: str,
        client_id: str,
        secret: str,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._session = session
        self.token_endpoint = token_endpoint
        self.client_id = client_id
        self._secret = secret
        self._clock = clock
        self._token: str | None = None
        self._renew_at = 0.0
        self._lock = asyncio.Lock()
        self.exchanges = 0

    def __repr__(self) -> str:
        return f"TokenExchanger({self.token_endpoint!r}, exchanges={self.exchanges})"

    async def token(self) -> str:
        """A token valid for a while yet; exchanges when none is or it is about to expire."""
        if self._token is not None and self._clock() < self._renew_at:
            return self._token
        async with self._lock:
            if self._token is None or self._clock() >= self._renew_at:
                started = self._clock()
                token, expires_s = await exchange_once(
                    self._session, self.token_endpoint, self.client_id, self._secret
                )
                self._token = token
                self._renew_at = started + expires_s - refresh_margin_s(expires_s)
                self.exchanges += 1
                log.info("exchanged a share token at %s (expires in %.0fs, exchange #%d)",
                         self.token_endpoint, expires_s, self.exchanges)
            return self._token

    async def headers(self) -> Mapping[str, str]:
        return {"Authorization": f"Bearer {await self.token()}"}


_exchangers: OrderedDict[tuple[str, str], TokenExchanger] = OrderedDict()


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def share_headers(
    redis: Redis, session: aiohttp.ClientSession, job_id: str, *, namespace: str = "td"
) -> HeaderProvider | None:
    """The HeaderProvider for a job created from an incoming share; None for other jobs."""
    raw = await redis.hmget(
        f"{namespace}:ocm:share:{job_id}", ["id", "must_exchange", "token_endpoint", "client_id"]
    )
    if raw[0] is None:
        return None
    secret_raw = await redis.get(f"{namespace}:ocm:secret:{job_id}")
    if secret_raw is None:
        raise AuthError("the share was withdrawn: its secret is gone")
    secret = _text(secret_raw)
    if _text(raw[1] or b"0") != "1":
        return bearer_headers(secret)
    endpoint, client_id = _text(raw[2] or b""), _text(raw[3] or b"")
    key = (job_id, endpoint)
    exchanger = _exchangers.get(key)
    if exchanger is None or exchanger._session is not session:
        exchanger = TokenExchanger(session, endpoint, client_id, secret)
        _exchangers[key] = exchanger
        while len(_exchangers) > MAX_EXCHANGERS:
            _exchangers.popitem(last=False)
    _exchangers.move_to_end(key)
    return exchanger.headers
