"""Which tables may be published (invariant 7), what the follower does about the schema,
and the publication SQL: pure rules, no database."""

from __future__ import annotations

from dataclasses import replace

from cdc.stream.eligibility import Shape, SourceTable, exclusion
from cdc.stream.followplan import carried, plan, reshaped
from cdc.stream.publications import create_publication_sql, via_root_sql

KEYED = SourceTable("t", "director.t", False, False, "d", True, ())
KEYLESS = replace(KEYED, has_primary_key=False, unusable=("director.t",))


def test_keyed_full_and_index_identities_may_be_published() -> None:
    assert exclusion(KEYED) is None
    full = replace(KEYLESS, identity="f", unusable=())
    assert exclusion(full) is None
    by_index = replace(KEYLESS, identity="i", unusable=())
    assert exclusion(by_index) is None


def test_each_exclusion_names_its_fix() -> None:
    why = exclusion(KEYLESS)
    assert why is not None
    assert why.fix == "ALTER TABLE director.t ADD PRIMARY KEY (...)"
    assert "refuse the application's own UPDATE and DELETE" in why.reason
    nothing = exclusion(replace(KEYED, identity="n", unusable=("director.t",)))
    assert nothing is not None and nothing.fix == "ALTER TABLE director.t REPLICA IDENTITY DEFAULT"
    lost_index = exclusion(replace(KEYLESS, identity="i"))
    assert lost_index is not None and "no longer exists" in lost_index.reason
    unlogged = exclusion(replace(KEYED, unlogged=True))
    assert unlogged is not None and unlogged.fix == "ALTER TABLE director.t SET LOGGED"
    leaves = exclusion(replace(KEYED, partitioned=True, unusable=("director.t_1",)))
    assert leaves is not None and leaves.fix == "ALTER TABLE director.t_1 REPLICA IDENTITY DEFAULT"


def test_a_keyless_table_may_join_a_publication_of_inserts_only() -> None:
    assert exclusion(KEYLESS, publishes_changes=False) is None
    assert exclusion(replace(KEYED, unlogged=True), publishes_changes=False) is not None


def test_plan_adds_new_tables_but_not_ones_taken_out_by_hand() -> None:
    new = replace(KEYED, name="new")
    taken_out = replace(KEYED, name="out")
    fixed = replace(KEYED, name="fixed")
    todo = plan([KEYED, new, taken_out, fixed], {"t"}, {"out": "ready", "fixed": "excluded"},
                {"t": frozenset()}, set(), True)  # fmt: skip
    assert todo.add == ("new", "fixed")
    assert todo.seen is not None and set(todo.seen) == {"t", "new", "fixed"}
    # Recorded as being copied, and no longer published: published when its copy began,
    # so another table of its name now (made again while every start was killed during
    # its initial load: no look at the schema recorded its OID).
    again = replace(KEYED, name="again", oid=99)
    first = plan([again], set(), {"again": "copying"}, None, set(), True, None, {}, {})
    assert first.add == ("again",)


def test_plan_unpublishes_a_table_that_lost_its_key_and_reports_exclusions_once() -> None:
    lost = replace(KEYLESS, name="lost")
    never = replace(KEYLESS, name="never")
    todo = plan([lost, never], {"lost"}, {}, {"lost": frozenset()}, set(), True)
    assert [w.table for w in todo.unpublish] == ["lost"]
    assert [w.table for w in todo.excluded] == ["never"]
    again = plan([never], set(), {}, {}, {"never"}, True)
    assert again.excluded == () and again.add == ()


def test_plan_copies_a_partitioned_table_again_when_it_gains_partitions() -> None:
    root = replace(KEYED, name="root", partitioned=True, shape=Shape(leaves=(1, 2)))
    same = plan([root], {"root"}, {}, {"root": frozenset({1, 2})}, set(), True)
    assert same.reload == ()
    grown = plan([replace(root, shape=Shape(leaves=(1, 2, 3)))], {"root"}, {},
                 {"root": frozenset({1, 2})}, set(), True)  # fmt: skip
    assert grown.reload == ("root",)
    detached = plan([replace(root, shape=Shape(leaves=(1,)))], {"root"}, {},
                    {"root": frozenset({1, 2})}, set(), True)  # fmt: skip
    assert detached.reload == ()


