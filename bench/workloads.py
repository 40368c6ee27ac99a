"""The streaming benchmark's workloads: what is written to the source, by a procedure on the
server, before anything is measured (so the WAL is all there when a round starts).

- friendly: inserts first, then updates of contiguous key ranges in key order, then
  contiguous deletes, 1,000 changes per transaction: the easiest stream there is;
- realistic: what applications write: inserts, updates and deletes interleaved in every
  transaction, updates and deletes of random existing keys, a share of updates on a few
  hot keys, transactions of 1, 10 and 1,000 changes, and a 2 KB text on a share of rows
  (stored out of line, so updates that leave it alone send it as unchanged TOAST).

Both write exactly `n` changes to the same 10-column table, the realistic one from a seeded
random sequence (`setseed`), so a run can be repeated change for change.
"""

from __future__ import annotations

from dataclasses import dataclass

TABLE = """
CREATE SCHEMA director;
CREATE TABLE director.events (
    id bigint PRIMARY KEY, name text, at timestamptz, amount numeric(14,4), doc jsonb,
    active bool, ref uuid, qty int, ratio float8, note text)
"""

FRIENDLY_PROCEDURE = """
CREATE PROCEDURE director.load(n int) LANGUAGE plpgsql AS $$
DECLARE i int := 0;
BEGIN
  -- 60% inserts, 30% updates, 10% deletes, 1,000 changes per transaction
  WHILE i < n * 6 / 10 LOOP
    INSERT INTO director.events
    SELECT g, 'name ' || g, now() - g * interval '1 second', g * 1.25,
           jsonb_build_object('k', g, 'tags', jsonb_build_array('a', 'b')),
           g % 2 = 0, gen_random_uuid(), g % 1000, g / 3.0, repeat('x', 20)
    FROM generate_series(i + 1, i + 1000) g;
    i := i + 1000; COMMIT;
  END LOOP;
  i := 0;
  WHILE i < n * 3 / 10 LOOP
    UPDATE director.events SET amount = amount + 1, note = 'updated', active = NOT active
    WHERE id > i AND id <= i + 1000;
    i := i + 1000; COMMIT;
  END LOOP;
  i := 0;
  WHILE i < n / 10 LOOP
    DELETE FROM director.events WHERE id > n * 6 / 10 - i - 1000 AND id <= n * 6 / 10 - i;
    i := i + 1000; COMMIT;
  END LOOP;
END $$
"""

# One change per loop turn, its kind drawn at random. Keys 1..hot_keys (the first rows
# inserted) take `hot_share` of the updates and are never deleted; every other update or
# delete picks a random key up to the highest inserted, drawing again (up to 20 times) when
# that key is gone, and becomes an insert if all draws miss. Transaction sizes are drawn
# from what is left of each size, so the counts are exact and their order random.
REALISTIC_PROCEDURE = """
CREATE PROCEDURE director.load_realistic(
    seed float8, singles int, tens int, thousands int, insert_share float8,
    update_share float8, hot_keys int, hot_share float8, wide_share float8, wide_bytes int)
LANGUAGE plpgsql AS $$
DECLARE
  left1 int := singles; left10 int := tens; left1000 int := thousands;
  top bigint := 0; size int; pick float8; kind float8; k bigint; tries int;
  pool text;
  pool_len int;
BEGIN
  PERFORM set_config('synchronous_commit', 'off', false);
  PERFORM setseed(seed);
  -- Random hex from a seeded sequence: it does not compress, so a wide value is
  -- stored out of line as in real tables.
  SELECT string_agg(md5(random()::text), '') INTO pool FROM generate_series(1, 512);
  pool_len := length(pool);
  WHILE left1 + left10 + left1000 > 0 LOOP
    pick := random() * (left1 + left10 + left1000);
    IF pick < left1 THEN size := 1; left1 := left1 - 1;
    ELSIF pick < left1 + left10 THEN size := 10; left10 := left10 - 1;
    ELSE size := 1000; left1000 := left1000 - 1;
    END IF;
    FOR j IN 1..size LOOP
      kind := random();
      k := NULL;
      IF kind >= insert_share AND top > hot_keys THEN
        IF kind < insert_share + update_share AND random() < hot_share THEN
          k := 1 + floor(random() * hot_keys)::bigint;
          UPDATE director.events
          SET amount = amount + 1, active = NOT active, at = now(), qty = qty + 1
          WHERE id = k;
        ELSE
          tries := 0;
          LOOP
            k := hot_keys + 1 + floor(random() * (top - hot_keys))::bigint;
            IF kind < insert_share + update_share THEN
              UPDATE director.events
              SET amount = amount + 1, active = NOT active, at = now(), qty = qty + 1
              WHERE id = k;
            ELSE
              DELETE FROM director.events WHERE id = k;
            END IF;
            EXIT WHEN FOUND;
            tries := tries + 1;
            IF tries = 20 THEN k := NULL; EXIT; END IF;
          END LOOP;
        END IF;
      END IF;
      IF k IS NULL THEN
        top := top + 1;
        INSERT INTO director.events VALUES (
          top, 'name ' || top, now() - top * interval '1 second', top * 1.25,
          jsonb_build_object('k', top, 'tags', jsonb_build_array('a', 'b')),
          top % 2 = 0, gen_random_uuid(), top % 1000, top / 3.0,
          CASE WHEN random() < wide_share
               THEN substr(pool, 1 + floor(random() * (pool_len - wide_bytes))::int, wide_bytes)
               ELSE repeat('x', 20) END);
      END IF;
    END LOOP;
    COMMIT;
  END LOOP;
END $$
"""


