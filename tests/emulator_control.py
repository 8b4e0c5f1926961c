"""A thin async client of the emulator's control API (``/_emulator/``), for tests.

    async with EmulatorControl(emulator.url) as control:
        await control.set_identity("15551234567", "Rc/eg9Rl0JA=", shape="array")
        await control.add_fault("/v1/contacts/*/identity", status=503, times=None)
        ...
        assert await control.count("GET", "/v1/contacts/15551234567/identity") == 3

Keyword arguments are the JSON fields of ``whatsapp_emulator.emulator.Contact``, ``Fault`` and
``Settings``. A call the emulator refuses raises ``httpx.HTTPStatusError``.
"""

from __future__ import annotations

import ssl
from types import TracebackType
from typing import Any

import httpx

_PREFIX = "/_emulator"


class EmulatorControl:
    """Drives a running emulator over HTTP, as a developer would with curl."""

    def __init__(self, base_url: str, *, verify: ssl.SSLContext | bool = True) -> None:
        self._client = httpx.AsyncClient(base_url=base_url + _PREFIX, verify=verify)

    async def __aenter__(self) -> EmulatorControl:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the underlying HTTP client."""
        await self._client.aclose()

    async def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        response = await self._client.request(method, path, json=body)
        response.raise_for_status()
        return response.json() if response.content else None

    async def set_identity(self, wa_id: str, hash: str, **options: Any) -> dict[str, Any]:
        """Store (replace) a contact's identity; returns the stored state."""
        stored: dict[str, Any] = await self._call(
            "PUT", f"/contacts/{wa_id}", {"hash": hash, **options}
        )
        return stored

    async def get_identity(self, wa_id: str) -> dict[str, Any] | None:
        """A contact's stored state, or None if the emulator does not know it."""
        response = await self._client.get(f"/contacts/{wa_id}")
        if response.status_code == httpx.codes.NOT_FOUND:
            return None
        response.raise_for_status()
        stored: dict[str, Any] = response.json()
        return stored

    async def remove_identity(self, wa_id: str) -> None:
        """Forget a contact (it must be known)."""
        await self._call("DELETE", f"/contacts/{wa_id}")

    async def add_fault(self, path: str, **fault: Any) -> None:
        """Arm a fault for upstream paths matching ``path`` (an fnmatch pattern)."""
        await self._call("POST", "/faults", {"path": path, **fault})

    async def clear_faults(self) -> None:
        """Disarm every fault."""
        await self._call("DELETE", "/faults")

    async def revoke_tokens(self) -> int:
        """Refuse every token issued so far; returns how many were still valid."""
        answer: dict[str, int] = await self._call("POST", "/tokens/revoke")
        return answer["revoked"]

    async def settings(self) -> dict[str, Any]:
        """The current settings."""
        settings: dict[str, Any] = await self._call("GET", "/settings")
        return settings

    async def update_settings(self, **settings: Any) -> dict[str, Any]:
        """Change some settings; returns them all."""
        updated: dict[str, Any] = await self._call("PUT", "/settings", settings)
        return updated

    async def set_login_mode(self, mode: str) -> None:
        """Make logins succeed ("ok") or fail ("reject", "password_change", "locked")."""
        await self.update_settings(login_mode=mode)

    async def requests(
        self, method: str | None = None, path: str | None = None
    ) -> list[dict[str, Any]]:
        """Recorded upstream requests, oldest first, by method and path (an fnmatch pattern)."""
        params = {k: v for k, v in (("method", method), ("path", path)) if v is not None}
        response = await self._client.get("/requests", params=params)
        response.raise_for_status()
        records: list[dict[str, Any]] = response.json()["requests"]
        return records

    async def count(self, method: str | None = None, path: str | None = None) -> int:
        """How many recorded upstream requests match."""
        return len(await self.requests(method, path))

    async def clear_requests(self) -> None:
        """Forget the recorded requests."""
        await self._call("DELETE", "/requests")

    async def reset(self) -> None:
        """Back to the demo contacts and defaults; issued tokens stay valid."""
        await self._call("POST", "/reset")
