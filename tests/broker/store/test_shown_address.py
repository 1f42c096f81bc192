"""Lane heldbits: `postgres.shown_address` (messages, `store.path`, `libos serve`'s line)
showed an address naming only a `hostaddr` as localhost, where libpq connects to the
hostaddr. Now it shows the address libpq reaches (an IPv6 one bracketed, as a URI writes
it), never the password; a host name stays what is shown."""

from __future__ import annotations

import pytest

from broker.store.postgres import shown_address


@pytest.mark.parametrize(("dsn", "shown"), [
    ("host=localhost port=5433 dbname=d user=u password=p",  # (the neighbour: as before)
     "postgresql://u@localhost:5433/d"),
    ("hostaddr=10.1.2.3 dbname=d password=p", "postgresql://10.1.2.3:5432/d"),
    ("postgresql:///d?hostaddr=127.0.0.2&port=5433", "postgresql://127.0.0.2:5433/d"),
    ("hostaddr=::1 dbname=d", "postgresql://[::1]:5432/d"),
    ("host=db.example hostaddr=10.1.2.3 dbname=d", "postgresql://db.example:5432/d"),
    ("dbname=d", "postgresql://localhost:5432/d"),
])
def test_the_address_shown_is_the_one_libpq_reaches(dsn: str, shown: str) -> None:
    assert shown_address(dsn) == shown
    assert "p@" not in shown_address(dsn) and "password" not in shown_address(dsn)