@dataclass(frozen=True)
class Mix:
    """The realistic workload's parameters. Shares of changes, not of transactions:
    `single_share` of the changes are in 1-change transactions, `ten_share` in 10-change
    ones, the rest in 1,000-change ones."""

    seed: float = 0.42
    insert_share: float = 0.6
    update_share: float = 0.3  # deletes: the rest
    hot_keys: int = 100
    hot_share: float = 0.2  # of the updates
    wide_share: float = 0.1  # of the inserted rows
    wide_bytes: int = 2048
    single_share: float = 0.1
    ten_share: float = 0.2

    def __post_init__(self) -> None:
        shares = (self.insert_share, self.update_share, self.hot_share, self.wide_share,
                  self.single_share, self.ten_share)  # fmt: skip
        if not all(0 <= s <= 1 for s in shares):
            raise ValueError(f"shares must be between 0 and 1: {self}")
        if self.insert_share + self.update_share > 1 or self.single_share + self.ten_share > 1:
            raise ValueError(f"shares add up to more than 1: {self}")
        if not -1 <= self.seed <= 1:
            raise ValueError(f"setseed takes a seed between -1 and 1, not {self.seed}")
        if self.hot_keys < 1 or self.wide_bytes < 1:
            raise ValueError(f"hot_keys and wide_bytes must be positive: {self}")

    def transactions(self, changes: int) -> dict[int, int]:
        """How many transactions of 1, 10 and 1,000 changes make exactly `changes`: the
        larger sizes rounded down, the rest in single-change transactions."""
        if changes < 0:
            raise ValueError(f"changes must not be negative, not {changes}")
        thousands = int(changes * (1 - self.single_share - self.ten_share)) // 1000
        tens = int(changes * self.ten_share) // 10
        return {1: changes - 1000 * thousands - 10 * tens, 10: tens, 1000: thousands}

    def call_arguments(self, changes: int) -> tuple[float | int, ...]:
        """The arguments of `director.load_realistic`, in order."""
        sizes = self.transactions(changes)
        return (self.seed, sizes[1], sizes[10], sizes[1000], self.insert_share,
                self.update_share, self.hot_keys, self.hot_share, self.wide_share,
                self.wide_bytes)  # fmt: skip

    def describe(self, changes: int) -> str:
        sizes = self.transactions(changes)
        deletes = 1 - self.insert_share - self.update_share
        return (
            f"{self.insert_share:.0%} inserts, {self.update_share:.0%} updates and "
            f"{deletes:.0%} deletes interleaved in every transaction, updates and deletes of "
            f"random existing keys ({self.hot_share:.0%} of the updates on {self.hot_keys} "
            f"hot keys); {sizes[1]:,} transactions of 1 change, {sizes[10]:,} of 10, "
            f"{sizes[1000]:,} of 1,000; a {self.wide_bytes:,}-byte text (stored out of line) "
            f"on {self.wide_share:.0%} of the rows"
        )


@dataclass(frozen=True)
class Workload:
    """A named workload: the procedure that writes it and how to call it for `n` changes."""

    name: str
    mix: Mix | None  # None: the friendly workload

    @property
    def procedure(self) -> str:
        return FRIENDLY_PROCEDURE if self.mix is None else REALISTIC_PROCEDURE

    def call(self, changes: int) -> tuple[str, tuple[float | int, ...]]:
        if self.mix is None:
            return "CALL director.load(%s)", (changes,)
        return "CALL director.load_realistic(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)", (
            self.mix.call_arguments(changes)
        )

    def describe(self, changes: int) -> str:
        if self.mix is None:
            return (
                "60% inserts first, then updates of contiguous key ranges in key order, then "
                "contiguous deletes (30% and 10%), 1,000 changes per transaction"
            )
        return self.mix.describe(changes)


FRIENDLY = Workload("friendly", None)
REALISTIC = Workload("realistic", Mix())
WORKLOADS = {w.name: w for w in (FRIENDLY, REALISTIC)}
