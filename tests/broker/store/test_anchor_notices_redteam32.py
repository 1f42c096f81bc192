"""Red team 32: forged, odd and flooding notices on the anchors channel (`anchor_notices`),
from anyone who can connect, against two real brokers over one PostgreSQL store."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.store.anchor_notices import CHANNEL, MAX_KEPT
from tests.broker.store.conftest import raw
from tests.broker.store.test_anchor_notices import _appends, _broker

# The flood: junk; b's trusted key with signatures that do not verify; b's anchor itself
# (under other names: the server sends one of a transaction's notices alike).
FLOODS = {"junk": "concat_ws(' ', 'z', g, 'h', 'k', 's')",
          "trusted key": "concat_ws(' ', 'b', g, %(hash)s, %(key)s, md5(g::text))",
          "replayed": "concat_ws(' ', 'b' || g, %(seq)s, %(hash)s, %(key)s, %(signature)s)"}


@pytest.mark.parametrize("flood", FLOODS)
def test_a_flood_after_the_peers_notice_does_not_lose_it(pg_database: str, tmp_path: Path,
                                                         flood: str) -> None:
    """b publishes its anchor and a is told; a writer then floods the channel past what a
    keeps, cuts b's records from the chain's end and deletes b's anchor row: the anchor a
    was told of must still be checked (it was thrown away, the table read instead)."""
    a, b = _broker(pg_database, tmp_path, "a"), _broker(pg_database, tmp_path, "b")
    try:
        links = a.chain_links()
        links.walk_anchored()
        top = a.last_seq()
        _appends(b)
        anchor = dict(b.published_anchors())["b"]
        signed = anchor.seq
        a.last_seq()  # (the genuine notice reaches a)
        payload = FLOODS[flood] % {k: f"'{v}'" for k, v in anchor.to_json().items()}
        with raw(pg_database) as db:
            db.execute(f"SELECT pg_notify('{CHANNEL}', {payload})"
                       " FROM generate_series(1, ?) AS g", (2 * MAX_KEPT + 1,))
            db.execute("DELETE FROM audit WHERE seq > ?", (top,))
            db.execute("DELETE FROM anchors WHERE signer='b'", ())
        a.last_seq()  # (any query of a's brings the flood in)
        links.walk_anchored()
        assert signed > top and links.data_break() == signed
    finally:
        a.close()
        b.close()


def test_an_odd_digit_in_a_notice_is_noise_not_a_crash(pg_database: str, tmp_path: Path
                                                       ) -> None:
    """A seq field that `str.isdigit` takes and `int` does not (a superscript two) is
    anyone's noise: a's next query and walk still work."""
    a, b = _broker(pg_database, tmp_path, "a"), _broker(pg_database, tmp_path, "b")
    try:
        links = a.chain_links()
        links.walk_anchored()
        with raw(pg_database) as db:
            db.execute(f"SELECT pg_notify('{CHANNEL}', 'z \u00b2 h k s')", ())
        a.last_seq()
        _appends(a)
        links.walk_anchored()
        assert links.data_break() is None
    finally:
        a.close()
        b.close()
