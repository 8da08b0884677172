"""What only the pgvector store has: its table layout and catalog, indexes the queries use,
the advisory writer lock, schema migration, and the pipeline and CLI running on it."""

from __future__ import annotations

import threading

import psycopg
import pytest

from imgrag.errors import StoreError, StoreLockedError
from imgrag.settings import Settings
from imgrag.stores import open_store
from imgrag.stores.pgvector import SCHEMA_VERSION, AdvisoryWriterLock, PgVectorStore, where_sql
from tests.test_store_conformance import DIM, add, axis, record


@pytest.fixture
def settings(pg_store_url) -> Settings:
    return Settings(store_url=pg_store_url, dim=DIM)


@pytest.fixture
def store(settings) -> PgVectorStore:
    opened = open_store(settings)
    yield opened
    opened.close()


def plan(store: PgVectorStore, query: str, params: list) -> str:
    """The plan of ``query`` with sequential scans priced out (indexes used if usable)."""
    with store.conn.transaction():
        store.conn.execute("SET LOCAL enable_seqscan = off")
        rows = store.conn.execute(f"EXPLAIN {query}", params).fetchall()
    return "\n".join(r[0] for r in rows)


def test_table_has_typed_columns_jsonb_an_hnsw_cosine_index_and_a_catalog_row(store):
    columns = dict(store.conn.execute(
        "SELECT column_name, format_type(atttypid, atttypmod) FROM information_schema.columns"
        " JOIN pg_attribute ON attrelid = %s::regclass AND attname = column_name"
        " WHERE table_name = %s", [store.table, store.table]).fetchall())
    indexes = [r[0] for r in store.conn.execute(
        "SELECT indexdef FROM pg_indexes WHERE tablename = %s", [store.table]).fetchall()]
    catalog = store.conn.execute("SELECT model_id, dim, schema_version FROM imgrag_catalog"
                                 " WHERE name = %s", [store.table]).fetchone()

    assert columns == {
        "id": "text", "embedding": f"vector({DIM})", "source_uri": "text", "bucket": "text",
        "key": "text",
        "etag": "text", "size": "bigint", "width": "integer", "height": "integer",
        "last_modified": "timestamp with time zone", "normalize_version": "integer",
        "document": "text", "meta": "jsonb"}
    assert any("USING hnsw (embedding vector_cosine_ops)" in i for i in indexes)
    assert catalog == (store.model_id, DIM, SCHEMA_VERSION)
    add(store, {"s3://b/k.jpg": record("s3://b/k.jpg")})
    meta = store.conn.execute(f"SELECT meta FROM {store.table}").fetchone()[0]
    assert meta["format"] == "JPEG" and "key" not in meta and "dirs" not in meta
    assert "source_uri" not in meta


def test_manifest_pages_and_prefix_filters_are_index_range_scans(store):
    manifest = plan(store, f"SELECT id FROM {store.table} WHERE bucket = %s"
                    " AND source_uri >= %s AND source_uri < %s AND (source_uri, id) > (%s, %s)"
                    " ORDER BY source_uri, id LIMIT 10", ["b", "s3://b/a/", "s3://b/a0", "", ""])
    condition, values = where_sql({"$and": [{"dirs": {"$contains": "cat/"}},
                                            {"last_modified_ts": {"$gte": 1.7e9}}]})
    prefix = plan(store, f"SELECT id FROM {store.table} WHERE {condition}", values)

    assert "Seq Scan" not in manifest and f"{store.table}_source" in manifest
    assert "Seq Scan" not in prefix and f"{store.table}_key" in prefix


def test_filtered_query_stays_exact_when_the_hnsw_index_answers_first(store):
    metas = {f"s3://b/near/{i:03d}.jpg": record(f"s3://b/near/{i:03d}.jpg") for i in range(300)}
    metas["s3://b/rare/1.jpg"] = record("s3://b/rare/1.jpg", fmt="PNG")
    add(store, metas, [[1.0, i / 300, *([0.0] * (DIM - 2))] for i in range(300)]
        + [[-1.0, *([0.0] * (DIM - 1))]])
    store.conn.execute("SET enable_seqscan = off")  # as on a large table: HNSW first

    hits = store.query(axis(0), k=1, where={"format": "PNG"})  # no index but HNSW's

    assert [h.id for h in hits] == ["s3://b/rare/1.jpg"]


def test_second_unsharded_writer_is_refused_shards_share_the_table(settings):
    with AdvisoryWriterLock(settings):
        with pytest.raises(StoreLockedError, match="another ingest is writing table"):
            AdvisoryWriterLock(settings).acquire()
        with pytest.raises(StoreLockedError):
            AdvisoryWriterLock(settings, (0, 2)).acquire()
    with AdvisoryWriterLock(settings, (0, 2)), AdvisoryWriterLock(settings, (1, 2)):
        with pytest.raises(StoreLockedError, match="shard 0/2 of table"):
            AdvisoryWriterLock(settings, (0, 2)).acquire()
        with pytest.raises(StoreLockedError):
            AdvisoryWriterLock(settings).acquire()
    with AdvisoryWriterLock(settings):  # all released
        pass


def test_shards_write_at_once_from_their_own_connections(settings, store):
    uris = [f"s3://b/s/{i:03d}.jpg" for i in range(200)]
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def shard(index: int) -> None:
        try:
            with AdvisoryWriterLock(settings, (index, 2)):
                own = open_store(settings)
                barrier.wait(timeout=30)
                for start in range(index * 100, index * 100 + 100, 10):
                    add(own, {u: record(u) for u in uris[start:start + 10]})
                own.close()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=shard, args=(i,)) for i in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert [u for u, _ in store.iter_manifest("b", "s3://b/s/")] == uris


