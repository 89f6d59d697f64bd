"""Token authentication with the token's user kept in the cache for a short while.

DRF's ``TokenAuthentication`` reads the token and its user from PostgreSQL on every request: on a job
poll that is one of three queries. This keeps ``(user)`` under a hash of the key in Django's cache
(``RIS_CACHE_URL``: Redis in the compose file, per-process memory otherwise) for
``settings.RIS_TOKEN_CACHE_SECONDS`` (default 30; 0 turns it off). A deleted token or a deactivated user
is refused at the latest that many seconds later; deleting a token through ``token_forget`` is immediate
in the cache the web shares.
"""

from __future__ import annotations

import hashlib
from typing import Any

from django.conf import settings
from django.core.cache import cache
from rest_framework.authentication import TokenAuthentication


def _cache_key(key: str) -> str:
    return "ris:token:" + hashlib.sha256(key.encode()).hexdigest()


def token_forget(key: str) -> None:
    """Drop a token from the cache (call when a token is deleted)."""
    cache.delete(_cache_key(key))


class CachedTokenAuthentication(TokenAuthentication):
    """``Authorization: Token <key>``; same answers as DRF's, the lookup cached (see module docstring)."""

    def authenticate_credentials(self, key: str) -> tuple[Any, Any]:
        seconds = int(getattr(settings, "RIS_TOKEN_CACHE_SECONDS", 30))
        if seconds <= 0:
            return super().authenticate_credentials(key)
        cache_key = _cache_key(key)
        user = cache.get(cache_key)
        if user is not None and user.is_active:
            return user, None
        user, token = super().authenticate_credentials(key)  # raises AuthenticationFailed
        cache.set(cache_key, user, seconds)
        return user, token
