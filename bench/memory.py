"""Resident memory of N cached identities (spec §5: at most 40 MB per 100,000).

Run in a fresh process so nothing else moves the figure: ``python bench/memory.py 100000``.
Prints JSON: the RSS growth in MB, and the same scaled to 100,000 entries.
"""

from __future__ import annotations

import base64
import gc
import hashlib
import json
import sys
import time

from gateway.backends.base import UpstreamIdentity
from gateway.serving.servicer import _response
from gateway.store.cache import IdentityCache


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[1])
    import resource

    return pages * resource.getpagesize()


def main(entries: int) -> None:
    cache: IdentityCache[bytes] = IdentityCache(ttl=30, max_entries=entries)
    gc.collect()
    before = rss_bytes()
    now = time.time()
    for i in range(entries):
        # Realistic values, each a distinct object as parsed from a distinct upstream answer:
        # an 11-digit id and a 12-character base64 hash.
        wa_id = str(10_000_000_000 + i)
        digest = hashlib.sha256(wa_id.encode()).digest()[:8]
        identity = UpstreamIdentity(base64.b64encode(digest).decode(), 1600132094000 + i, False)
        response = _response("", wa_id, identity, now)  # what the gateway caches: the hit answer
        response.cache_hit = True
        cache.put(wa_id, response.SerializeToString())
    gc.collect()
    grown = rss_bytes() - before
    print(json.dumps({
        "entries": len(cache),
        "rss_mb": grown / 1e6,
        "mb_per_100k": grown / 1e6 * 100_000 / entries,
    }))  # fmt: skip


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 100_000)