def test_schema_1_table_is_migrated_and_a_newer_schema_refused(settings, store):
    add(store, {"s3://b/old.jpg": record("s3://b/old.jpg")})
    store.conn.execute(f"DROP INDEX {store.table}_key, {store.table}_last_modified")
    store.conn.execute("UPDATE imgrag_catalog SET schema_version = 1 WHERE name = %s",
                       [store.table])

    reader = open_store(settings, create=False)  # a query host migrates nothing
    assert reader.schema_version == 1 and reader.count() == 1
    reader.close()
    migrated = open_store(settings)

    indexes = [r[0] for r in store.conn.execute(
        "SELECT indexname FROM pg_indexes WHERE tablename = %s", [store.table]).fetchall()]
    assert {f"{store.table}_key", f"{store.table}_last_modified"} <= set(indexes)
    assert migrated.schema_version == SCHEMA_VERSION
    assert list(migrated.manifest("b", "s3://b/")) == ["s3://b/old.jpg"]
    migrated.close()
    store.conn.execute("UPDATE imgrag_catalog SET schema_version = 99 WHERE name = %s",
                       [store.table])
    with pytest.raises(StoreError, match="newer imgrag"):
        open_store(settings)


def test_unreachable_server_is_one_line_without_the_user_name():
    settings = Settings(store_url="postgresql://alice@127.0.0.1:1/db?table=images&"
                                  "connect_timeout=2")
    with pytest.raises(StoreError) as caught:
        open_store(settings)
    message = str(caught.value)
    assert message.startswith("cannot open PostgreSQL store at postgresql://127.0.0.1:1/db/")
    assert "\n" not in message and "alice" not in message


@pytest.mark.parametrize(("url", "error"), [
    ("postgresql://u:secret@h/db", "must not carry a password"),
    ("postgresql://h/db?table=Images", "table name"),
    ("postgresql://h/db?table=a;drop", "table name"),
    ("mysql://h/db", "must start with"),
])
def test_bad_store_urls_are_refused(url, error):
    with pytest.raises(ValueError, match=error):
        Settings(store_url=url)


def test_ingest_cli_refuses_while_another_writer_holds_the_table(settings, tmp_path, capsys):
    from flows.ingest import main

    (tmp_path / "photos").mkdir()
    with AdvisoryWriterLock(settings):
        code = main(["--source", str(tmp_path / "photos"), "--store", settings.store_url])

    assert code == 2
    assert "imgrag: error: another ingest is writing table" in capsys.readouterr().err


def test_pipeline_planner_and_query_run_unchanged_on_pgvector(settings, tmp_path, bedrock):
    from imgrag.pipeline import Runtime, process_batch
    from imgrag.query import SearchRequest, run_search
    from imgrag.sync import ScopePlanner
    from tests.conftest import COLOURS, image_bytes

    folder = tmp_path / "photos"
    folder.mkdir()
    for seed, name in enumerate(COLOURS):
        (folder / f"{name}.jpg").write_bytes(image_bytes(COLOURS[name], seed=seed))
    settings = settings.model_copy(update={"state_dir": tmp_path / "state"})

    def run() -> tuple[ScopePlanner, list[str]]:
        rt = Runtime.open(settings, str(folder))
        try:
            planner = ScopePlanner(rt.source.scope,
                                   rt.store.iter_manifest(rt.source.bucket, rt.source.scope))
            todo = list(planner.todo(rt.source.list_objects()))
            if todo:
                assert process_batch(rt, todo, "run").upserted == len(todo)
            deleted = planner.sweep(allow_mass_delete=True).deleted
            rt.store.delete(deleted)
            return planner, deleted
        finally:
            rt.close()

    first, _ = run()
    calls = bedrock.stats.requests
    (folder / "green.jpg").unlink()
    second, deleted = run()

    assert (first.plan.new, second.plan.unchanged, bedrock.stats.requests) == (4, 3, calls)
    assert deleted == [(folder / "green.jpg").resolve().as_uri()]
    hits = run_search(settings, SearchRequest(text="red", k=1))
    assert hits[0].id.endswith("/red.jpg") and hits[0].metadata["width"] == 64


def test_a_write_whose_connection_dropped_is_retried_alone_on_a_new_one(settings, store):
    def drop_connection(of: PgVectorStore) -> None:
        with psycopg.connect(settings.postgres_conninfo, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", [of.conn.info.backend_pid])

    drop_connection(store)
    add(store, {"s3://b/1.jpg": record("s3://b/1.jpg")})  # retried on a new connection
    assert store.count() == 1

    once = open_store(settings.model_copy(update={"store_write_attempts": 1}))
    drop_connection(once)
    with pytest.raises(StoreError, match=r"cannot write 1 records to .* \(after 1 attempts\)"):
        add(once, {"s3://b/2.jpg": record("s3://b/2.jpg")})
    with pytest.raises(StoreError, match="after 1 attempts"):
        once.wait_writable()  # no more vectors paid for while writes fail
    add(once, {"s3://b/3.jpg": record("s3://b/3.jpg")})  # a new connection: writes again
    once.wait_writable()
    assert sorted(once.get(["s3://b/1.jpg", "s3://b/2.jpg", "s3://b/3.jpg"])) == [
        "s3://b/1.jpg", "s3://b/3.jpg"]
    once.close()
