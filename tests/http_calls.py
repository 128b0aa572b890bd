"""Count the HTTP requests a piece of code makes (every ``requests`` call goes through
``Session.request``: MLflow's client and the health check alike), so a test can assert "no
retry" or "straight to the spool" by the calls made, not by the seconds they took."""

from __future__ import annotations

import requests


def count_requests(monkeypatch) -> list[tuple[str, str]]:
    """From now on, every request's (method, url) is appended to the returned list; the real
    request is still made."""
    calls: list[tuple[str, str]] = []
    real = requests.Session.request

    def counting(self, method, url, *args, **kwargs):
        calls.append((str(method).upper(), str(url)))
        return real(self, method, url, *args, **kwargs)

    monkeypatch.setattr(requests.Session, "request", counting)
    return calls
