"""Rows read with plain SQL, built into the instances the ORM would have built.

For the hottest reads (every token-authenticated request reads its token and user; every
job status poll its job and size; every link request its size and files): the ORM spends
about 1 ms of Python compiling each query, five times the round trip. The values pass
through the same converters as the ORM's, so the instances are what the ORM would have
built. `core/tests/test_rows.py` holds each reader to the ORM's result.

SQL here is the subset PostgreSQL and SQLite share (no LATERAL, no DISTINCT ON): the
embedded configuration runs the same code.

On PostgreSQL these reads bind their parameters on the server, so psycopg can prepare them
(the connection's `prepare_threshold`, set in settings): PostgreSQL then plans each once per
connection instead of at every request, which was most of its CPU for them. The ORM keeps
Django's client-side binding (its SQL is not written to be prepared).
"""

from __future__ import annotations

from django.db import DEFAULT_DB_ALIAS, connections
from django.db.models import Model

# (model, vendor) -> what building its instances needs: the concrete fields' attribute names,
# the primary key's position, and the converters of the fields that have any (looked up
# once: they depend on the field and the backend only).
_LOADERS: dict[tuple, tuple] = {}


def _loader(model: type[Model], conn) -> tuple:
    key = (model, conn.vendor)
    found = _LOADERS.get(key)
    if found is None:
        fields = model._meta.concrete_fields
        converters = []
        for index, field in enumerate(fields):
            col = field.get_col(model._meta.db_table)
            found_converters = conn.ops.get_db_converters(col) + col.get_db_converters(conn)
            if found_converters:
                converters.append((index, col, found_converters))
        attnames = [f.attname for f in fields]
        found = (attnames, fields.index(model._meta.pk), converters)
        _LOADERS[key] = found
    return found


def columns(model: type[Model], alias: str) -> str:
    """`alias.col1, alias.col2, ...`: every concrete column of `model`, in field order."""
    return ", ".join(f"{alias}.{f.column}" for f in model._meta.concrete_fields)


def build(model: type[Model], row, start: int = 0):
    """The `model` instance from `row[start:]`, laid out as `columns(model, ...)` selects it;
    None when the row's primary key is NULL (a LEFT JOIN that found nothing)."""
    conn = connections[DEFAULT_DB_ALIAS]  # `connection` looks itself up at each attribute
    attnames, pk_index, converters = _loader(model, conn)
    values = list(row[start : start + len(attnames)])
    if values[pk_index] is None:
        return None
    for index, col, convert_all in converters:
        value = values[index]
        for convert in convert_all:
            value = convert(value, col, conn)
        values[index] = value
    return model.from_db(conn.alias, attnames, values)


def fetch(sql: str, params: list) -> list[tuple]:
    with _cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall()


def _cursor():
    """Django's cursor (query logging, execute wrappers, error translation, the health
    check), over a server-binding psycopg cursor on PostgreSQL."""
    conn = connections[DEFAULT_DB_ALIAS]  # `connection` looks itself up at each attribute
    if conn.vendor != "postgresql":
        return conn.cursor()
    from django.db.backends.postgresql.base import TIMESTAMPTZ_OID, ServerBindingCursor
    from django.db.backends.postgresql.psycopg_any import register_tzloader
    from psycopg.pq import Format

    # What BaseDatabaseWrapper._cursor and the backend's create_cursor do, with a cursor of
    # the other binding (test_rows.py checks it is logged, prepared and time-zone aware).
    conn.close_if_health_check_failed()
    conn.ensure_connection()
    with conn.wrap_database_errors:
        cursor = ServerBindingCursor(conn.connection)
        tzloader = conn.connection.adapters.get_loader(TIMESTAMPTZ_OID, Format.TEXT)
        if conn.timezone != tzloader.timezone:
            register_tzloader(conn.timezone, cursor)
        return conn._prepare_cursor(cursor)


def first(model: type[Model], where: str, params: list):
    """The first `model` row matching `where` (SQL over alias `m`; values as %s params,
    already prepared for the database), or None."""
    sql = f"SELECT {columns(model, 'm')} FROM {model._meta.db_table} m WHERE {where}"  # noqa: S608
    rows = fetch(sql, params)
    return build(model, rows[0]) if rows else None


def one_with_related(model: type[Model], fk_name: str, where: str, params: list):
    """The first `model` row matching `where` (SQL over alias `m`; values as %s params,
    already prepared for the database), with `fk_name`'s row attached; None when none.
    An inner join: rows whose foreign key is NULL are not found."""
    fk = model._meta.get_field(fk_name)
    related = fk.related_model
    own = model._meta.concrete_fields
    sql = (
        f"SELECT {columns(model, 'm')}, {columns(related, 'r')} "  # noqa: S608
        f"FROM {model._meta.db_table} m "
        f"JOIN {related._meta.db_table} r ON r.{fk.target_field.column} = m.{fk.column} "
        f"WHERE {where}"
    )
    rows = fetch(sql, params)
    if not rows:
        return None
    instance = build(model, rows[0])
    setattr(instance, fk_name, build(related, rows[0], len(own)))
    return instance