def test_plan_after_a_restart_copies_again_a_load_cut_short_and_notices_drops() -> None:
    todo = plan([KEYED], {"t"}, {"t": "copying"}, None, set(), True)
    assert todo.reload == ("t",)
    gone = plan([], set(), {}, {"t": frozenset()}, set(), True)
    assert gone.dropped == ("t",)


def test_publication_sql_publishes_partitions_via_their_root() -> None:
    text = create_publication_sql("p", "director", ["a", "Odd"]).as_string(None)
    assert text == (
        'CREATE PUBLICATION "p" FOR TABLE "director"."a", "director"."Odd" '
        "WITH (publish_via_partition_root = true)"
    )
    assert via_root_sql("p").as_string(None) == (
        'ALTER PUBLICATION "p" SET (publish_via_partition_root = true)'
    )


def test_plan_copies_whole_a_name_that_stood_for_another_table() -> None:
    """Followed by name and OID: a rename copies the table under its new name and reports
    the old one renamed; a table dropped and made again between two looks is added again
    (its state says it was streamed); swapped names are both copied again."""
    t, u = replace(KEYED, name="t", oid=10), replace(KEYED, name="u", oid=11)
    seen = {"t": frozenset[int](), "u": frozenset[int]()}
    same = plan([t, u], {"t", "u"}, {}, seen, set(), True, None, {"t": 10, "u": 11})
    assert (same.add, same.reload, same.recopy, same.dropped) == ((), (), (), ())
    assert same.oids == {"t": 10, "u": 11}
    moved = plan([replace(t, name="t2"), u], {"t2", "u"}, {}, seen, set(), True, None,
                 {"t": 10, "u": 11})  # fmt: skip
    assert moved.recopy == ("t2",) and moved.dropped == ("t",)
    assert moved.renamed == {"t": "t2"}
    remade = plan([replace(t, oid=12), u], {"u"}, {"t": "streaming"}, seen, set(), True, None,
                  {"t": 10, "u": 11})  # fmt: skip
    assert remade.add == ("t",) and remade.dropped == () and remade.renamed == {}
    swapped = plan([replace(t, oid=11), replace(u, oid=10)], {"t", "u"}, {}, seen, set(), True,
                   None, {"t": 10, "u": 11})  # fmt: skip
    assert swapped.recopy == ("t", "u")
    taken_out = plan([t, u], {"u"}, {"t": "streaming"}, seen, set(), True, None,
                     {"t": 10, "u": 11})  # fmt: skip
    assert taken_out.add == ()  # the same table, taken out by hand: it stays out


def test_plan_at_the_first_poll_judges_names_by_the_oids_the_last_run_recorded() -> None:
    """Renamed, or dropped and made again, while the daemon was stopped: told apart by the
    OIDs recorded for the names followed then. Nothing recorded: nothing judged."""
    t, u = replace(KEYED, name="t", oid=10), replace(KEYED, name="u", oid=11)
    ready = {"t": "ready", "u": "ready"}
    same = plan([t, u], {"t", "u"}, ready, None, set(), True, None, {"t": 10, "u": 11})
    assert (same.add, same.recopy) == ((), ())
    moved = plan([replace(t, name="t2"), u], {"t2", "u"}, {"u": "ready"}, None, set(), True,
                 None, {"t": 10, "u": 11})  # fmt: skip
    assert moved.recopy == ("t2",)
    remade = plan([replace(t, oid=12), u], {"u"}, ready, None, set(), True, None,
                  {"t": 10, "u": 11})  # fmt: skip
    assert remade.add == ("t",)
    unknown = plan([replace(t, oid=12), u], {"t", "u"}, ready, None, set(), True, None, {})
    assert (unknown.add, unknown.recopy) == ((), ())


# (attnum, name, type OID, modifier): id int, n int, v text
COLUMNS = ((1, "id", 23, -1), (2, "n", 23, -1), (3, "v", 25, -1))
SHAPE = Shape(COLUMNS, (5000,))


def test_a_table_whose_rows_changed_without_a_streamed_change_is_copied_again() -> None:
    """A column renamed keeps its number; one dropped and added again under its name gets
    another; a rewrite that added or retyped a column wrote values no change carries."""
    assert reshaped(SHAPE, SHAPE) is None
    renamed = Shape(((1, "id", 23, -1), (2, "m", 23, -1), (3, "v", 25, -1)), (5000,))
    assert reshaped(SHAPE, renamed) == "column n renamed to m"
    remade = Shape(((1, "id", 23, -1), (3, "v", 25, -1), (4, "n", 23, -1)), (5000,))
    assert reshaped(SHAPE, remade) == "column n dropped and added again"
    retyped = Shape(((1, "id", 23, -1), (2, "n", 20, -1), (3, "v", 25, -1)), (5001,))
    assert reshaped(SHAPE, retyped) == "the table was rewritten with columns added or retyped"
    volatile = Shape((*COLUMNS, (4, "w", 2950, -1)), (5001,))
    assert reshaped(SHAPE, volatile) is not None
    # Followed by the stream alone: a column added with a constant default or none, a
    # column dropped, a type changed without a rewrite, a rewrite that kept the columns
    # (VACUUM FULL, TRUNCATE), an unknown shape from an older record.
    assert reshaped(SHAPE, Shape((*COLUMNS, (4, "w", 2950, -1)), (5000,))) is None
    assert reshaped(SHAPE, Shape(COLUMNS[:2], (5000,))) is None
    assert reshaped(SHAPE, Shape((*COLUMNS[:2], (3, "v", 1043, 24)), (5000,))) is None
    assert reshaped(SHAPE, Shape(COLUMNS, (5001,))) is None
    assert reshaped(Shape(), retyped) is None


def test_plan_copies_again_a_table_reshaped_since_the_last_look() -> None:
    """At a poll, and at the first poll after a restart (by the shapes the last run
    recorded): a reshaped table is copied again, not replacing; a table renamed too is
    copied whole (replacing) instead."""
    t = replace(KEYED, oid=10, shape=SHAPE)
    renamed = Shape(((1, "id", 23, -1), (2, "m", 23, -1), (3, "v", 25, -1)), (5000,))
    now = replace(t, shape=renamed)
    todo = plan([now], {"t"}, {}, {"t": frozenset()}, set(), True, None, {"t": 10}, {"t": SHAPE})
    assert todo.reshaped == ("t",) and todo.why == {"t": "column n renamed to m"}
    assert todo.reload == ()
    assert todo.shapes == {"t": replace(renamed, gone=((2, "n"),))}
    first = plan([now], {"t"}, {"t": "ready"}, None, set(), True, None, {"t": 10}, {"t": SHAPE})
    assert first.why == {"t": "column n renamed to m"}
    same = plan([t], {"t"}, {}, {"t": frozenset()}, set(), True, None, {"t": 10}, {"t": SHAPE})
    assert same.reshaped == ()
    moved = plan([replace(now, name="t2")], {"t2"}, {}, {"t": frozenset()}, set(), True, None,
                 {"t": 10}, {"t2": SHAPE})  # fmt: skip
    assert moved.recopy == ("t2",) and moved.reshaped == ()
    assert moved.why == {"t2": "another table had its name"}


def test_a_name_freed_at_one_look_and_taken_at_a_later_one_is_told_apart() -> None:
    """A column dropped (or renamed away) at one look and a new column of its name added
    at a later one: the targets' column of that name holds the old column's values."""
    dropped = carried(SHAPE, Shape(COLUMNS[:2], (5000,)))
    assert dropped.gone == ((3, "v"),)
    readded = Shape((*COLUMNS[:2], (4, "v", 25, -1)), (5000,))
    assert reshaped(dropped, readded) == "column v dropped and added again"
    renamed = carried(SHAPE, Shape((*COLUMNS[:2], (3, "w", 25, -1)), (5000,)))
    assert reshaped(renamed, Shape((*renamed.columns, (4, "v", 25, -1)), (5000,))) is not None
    assert Shape.from_json(renamed.to_json()) == renamed
    assert carried(None, SHAPE) == SHAPE and carried(SHAPE, SHAPE) == SHAPE


def test_plan_at_the_first_poll_copies_again_what_was_due_when_the_daemon_stopped() -> None:
    """A copy recorded as due (copying) or due to replace the targets' rows (replacing),
    cut short or never begun, is made at the next start: replacing again if it was to."""
    t = replace(KEYED, oid=10)
    due = plan([t], {"t"}, {"t": "copying"}, None, set(), True, None, {"t": 10})
    assert (due.reload, due.recopy) == (("t",), ())
    replacing = plan([t], {"t"}, {"t": "replacing"}, None, set(), True, None, {"t": 10})
    assert (replacing.reload, replacing.recopy) == ((), ("t",))
    later = plan([t], {"t"}, {"t": "replacing"}, {"t": frozenset()}, set(), True, None,
                 {"t": 10})  # fmt: skip
    assert (later.reload, later.recopy) == ((), ())  # being copied by this run
    unpublished = plan([t], set(), {"t": "replacing"}, None, set(), True, None, {"t": 10})
    assert unpublished.add == ("t",)  # stopped between its record and its publication
    aside = {"t": "quarantined"}
    rebuilt = plan([t], {"t"}, aside, None, set(), True, None, {"t": 10}, None, {"t"})
    assert rebuilt.recopy == ("t",)  # set aside, its targets dropped: copied whole
    kept = plan([t], {"t"}, aside, {"t": frozenset()}, set(), True, None, {"t": 10}, None, {"t"})
    assert kept.recopy == ()  # judged at the first look after a start only


def test_plan_copies_whole_a_partitioned_table_that_lost_partitions() -> None:
    """Detached, dropped or truncated partitions take their rows out of the table with no
    change streamed: the table is copied whole, replacing; at the first look after a start
    too (by the partitions the last run recorded). A partition added is copied over it."""
    root = replace(KEYED, partitioned=True, oid=10,
                   shape=Shape(COLUMNS, (7001, 7002), leaves=(1, 2)))  # fmt: skip
    lost = replace(root, shape=replace(root.shape, storage=(7002,), leaves=(2,)))
    seen = {"t": frozenset({1, 2})}
    todo = plan([lost], {"t"}, {}, seen, set(), True, None, {"t": 10}, {"t": root.shape})
    assert (todo.shrunk, todo.recopy, todo.reload) == (("t",), (), ())
    first = plan([lost], {"t"}, {"t": "ready"}, None, set(), True, None, {"t": 10},
                 {"t": root.shape})  # fmt: skip
    assert first.shrunk == ("t",)
    grown = replace(root, shape=replace(root.shape, storage=(7001, 7002, 7003),
                                        leaves=(1, 2, 3)))  # fmt: skip
    todo = plan([grown], {"t"}, {}, seen, set(), True, None, {"t": 10}, {"t": root.shape})
    assert (todo.shrunk, todo.reload) == ((), ("t",))
    # Attached while the daemon was stopped: judged by the partitions the last run recorded.
    first = plan([grown], {"t"}, {"t": "ready"}, None, set(), True, None, {"t": 10},
                 {"t": root.shape})  # fmt: skip
    assert (first.shrunk, first.reload) == ((), ("t",))
    first = plan([root], {"t"}, {"t": "ready"}, None, set(), True, None, {"t": 10},
                 {"t": root.shape})  # fmt: skip
    assert (first.shrunk, first.reload) == ((), ())
    # A partition truncated by itself: its files replaced, no change streamed.
    truncated = replace(root, shape=replace(root.shape, storage=(7001, 7003)))
    todo = plan([truncated], {"t"}, {}, seen, set(), True, None, {"t": 10}, {"t": root.shape})
    assert todo.shrunk == ("t",)
    plain = replace(KEYED, oid=11, shape=Shape(COLUMNS, (7001,)))
    truncated_plain = replace(plain, shape=Shape(COLUMNS, (7009,)))  # its TRUNCATE is streamed
    todo = plan([truncated_plain], {"t"}, {}, {"t": frozenset()}, set(), True, None, {"t": 11},
                {"t": plain.shape})  # fmt: skip
    assert (todo.shrunk, todo.recopy, todo.reload, todo.reshaped) == ((), (), (), ())


def test_an_enum_label_renamed_is_a_change_no_row_carries() -> None:
    """ALTER TYPE ... RENAME VALUE changes every row holding the label, and streams none:
    ClickHouse (and a historic in another database) holds the old text. A label added
    changes no row."""
    before = replace(SHAPE, labels=((900, ("sad", "ok")),))
    added = replace(SHAPE, labels=((900, ("sad", "ok", "happy")),))
    renamed = replace(SHAPE, labels=((900, ("blue", "ok")),))
    assert reshaped(before, added) is None
    assert reshaped(before, renamed) == "enum labels renamed: sad"
    assert reshaped(SHAPE, renamed) is None  # an older record: the labels were not known
    assert Shape.from_json(renamed.to_json()) == renamed
    assert Shape.from_json(SHAPE.to_json()).labels == ()
