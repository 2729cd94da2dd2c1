"""The generic capture writes the entries the generated one writes.

Every case creates the same table in two schemas and tracks both with one config: `<case>_gen.<table>`
keeps the function `auditdb apply` generated (sql/templates/capture.sql.j2, auditdb/columns.py),
`<case>_gnr.<table>` is switched to the generic body (auditdb.capture_generic(), sql/definitions/capture.sql)
by adding and dropping a column, as the DDL watcher does after any column change. Then each statement of
the case runs on both tables, and the entries each one wrote must be the same: action, entity type, id
and name, project, tenant, actor, ip, user agent, table name (schema aside), changes (compared as jsonb
text, so 10.0 and 10.00 would differ) and metadata (without the generic's own `capture`, which must say
"generic", and `capture_warning`, which must be absent). A statement must fail on both or on neither,
the same way, and only where the case says so; both tables must end up holding the same rows. Where the
two captures differ, the case is marked xfail (strict) with the bug it shows.

All cases share one database per server (each in its own schemas; each apply leaves the previous case's
tables untracked), as a fresh database per case would take most of the run time.
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.rows import dict_row
from pytest_postgresql.janitor import DatabaseJanitor

from auditdb.config import parse_config
from auditdb.triggers import apply
from tests.fix_db import scalar
from tests.fix_server import Server

GENERATED, GENERIC = "gen", "gnr"  # the suffixes of each case's two schemas


@dataclass(frozen=True)
class Copy:
    """COPY … FROM STDIN of these rows ({s} is the schema)."""

    sql: str
    rows: tuple[tuple[Any, ...], ...]


@dataclass(frozen=True)
class Refused:
    """A statement both captures must refuse, the same way."""

    sql: str


Step = str | Copy | Refused


@dataclass(frozen=True)
class Case:
    """Tables made by `schema` in each schema ({s}), tracked by `config`, changed by `steps`."""

    id: str
    schema: str
    steps: tuple[Step, ...]
    config: str = ""  # the keys of the table's [tables."{s}.<table>"] section
    table: str = "things"
    defaults: str = ""  # the [defaults] section
    setup: str = ""  # run first; a feature the server lacks (extension, ICU, libxml) skips the case
    min_major: int = 0
    xfail: str | None = None
    xfail_if: Callable[[psycopg.Connection[Any]], bool] | None = None  # xfail only where this holds
    private: bool = False  # the schemas are not usable by PUBLIC


# The application's types and functions the cases use (made once, in the module's database).
SHARED = """
create type public.mood as enum ('happy', 'sad', 'meh');
create type public.level as enum ('low', 'medium_high_value');
create type public.floatrange as range (subtype = float8);
create type public.pair as (a int, m public.mood, t text);
create domain public.mood_d as public.mood;
create domain public.posint as int check (value > 0);
create domain public.short_text as varchar(10);
create domain public.money2 as numeric(10, 2);
create domain public.doc as jsonb check (jsonb_typeof(value) = 'object');
create domain public.tags as text[];
create domain public.yes_no as boolean;
create function public.drop_row() returns trigger language plpgsql as $$ begin return null; end $$;
"""

# 120 columns (more than the 50 pairs one jsonb_build_object call takes), text and int in turn.
WIDE = {i: "text" if i % 2 else "int" for i in range(1, 121)}

# Text that exercises quoting and escaping: quotes, backslash, control characters, 4-byte UTF-8,
# a right-to-left override, JSON and format() metacharacters.
NASTY = r"""E'it''s "q" \\ %s $1 {} \t tab \n nl \r cr \x01 \x1b[31m \x7f Zürich 日本 🎉 \u202e'"""

CASES: tuple[Case, ...] = (
    Case(
        "integers_and_numerics",
        "create table {s}.things (id int primary key, i2 smallint, i8 bigint, n numeric, n2 numeric(12, 2), "
        "f8 float8, f4 float4, m money)",
        (
            "insert into {s}.things values (1, 32767, 9223372036854775807, 10.0, 10.00, 'NaN', 'Infinity', 12.34)",
            "insert into {s}.things values "
            "(2, -32768, -9223372036854775808, '123456789012345678901234567890.123456789012345678901234567890', "
            "-0.01, '-Infinity', '-0', -1), "
            "(3, null, null, 'NaN', null, '-0', 'NaN', null), "
            "(4, 0, 0, '1e-300', 0, 2.2250738585072014e-308, 1.5, 0), "
            "(5, 1, 1, ('9' || repeat('0', 1000) || '.5')::numeric, 99999999.99, 1e308, 3.4e38, "
            "'-92233720368547758.08')",
            # Same values spelled otherwise: numeric scale, NaN, -0 against 0. Neither logs them.
            "update {s}.things set n = 10.00, n2 = 10.0 where id = 1",
            "update {s}.things set f8 = 'NaN', f4 = '+Infinity' where id = 1",
            "update {s}.things set f8 = 0, f4 = 'nan' where id = 3",
            "update {s}.things set n = n * 1000000, f8 = 1e307, i8 = i8 + 1 where id = 2",
            "update {s}.things set n = 'Infinity', n2 = null, m = 99999999.99 where id = 4",
            "update {s}.things set f4 = f4 + 0.1, m = m + 1::money",
            "delete from {s}.things where id in (1, 3)",
            "delete from {s}.things",
        ),
    ),
    Case(
        "text",
        'create table {s}.things (id int primary key, t text, vc varchar(20), ch char(5), c1 "char", nm name)',
        (
            f"insert into {{s}}.things values (1, {NASTY}, 'abc', 'ab', 'x', 'pg_class')",  # noqa: S608
            "insert into {s}.things values (2, '', '', '', '', ''), (3, null, null, null, null, null)",
            "update {s}.things set ch = 'ab   ' where id = 1",  # char(n) pads: the same value
            f"update {{s}}.things set t = {NASTY} where id = 1",  # noqa: S608 (the same value)
            "update {s}.things set t = t || '🙂' || E'\\u0002', vc = upper(vc), c1 = 'Y' where id = 1",
            "update {s}.things set t = null, vc = null where id = 2",
            "update {s}.things set t = '', nm = repeat('n', 70) where id = 3",
            "delete from {s}.things where id = 1",
            "delete from {s}.things",
        ),
    ),
    Case(
        "bytea_boolean_uuid",
        "create table {s}.things (id int primary key, b bytea, flag boolean, u uuid)",
        (
            r"insert into {s}.things values (1, '\x00ff10', true, 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11')",
            "insert into {s}.things values (2, '', false, null), "
            "(3, null, null, '00000000-0000-0000-0000-000000000000')",
            r"update {s}.things set b = b || '\x00'::bytea, flag = not flag",
            "update {s}.things set u = 'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11' where id = 1",  # the same uuid
            "update {s}.things set u = null, b = null where id = 1",
            "delete from {s}.things",
        ),
    ),
    Case(
        "dates_and_times",
        "create table {s}.things (id int primary key, d date, ts timestamp(3), tsz timestamptz, tm time, "
        "tmz timetz, iv interval)",
        (
            # Shown the same whatever the session's TimeZone, DateStyle and IntervalStyle.
            "select set_config('TimeZone', 'America/St_Johns', true), set_config('DateStyle', 'SQL, DMY', true), "
            "set_config('IntervalStyle', 'sql_standard', true); "
            "insert into {s}.things values (1, '2024-02-29', '2024-02-29 23:59:59.9994', '2024-03-10 02:30:00', "
            "'23:59:59.999999', '12:00:00+05:30', '1 year 2 mons 3 days 04:05:06.789')",
            "insert into {s}.things values (2, 'infinity', '-infinity', 'infinity', '00:00', '00:00-12', "
            "'-1 day +02:00'), (3, '4713-01-01 BC', '0001-01-01 00:00', '1970-01-01 00:00:00+00', '24:00:00', "
            "null, '0')",
            "select set_config('TimeZone', 'Pacific/Chatham', true); "
            "update {s}.things set tsz = tsz + interval '1 hour', iv = iv * 2, d = d + 1 where id = 1",
            "update {s}.things set tsz = tsz + interval '0 hours'",  # the same instants
            "update {s}.things set tmz = '13:30:00+07:00' where id = 1",  # the same UTC time, another zone
            "update {s}.things set iv = '1 year 2 mons 3 days 04:05:06.789' where id = 1",
            "update {s}.things set tm = null, ts = ts + '1 millisecond' where id = 3",
            "delete from {s}.things",
        ),
    ),
    Case(
        "interval_spelled_otherwise",
        "create table {s}.things (id int primary key, iv interval, ivs interval[])",
        (
            "insert into {s}.things values (1, '1 day', '{1 day, 1 mon}'), (2, '1 mon', null)",
            "update {s}.things set iv = '24 hours', ivs = '{24 hours, 30 days}' where id = 1",
            "update {s}.things set iv = '30 days' where id = 2",
        ),
    ),
    Case(
        "json_and_jsonb",
        "create table {s}.things (id int primary key, j json, jb jsonb)",
        (
            """insert into {s}.things values
               (1, '{"b": 1, "a": [1, 2, {"c": null}], "a": "dup"}', '{"b": 1, "a": {"x": [1, 2.50, "s"]}}'),
               (2, '[]', 'null'), (3, null, '"quo\\"te \\u00e9 \\n"'), (4, '1.0', '1.0e2')""",
            """update {s}.things set j = '{"a": "dup",   "b": 1}' where id = 1""",  # jsonb sees the same
            """update {s}.things set jb = '{"a": {"x": [1, 2.5, "s"]}, "b": 1}' where id = 1""",  # 2.50 = 2.5
            """update {s}.things set jb = jsonb_set(jb, '{a,x,0}', '"one"') where id = 1""",
            """update {s}.things set j = '{"deep": {"deeper": [[[]]], "k": "v"}}', jb = jb || '{"new": true}'""",
            "update {s}.things set jb = null where id = 2",
            "delete from {s}.things",
        ),
    ),
    Case(
        "xml",
        "create table {s}.things (id int primary key, x xml, xs xml[])",
        (
            """insert into {s}.things values (1, '<a b="1">text &amp; more</a>', '{<a/>,NULL}'),
               (2, xmlparse(document '<?xml version="1.0"?><doc><x/></doc>'), null), (3, null, '{}')""",
            """update {s}.things set x = '<a b="1">text &amp; more</a>' where id = 1""",
            """update {s}.things set x = '<a b="2"/>', xs = '{<a/>,<b/>}' where id = 1""",
            "update {s}.things set x = null where id = 2",
            "delete from {s}.things",
        ),
        setup="select xmlparse(content '<a/>')",  # skipped where the server was built without libxml
    ),
    Case(
        "geometry",
        "create table {s}.things (id int primary key, p point, b box, l lseg, pg polygon, c circle, pa path, "
        "ps point[])",
        (
            "insert into {s}.things values (1, '(1,2)', '(0,0),(1,1)', '[(0,0),(1,1)]', '((0,0),(1,1),(1,0))', "
            "'<(0,0),1>', '((0,0),(1,1))', '{\"(1,2)\",\"(3,4)\"}'), (2, null, null, null, null, null, null, null)",
            "update {s}.things set p = '(1,2)', pg = '((0,0),(1,1),(1,0))', ps = '{\"(1,2)\",\"(3,4)\"}'",  # same
            "update {s}.things set p = '(1.5,2)', l = '[(0,0),(1,2)]', pg = '((0,0),(2,2),(2,0))' where id = 1",
            # Different areas, radii and point counts: what PostgreSQL's = for these types looks at.
            "update {s}.things set b = '(0,0),(2,2)', c = '<(0,0),2>', pa = '[(0,0),(1,1),(2,2)]' where id = 1",
            "update {s}.things set ps = array_append(ps, '(5,6)'::point), p = '(0,0)' where id = 2",
            "delete from {s}.things",
        ),
    ),
    Case(
        "geometry_of_equal_measure",
        "create table {s}.things (id int primary key, b box, pa path, c circle)",
        (
            "insert into {s}.things values (1, '(0,0),(1,1)', '((0,0),(1,1))', '<(0,0),1>')",
            "update {s}.things set b = '(5,5),(6,6)', pa = '((5,5),(6,9))', c = '<(5,5),1>'",
        ),
    ),
    Case(
        "box_array",
        "create table {s}.things (id int primary key, boxes box[])",
        (
            "insert into {s}.things values (1, array['(0,0),(1,1)'::box])",
            "update {s}.things set boxes = array['(0,0),(2,2)'::box]",
        ),
    ),
    Case(
        "network",
        "create table {s}.things (id int primary key, ip inet, net cidr, mac macaddr, mac8 macaddr8)",
        (
            "insert into {s}.things values (1, '192.168.0.1/24', '10.0.0.0/8', '08:00:2b:01:02:03', "
            "'08:00:2b:01:02:03:04:05'), (2, '::1', '2001:db8::/32', null, null)",
            "update {s}.things set ip = '192.168.0.1/32' where id = 1",
            "update {s}.things set ip = '192.168.0.1' where id = 1",  # /32 is the default: the same
            "update {s}.things set ip = '::ffff:1.2.3.4', mac = '08-00-2B-01-02-04', net = '2001:db8:1::/48'",
            "delete from {s}.things",
        ),
    ),
    Case(
        "arrays",
        "create table {s}.things (id int primary key, ia int[], ta text[], m2 int[][], fa float8[], ja jsonb[], "
        "ua uuid[], na numeric[], ba bool[], da date[])",
        (
            r"""insert into {s}.things values (1, '{1,2,3}', '{"a",NULL,"c,d","e\"f","","NULL"}', '{{1,2},{3,4}}',
               '{NaN,-0,1.5,Infinity}', array['{"k":1}'::jsonb, 'null'], '{}', '{1.0,2.50}', '{t,f,NULL}',
               '{2024-01-01,infinity}'),
               (2, '{}', '{NULL}', '{{NULL,1}}', null, '{}', '{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}', null, '{}',
               null)""",
            "update {s}.things set ia = array_append(ia, 4), ta[2] = 'b', m2[1][1] = 9 where id = 1",
            "update {s}.things set na = '{1.00,2.5}', fa = '{NaN,0,1.5,Infinity}' where id = 1",  # the same
            "update {s}.things set ta = ta, ia = ia",
            "update {s}.things set ta = null, m2 = '{{1},{2},{3}}' where id = 2",
            "update {s}.things set m2 = '{1,2,3,4}' where id = 1",  # 2-D to 1-D
            "delete from {s}.things",
        ),
    ),
    Case(
        "array_lower_bounds",
        "create table {s}.things (id int primary key, ia int[])",
        (
            "insert into {s}.things values (1, '{1,2}')",
            "update {s}.things set ia = '[0:1]={1,2}'",
        ),
    ),
    Case(
        "domains",
        "create table {s}.things (id public.posint primary key, label public.short_text, amount public.money2, "
        "d public.doc, tg public.tags, ids public.posint[], flag public.yes_no)",
        (
            """insert into {s}.things values (1, 'one', 1.005, '{"a": 1}', '{x,NULL}', '{1,2}', true),
               (2, 'two', null, '{}', null, null, null)""",
            "update {s}.things set amount = 1.01 where id = 1",  # 1.005 was stored as 1.01: the same
            """update {s}.things set label = 'uno', d = d || '{"b": [2]}', ids = ids || 3::public.posint""",
            "update {s}.things set id = id + 10 where id = 1",
            "update {s}.things set flag = not flag, tg = '{}' where id = 11",
            "delete from {s}.things",
        ),
    ),
    Case(
        "enum_range_composite",
        "create table {s}.things (id int primary key, name text, m public.mood, ms public.mood[], "
        "r public.floatrange, p public.pair, md public.mood_d, ir int4range, dr daterange, tr tstzrange, "
        "mr int4multirange, rs public.floatrange[], pa public.pair[], fm public.floatmultirange)",
        (
            """insert into {s}.things values (1, 'Ann', 'happy', '{happy,sad,NULL}', '[1.5,2)', '(7,sad,"x,y")',
               'sad', '[1,5)', '[2024-01-01,2024-02-01)', '[2024-01-01 00:00+00,2024-01-02 00:00+00)',
               '{[1,3),[5,7)}', '{"[1,2)",empty}', '{"(1,happy,x)",NULL}', '{[1,2),[3,4)}'),
               (2, 'Bob', null, '{}', 'empty', '(,,)', null, 'empty', null, null, '{}', null, '{}', '{}')""",
            "update {s}.things set m = 'sad', p.a = 8 where id = 1",
            "update {s}.things set r = '[1.5,2.0)', ir = '[1,4]', mr = '{[1,3),[5,7)}' where id = 1",  # the same
            "update {s}.things set ms = array_append(ms, 'meh'), md = 'happy', rs = null, pa[2] = '(2,sad,y)', "
            "fm = '{[1,4)}'",
            "update {s}.things set p = null, r = '(,)', tr = '[2024-01-01 01:00+01,)' where id = 2",
            "update {s}.things set m = 'happy' where id = 1",
            "update {s}.things set m = 'sad', name = 'Ann!'",
            "delete from {s}.things",
        ),
        config="""name = "name || ' (' || coalesce(m, 'none') || ')'"
rules = [
  { on = "INSERT", when = "NEW.r = '[1.5,2)'", action = "SPAN_CREATED" },
  { on = "UPDATE", when = "OLD.m = 'happy' AND NEW.m = 'sad'", action = "MOOD_DROPPED" },
  { on = "UPDATE", when = "NEW.p <> OLD.p OR NEW.ms = '{happy,sad,NULL,meh}'", action = "PAIR_CHANGED" },
  { on = "DELETE", when = "OLD.md = 'happy'", action = "HAPPY_GONE" },
]
""",
    ),
    Case(
        "numrange_scale",
        "create table {s}.things (id int primary key, nr numrange)",
        (
            "insert into {s}.things values (1, '[1.0,2)')",
            "update {s}.things set nr = '[1.00,2)'",
        ),
    ),
    Case(
        "extension_types",
        "create table {s}.things (id public.citext primary key, email public.citext, names public.citext[], "
        "h public.hstore)",
        (
            """insert into {s}.things values ('Abc', 'Ann@Example.com', '{X,y}', 'b=>2, a=>"x y", n=>NULL'),
               ('def', null, '{}', null)""",
            """update {s}.things set h = 'a=>"x y", b=>2, n=>NULL' where id = 'abc'""",  # the same hstore
            "update {s}.things set h = h || 'c=>3'::public.hstore where id = 'abc'",
            "update {s}.things set email = 'ann@example.com' where id = 'abc'",  # case differs: shown, logged
            "update {s}.things set email = 'ann@example.com' where id = 'abc'",  # the same text
            "update {s}.things set id = 'ABC', names = '{x,Y}' where id = 'abc'",
            "update {s}.things set names = array_append(names, 'Z'::public.citext)",
            "delete from {s}.things",
        ),
        setup="create extension if not exists citext; create extension if not exists hstore",
    ),
    Case(
        "nondeterministic_collation",
        "create table {s}.things (id int primary key, handle text collate public.parity_ci)",
        (
            "insert into {s}.things values (1, 'alice')",
            "update {s}.things set handle = 'Alice'",
        ),
        setup="create collation if not exists public.parity_ci "
        "(provider = icu, locale = 'und-u-ks-level2', deterministic = false)",
    ),
    Case(
        "masks",
        "create table {s}.things (id int primary key, label text, password text, api_token text, short_token text, "
        "card_no bigint, pin int, my_secret jsonb, lvl_last public.level, secret_tags text[], token_u uuid, "
        "secret_mood public.mood, title text)",
        (
            """insert into {s}.things values (1, 'one', 'hunter2', 'tok_1234567890abcdef', 'abcd1234',
               4111111111111111, 1234, '{"k": "v"}', 'medium_high_value', '{a,b}',
               'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', 'sad', 'T'),
               (2, 'two', null, null, null, null, null, null, null, null, null, null, null)""",
            "update {s}.things set password = 'hunter3', pin = 4321 where id = 1",
            "update {s}.things set pin = pin, card_no = card_no",
            "update {s}.things set api_token = 'tok_zzzz', lvl_last = 'low', secret_mood = 'happy' where id = 1",
            """update {s}.things set password = '', my_secret = '{}', short_token = 'abcdefghi',
               token_u = null, secret_tags = '{}' where id = 1""",
            "update {s}.things set password = 'x', card_no = 42, lvl_last = 'medium_high_value', title = 'T2' "
            "where id = 2",
            "update {s}.things set password = null, api_token = null, card_no = null, pin = null where id = 1",
            "delete from {s}.things",
        ),
        defaults="""mask = ["password*", "*secret*"]
mask_last4 = ["*token*", "card*"]""",
        config="""mask = ["pin", "title"]
mask_last4 = ["lvl_last", "*_u"]
""",
    ),
    Case(
        "ignored_columns",
        "create table {s}.things (id int primary key, title text, updated_at timestamp, search_cache tsvector, "
        "hits int)",
        (
            "insert into {s}.things values (1, 'a', '2024-01-01', 'a b', 0), (2, 'b', null, null, null)",
            "update {s}.things set updated_at = '2024-01-02'",
            "update {s}.things set hits = coalesce(hits, 0) + 1, search_cache = 'c d' where id = 1",
            "update {s}.things set title = title || '!', updated_at = '2024-01-03', hits = 9",
            "update {s}.things set id = 3, updated_at = null where id = 2",
            "delete from {s}.things",
        ),
        defaults='ignore = ["updated_at"]',
        config='ignore = ["*_cache", "hits"]\n',
    ),
    Case(
        "ignored_column_name_ending_in_newline",
        'create table {s}.things (id int primary key, "hits\n" int, v int)',
        (
            "insert into {s}.things values (1, 0, 0)",
            'update {s}.things set "hits\n" = 1, v = 1',
        ),
        config='ignore = ["hits"]\n',
    ),
    Case(
        "composite_key",
        "create table {s}.things (tenant text, id int, m public.mood, note text, primary key (tenant, id, m))",
        (
            "insert into {s}.things values ('a', 1, 'happy', 'n1'), ('a', 2, 'sad', 'n2'), ('b', 1, 'happy', null)",
            "update {s}.things set note = 'x' where tenant = 'a' and id = 1",
            "update {s}.things set id = id + 10 where tenant = 'a'",
            "update {s}.things set m = 'meh', note = 'moved' where tenant = 'b'",
            "update {s}.things set tenant = tenant || '''q\"', note = null where id = 12",
            "delete from {s}.things where tenant = 'b'",
            "delete from {s}.things",
        ),
    ),
    Case(
        "text_key_changes",
        "create table {s}.things (code text primary key, v int)",
        (
            "insert into {s}.things select 'c' || g, g from generate_series(1, 5) g",
            "update {s}.things set code = code || '-x' where v <= 3",
            "update {s}.things set code = 'single' where v = 4",
            "update {s}.things set code = upper(code), v = v + 1",
            "update {s}.things set code = 'C1-X' where code = 'C1-X'",  # the key set to itself
            "delete from {s}.things where v > 3",
            "delete from {s}.things",
        ),
    ),
    Case(
        "explicit_id",
        "create table {s}.things (pk serial primary key, code text not null, version int not null, body text, "
        "unique (code, version))",
        (
            "insert into {s}.things (code, version, body) values ('doc', 1, 'v1'), ('doc', 2, 'v2')",
            "update {s}.things set body = body || '.' where version = 1",
            "update {s}.things set version = version + 10",
            "update {s}.things set pk = pk + 100 where version = 11",  # not the configured id: no previous_id
            "delete from {s}.things",
        ),
        config='id = ["code", "version"]\n',
    ),
    Case(
        "rules",
        "create table {s}.things (id int primary key, status text, amount numeric, flag boolean, m public.mood, "
        "password text, revoked_at timestamptz)",
        (
            """insert into {s}.things values (1, 'open', 5000, false, 'happy', 'p1', null),
               (2, 'open', 5, false, 'happy', 'p2', null), (3, 'open', -5, null, null, null, null)""",
            "insert into {s}.things values (4, 'open', 1, false, 'happy', null, null)",
            "update {s}.things set password = 'p9', m = 'sad' where id = 1",  # both rules match: the first wins
            "update {s}.things set revoked_at = '2024-01-01', status = 'closed-ok' where id in (1, 2)",
            "update {s}.things set m = 'sad', status = 'closed' where id = 2",
            "update {s}.things set status = 'closed-late' where id = 3",
            "update {s}.things set flag = true where id = 4",
            "update {s}.things set amount = amount + 1 where id = 4",  # no rule matches
            "update {s}.things set amount = amount * 2",
            "delete from {s}.things where id = 3",
            "delete from {s}.things",
        ),
        defaults='mask = ["password"]',
        config="""rules = [
  { on = "INSERT", when = "NEW.amount > 1000", action = "BIG_CREATED" },
  { on = "INSERT", when = "NEW.amount < 0", action = "NEGATIVE_CREATED" },
  { on = "UPDATE", when = "OLD.password <> NEW.password", action = "PASSWORD_CHANGED" },
  { on = "UPDATE", when = "OLD.revoked_at IS NULL AND NEW.revoked_at IS NOT NULL", action = "REVOKED" },
  { on = "UPDATE", when = "NEW.m = 'sad'", action = "MOOD_SAD" },
  { on = "UPDATE", when = "NEW.status LIKE 'closed%' OR NEW.flag", action = "CLOSED" },
  { on = "DELETE", when = "OLD.amount < 0", action = "NEGATIVE_DELETED" },
  { on = "DELETE", action = "REMOVED" },
]
""",
    ),
    Case(
        "name_expressions",
        "create table {s}.things (id int primary key, title text, code text, m public.mood, n numeric, label text)",
        (
            "insert into {s}.things values (1, ' Deploy ', 'abcdef', 'happy', 1.25, 'L'), "
            "(2, '', null, null, null, null), (3, null, 'x', 'sad', -2.5, 'M')",
            "update {s}.things set title = 'Rollback', m = 'meh' where id = 1",
            "update {s}.things set n = n * 10",
            "update {s}.things set id = id + 100 where id = 2",
            "delete from {s}.things",
        ),
        config="""name = '''coalesce(nullif(trim(title), ''), 'untitled') || ' #' || id || ' ' || upper(left(code, 3))
                 || ' ' || m || ' ' || round(n, 1) || lower(label)'''
""",
    ),
    Case(
        "default_name",
        "create table {s}.things (id int primary key, title text, label text, v int)",
        (
            "insert into {s}.things values (1, 'secret title', 'the label', 1)",
            "update {s}.things set label = 'relabelled', title = 'x'",
            "delete from {s}.things",
        ),
        config='mask = ["title"]\n',  # title is masked: the default name is label
    ),
    Case(
        "project_and_tenant",
        "create table {s}.things (id int primary key, tenant_id text, project_ref int, v text)",
        (
            "insert into {s}.things values (1, null, null, 'no context')",
            "select auditdb.set_context(actor_id => 'u1', tenant_id => 'ctx-t', project_id => 'ctx-p'); "
            "insert into {s}.things values (2, null, null, 'x'), (3, 't3', 7, 'y')",
            "select auditdb.set_context(actor_id => 'u2', tenant_id => 'ctx-t2'); update {s}.things set v = v || '!'",
            "update {s}.things set tenant_id = 't9', project_ref = null where id = 3",
            "select auditdb.set_context(actor_id => 'u3', project_id => 'ctx-p3'); delete from {s}.things where id = 3",
            "select auditdb.set_context(actor_id => 'u4', tenant_id => 'ctx-t4', project_id => 'ctx-p4'); "
            "truncate {s}.things",
        ),
        defaults='tenant = "tenant_id"',
        config='project = "project_ref"\n',
    ),
    Case(
        "project_and_tenant_of_other_types",
        "create table {s}.things (id int primary key, org uuid, proj public.mood, v int)",
        (
            "select auditdb.set_context(tenant_id => 'ctx-t', project_id => 'ctx-p'); "
            "insert into {s}.things values (1, 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', 'happy', 1), "
            "(2, null, null, 2)",
            "update {s}.things set v = v + 1, proj = 'sad'",
            "delete from {s}.things",
        ),
        config='project = "proj"\ntenant = "org"\n',
    ),
    Case(
        "soft_delete_boolean",
        "create table {s}.things (id int primary key, note text, is_deleted boolean)",
        (
            "insert into {s}.things values (1, 'a', false), (2, 'b', null), (3, 'c', false), (4, 'protected', false)",
            "update {s}.things set is_deleted = true where id = 1",
            "update {s}.things set is_deleted = true, note = note || '!' where id in (2, 3)",
            "update {s}.things set is_deleted = false where id = 1",
            "update {s}.things set is_deleted = true where note = 'protected'",
            "update {s}.things set note = 'still deleted' where id = 2",
            "update {s}.things set is_deleted = null where id = 3",
            "update {s}.things set is_deleted = true",
            "delete from {s}.things",
        ),
        config="""soft_delete = "is_deleted"
rules = [{ on = "UPDATE", when = "NEW.is_deleted AND OLD.note = 'protected'", action = "PROTECTED_DELETED" }]
""",
    ),
    # The same in both, though wrong in both: a domain over boolean is not boolean to apply (auditdb/triggers.py
    # compares type_oid with BOOL_OID), so null to false is logged as DELETE and false to true as UPDATE.
    Case(
        "soft_delete_domain_over_boolean",
        "create table {s}.things (id int primary key, gone public.yes_no)",
        (
            "insert into {s}.things values (1, null), (2, false), (3, null)",
            "update {s}.things set gone = false where id = 1",
            "update {s}.things set gone = true where id = 2",
            "update {s}.things set gone = true where id = 3",
        ),
        config='soft_delete = "gone"\n',
    ),
    Case(
        "name_expression_failing",
        "create table {s}.things (id int primary key, title text)",
        (
            "insert into {s}.things values (1, '7')",
            Refused("insert into {s}.things values (2, 'seven')"),
            Refused("update {s}.things set title = 'x'"),
            "update {s}.things set title = '8'",
        ),
        config='name = "(title)::int + 1"\n',
    ),
    Case(
        "soft_delete_timestamp",
        "create table {s}.things (id int primary key, note text, deleted_at timestamptz)",
        (
            "insert into {s}.things values (1, 'a', null), (2, 'b', null), (3, 'c', '2024-01-01')",
            "update {s}.things set deleted_at = '2024-02-01 10:00+00' where id = 1",
            "update {s}.things set deleted_at = '2024-02-02 10:00+00' where id = 1",  # already deleted: UPDATE
            "update {s}.things set deleted_at = null where id = 1",
            "update {s}.things set deleted_at = '2024-03-01' where deleted_at is null",
            "update {s}.things set note = 'x' where id = 3",
            "delete from {s}.things",
        ),
        config='soft_delete = "deleted_at"\n',
    ),
    Case(
        "partitioned",
        """create table {s}.orders (id int, region text, amount int, code text, primary key (id, region))
               partition by list (region);
           create table {s}.orders_eu partition of {s}.orders for values in ('eu') partition by range (id);
           create table {s}.orders_eu_low partition of {s}.orders_eu for values from (minvalue) to (100);
           create table {s}.orders_eu_high partition of {s}.orders_eu for values from (100) to (maxvalue);
           create table {s}.orders_us partition of {s}.orders for values in ('us');
           create table {s}.orders_asia (code text, junk int, amount int, region text not null, id int not null);
           alter table {s}.orders_asia drop column junk;
           alter table {s}.orders attach partition {s}.orders_asia for values in ('asia');
           create table {s}.orders_rest partition of {s}.orders default""",
        (
            """insert into {s}.orders select g, (array['eu', 'us', 'asia', 'xx'])[g % 4 + 1], g * 10, 'c' || g
               from generate_series(1, 40) g""",
            "insert into {s}.orders values (150, 'eu', 1, 'c150')",
            "update {s}.orders set amount = amount + 1 where id <= 8",
            """update {s}.orders
                  set region = case when id % 3 = 0 then 'us' when id % 3 = 1 then 'asia' else region end,
                      id = case when region = 'eu' then id + 100 else id end,
                      amount = amount + 1
                where id % 2 = 0""",
            "update {s}.orders set id = id - 100 where code = 'c150'",  # moves within the eu sub-partitions
            "update {s}.orders_us set amount = 0 where id < 10",
            "insert into {s}.orders_eu_low values (7, 'eu', 70, 'direct')",
            "delete from {s}.orders_asia where id < 20",
            "create table {s}.orders_new partition of {s}.orders for values in ('new')",
            "update {s}.orders set region = 'new' where id in (9, 13)",
            "truncate {s}.orders_us",
            "truncate {s}.orders_eu",
            "delete from {s}.orders where id > 30",
            "truncate {s}.orders",
        ),
        table="orders",
        config='name = "code"\n',
    ),
    Case(
        "partition_drops_moving_rows",
        """create table {s}.orders (id int, region text, amount int, code text, primary key (id, region))
               partition by list (region);
           create table {s}.orders_eu partition of {s}.orders for values in ('eu');
           create table {s}.orders_us partition of {s}.orders for values in ('us');
           create table {s}.orders_rest partition of {s}.orders default;
           create trigger no_rest before insert on {s}.orders_rest for each row execute function public.drop_row()""",
        (
            "insert into {s}.orders values (1, 'eu', 1, 'c1'), (2, 'eu', 2, 'c2'), (3, 'us', 3, 'c3')",
            "update {s}.orders set region = case when id = 1 then 'zz' else region end, amount = amount + 1",
            "update {s}.orders set region = 'zz' where id = 2",
            "update {s}.orders set region = 'eu', amount = 0 where id = 3",
        ),
        table="orders",
        config='name = "code"\n',
    ),
    Case(
        "insert_on_conflict",
        "create table {s}.things (k text primary key, v int, note text)",
        (
            "insert into {s}.things values ('a', 1, null), ('b', 2, 'n')",
            "insert into {s}.things values ('a', 10), ('c', 3) on conflict (k) do update set v = excluded.v",
            "insert into {s}.things values ('a', 99), ('d', 4) on conflict do nothing",
            "insert into {s}.things values ('a', 0) on conflict (k) do update set v = {s}.things.v",  # no change
            "insert into {s}.things values ('b', 0) on conflict (k) do update set v = 5 where false",
            "insert into {s}.things values ('a', 11), ('b', 12), ('c', 13) "
            "on conflict (k) do update set v = excluded.v, note = coalesce({s}.things.note, '') || 'u'",
            "insert into {s}.things values ('e', 1) on conflict (k) do update set v = 0",
        ),
    ),
    Case(
        "merge",
        "create table {s}.things (k text primary key, v int)",
        (
            "insert into {s}.things values ('a', 1), ('b', 2), ('d', 4), ('e', 5)",
            """merge into {s}.things t using (values ('a', 10), ('b', 20), ('c', 30), ('d', null)) s(k, v)
               on t.k = s.k
               when matched and s.v is null then delete
               when matched then update set v = s.v
               when not matched then insert values (s.k, s.v)""",
            """merge into {s}.things t using (values ('a', 10), ('z', 1)) s(k, v) on t.k = s.k
               when matched then update set v = s.v when not matched then do nothing""",
            """merge into {s}.things t using (select k, v from {s}.things) s on t.k = s.k
               when matched and s.k = 'e' then update set k = 'e2'
               when matched then do nothing""",
        ),
        min_major=15,
    ),
    Case(
        "merge_not_matched_by_source",
        "create table {s}.things (k text primary key, v int)",
        (
            "insert into {s}.things values ('a', 1), ('b', 2), ('c', 3)",
            """merge into {s}.things t using (values ('a', 10)) s(k, v) on t.k = s.k
               when matched then update set v = s.v
               when not matched by source and t.k = 'b' then update set v = -1
               when not matched by source then delete""",
        ),
        min_major=17,
    ),
    Case(
        "copy",
        "create table {s}.things (id int primary key, t text, j jsonb, ia int[], ts timestamptz)",
        (
            Copy("copy {s}.things (id, t, j, ia) from stdin", ((1, "one\ttab\\back\nnl 🎉", '{"a": [1]}', "{1,2}"),)),
            Copy(
                "copy {s}.things from stdin",
                (
                    (2, None, None, None, "2024-01-01 00:00+05"),
                    (3, "", "null", "{}", None),
                    (4, "q\"uote's", '"s"', "{NULL}", "infinity"),
                ),
            ),
            Copy("copy {s}.things (id) from stdin", ()),
            "update {s}.things set t = coalesce(t, '') || '.'",
        ),
    ),
    Case(
        "truncate",
        "create table {s}.things (id serial primary key, v text)",
        (
            "insert into {s}.things (v) values ('a'), ('b')",
            "select auditdb.set_context(actor_id => 'u1', actor_email => 'a@example.com', tenant_id => 't', "
            "project_id => 'p', request_id => 'r1', ip => '203.0.113.7'); truncate {s}.things",
            "truncate {s}.things restart identity",  # empty: still logged
            "insert into {s}.things (v) values ('c')",
            "begin; truncate {s}.things; rollback",  # rolled back: nothing
        ),
    ),
    Case(
        "context",
        "create table {s}.things (id int primary key, v text, b bytea)",
        (
            r"insert into {s}.things values (1, 'no context', '\xdead')",
            "select auditdb.set_context(actor_id => 'u42', actor_email => 'ann@example.com', actor_name => 'Ann "
            "Ö''Brien', ip => '2001:db8::1', user_agent => 'Mozilla/5.0 (X11)', tenant_id => 't1', "
            "project_id => 'p1', request_id => 'req-9'); "
            "insert into {s}.things values (2, 'ctx', null); update {s}.things set v = v || '!'; "
            "delete from {s}.things where id = 2",
            # Set behind set_context's back: cut to their bounds, a bad address kept as invalid_ip.
            "select set_config('auditdb.ip', 'not-an-ip', true), set_config('auditdb.actor_id', repeat('a', 300), "
            "true), set_config('auditdb.user_agent', repeat('u', 2000), true), set_config('auditdb.request_id', "
            "repeat('r', 300), true), set_config('auditdb.actor_email', repeat('e', 400), true), "
            "set_config('auditdb.actor_name', repeat('n', 300), true), set_config('auditdb.tenant_id', "
            "repeat('t', 300), true), set_config('auditdb.project_id', repeat('p', 300), true); "
            "update {s}.things set v = 'bounded'",
            "select set_config('auditdb.ip', repeat('1', 100), true); update {s}.things set v = 'long ip'",
            "select set_config('auditdb.ip', '10.1.2.3/8', true), set_config('auditdb.actor_id', '', true); "
            "update {s}.things set v = 'cidr ip'",
            # bytea_output is the session's: both captures show what it says.
            r"select set_config('bytea_output', 'escape', true); update {s}.things set b = '\x00ff'",
            "begin; select auditdb.set_context(actor_id => 'sp'); insert into {s}.things values (3, 'kept', null); "
            "savepoint a; update {s}.things set v = 'undone'; rollback to savepoint a; "
            "update {s}.things set v = 'done' where id = 3; commit",
            "begin; insert into {s}.things values (4, 'rolled back', null); rollback",
        ),
    ),
    Case(
        "require_actor",
        "create table {s}.things (id int primary key, v text)",
        (
            Refused("insert into {s}.things values (1, 'no actor')"),
            "select auditdb.set_context(actor_id => 'u1'); insert into {s}.things values (1, 'actor')",
            Refused("update {s}.things set v = 'again'"),
            "update {s}.things set v = 'unchanged' where false",  # no row: nothing to refuse
            "select auditdb.set_context(actor_id => 'u1'); update {s}.things set v = 'again'",
            Refused("truncate {s}.things"),
            "select auditdb.set_context(actor_id => 'u1'); truncate {s}.things",
        ),
        defaults='require_actor = true\nsystem_roles = ["parity_no_such_role"]',
    ),
    Case(
        "multi_row_statements",
        "create table {s}.things (id int primary key, v int, note text)",
        (
            "insert into {s}.things select g, g % 3, null from generate_series(1, 50) g",
            "update {s}.things set v = case when id % 2 = 0 then v + 1 else v end",  # half of them change
            "update {s}.things set note = 'n' where id between 10 and 12",
            "update {s}.things set v = v",  # no change: nothing logged
            "with gone as (delete from {s}.things where id > 45 returning *) "
            "insert into {s}.things select id + 100, v, 'moved' from gone",
            "delete from {s}.things where id % 5 = 0",
            "delete from {s}.things where id = 1",
            "delete from {s}.things",
        ),
    ),
    Case(
        "wide_table",
        f"create table {{s}}.things (id int primary key, {', '.join(f'c{i} {WIDE[i]}' for i in WIDE)})",
        (
            f"insert into {{s}}.things (id, {', '.join(f'c{i}' for i in WIDE)}) "  # noqa: S608
            f"values (1, {', '.join(f'{i}' for i in WIDE)}), (2, {', '.join('null' for _ in WIDE)})",
            f"update {{s}}.things set {', '.join(f'c{i} = c{i} || {i}' for i in WIDE if WIDE[i] == 'text')}",  # noqa: S608
            "update {s}.things set c120 = 0, c61 = 'sixty-one' where id = 1",
            "delete from {s}.things",
        ),
        config='ignore = ["c11?"]\nmask = ["c5?"]\n',
    ),
    Case(
        "unusual_column_names",
        """create table {s}.things ("ID" int primary key, "Mixed Case" text, "with space" text, "quote""d" int,
           "%s" text, "$1" text, n int, o int, c int, kind text, meta jsonb, row_count int, "new" text,
           "select" text, "ünï" text, "a.b" text, "my secret" text, auditdb_new int)""",
        (
            """insert into {s}.things values (1, 'M', 'sp', 1, '%s', '$1', 1, 2, 3, 'k', '{}', 5, 'new', 'sel',
               'ü', 'ab', 'hidden', 7), (2, null, null, null, null, null, null, null, null, null, null, null,
               null, null, null, null, null, null)""",
            """update {s}.things set "Mixed Case" = 'MM', "quote""d" = 2, "%s" = '%I', n = n + 1,
               "my secret" = 'still hidden', auditdb_new = 8 where "ID" = 1""",
            """update {s}.things set "ID" = "ID" + 10, o = coalesce(o, 0) + 1, kind = 'kk'""",
            """delete from {s}.things where "ID" = 11""",
            "delete from {s}.things",
        ),
        config="""name = '''"with space" || ' ' || "Mixed Case"'''
mask = ["*secret*"]
rules = [{ on = "UPDATE", when = '''NEW."quote""d" > OLD."quote""d"''', action = "QUOTED_UP" }]
""",
    ),
    Case(
        "stored_generated_column",
        "create table {s}.things (id int primary key, qty int, price numeric, "
        "total numeric generated always as (qty * price) stored)",
        (
            "insert into {s}.things (id, qty, price) values (1, 2, 1.50), (2, null, 3)",
            "update {s}.things set qty = 3 where id = 1",
            "update {s}.things set price = price",
            "delete from {s}.things",
        ),
    ),
    Case(
        "virtual_generated_column",
        "create table {s}.things (id int primary key, qty int, price numeric, "
        "total numeric generated always as (qty * price) virtual)",
        (
            "insert into {s}.things (id, qty, price) values (1, 2, 1.50), (2, null, 3)",
            "update {s}.things set qty = 3 where id = 1",
            "delete from {s}.things",
        ),
        min_major=18,
    ),
    Case(
        "exotic_builtin_types",
        """create table {s}.things (id int primary key, bt bit(4), vb varbit, tsv tsvector, tsq tsquery, jp jsonpath,
           snap pg_snapshot, lsn pg_lsn, o oid, rc regclass, rt regtype, i2v int2vector, xids xid[], acl aclitem[],
           tids tid[], ln line, ps polygon[], js json[])""",
        (
            """insert into {s}.things values (1, '1010', '101', 'b a a', 'a & !b', '$.a[*] ? (@ > 1)',
               '10:20:10,14,15', '16/B374D848', 1259, 'pg_class', 'int4', '1 2', '{1,2}',
               '{postgres=r/postgres}', '{"(0,1)"}', '{1,-1,0}', '{"((0,0),(1,1),(1,0))"}', '{"{\\"a\\": 1}"}'),
               (2, null, null, null, null, null, null, null, null, null, null, null, null, null, null, null,
               null, null)""",
            "update {s}.things set tsv = 'a b', rc = 'pg_catalog.pg_class', rt = 'integer'",  # the same values
            """update {s}.things set bt = '0101', vb = '1', tsv = 'c', tsq = 'c', jp = '$.b', snap = '10:21:',
               lsn = '16/B374D849', o = 1, rc = 'auditdb.log', rt = 'text', i2v = '1 3', xids = '{3}',
               acl = '{postgres=w/postgres}', tids = '{"(0,2)"}', ln = '{1,-1,1}', ps = '{"((0,0),(2,2),(2,0))"}',
               js = '{"[]"}' where id = 1""",
            "delete from {s}.things",
        ),
    ),
    Case(
        "column_named_auditdb_pair",
        "create table {s}.things (id int primary key, auditdb_pair int)",
        (
            "insert into {s}.things values (1, 1), (2, 2)",
            "update {s}.things set auditdb_pair = 10 where id = 1",
        ),
    ),
    Case(
        "truncate_partition_in_private_schema",
        """create table {s}.orders (id int, region text, primary key (id, region)) partition by list (region);
           create table {s}.orders_eu partition of {s}.orders for values in ('eu');
           create table {s}.orders_us partition of {s}.orders for values in ('us')""",
        (
            "insert into {s}.orders values (1, 'eu'), (2, 'us')",
            "truncate {s}.orders_eu",
            "truncate {s}.orders",
        ),
        table="orders",
        private=True,
    ),
    Case(
        "table_named_like_a_newer_keyword",
        "create table {s}.json (id int primary key, v text)",
        (
            "insert into {s}.json values (1, 'a')",
            "update {s}.json set v = 'b'",
        ),
        table="json",
    ),
)

ENTRY_SQL = """
select action, entity_type, entity_id, entity_name, project_id, tenant_id, actor_id, actor_email, actor_name,
       ip::text as ip, user_agent, table_name, changes::text as changes,
       (metadata - 'capture' - 'capture_warning')::text as metadata,
       metadata->>'capture' as capture, metadata->>'capture_warning' as capture_warning
  from auditdb.log
 where id > %s and action <> 'AUDIT_CHANGED' and starts_with(table_name, %s)
 order by id"""


@pytest.fixture(scope="module")
def parity_conn(pg_server: Server, template_db: str) -> Iterator[psycopg.Connection[Any]]:
    """One database with auditdb and the application's types, for all the cases on a server."""
    name = f"parity_{os.getpid()}"
    janitor = DatabaseJanitor(
        user=pg_server.user, host=pg_server.host, port=pg_server.port, dbname=name, template_dbname=template_db
    )
    janitor.init()
    try:
        with psycopg.connect(pg_server.dsn(name), autocommit=True) as conn:
            conn.execute(SHARED)
            yield conn
    finally:
        janitor.drop()


def _entries(conn: psycopg.Connection[Any], since: int, schema: str) -> list[dict[str, Any]]:
    """The entries a schema's table wrote since an id, without the schema and the generic's own keys."""
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(ENTRY_SQL, (since, f"{schema}.")).fetchall()
    out = []
    for row in rows:
        assert row.pop("capture") == ("generic" if schema.endswith(GENERIC) else None), row
        assert row.pop("capture_warning") is None, row  # nothing skipped: no column the config uses changed
        row["table_name"] = row["table_name"].removeprefix(f"{schema}.")
        row["metadata"] = row["metadata"].replace(f'"{schema}.', '"{s}.')  # metadata.partition
        out.append(row)
    return sorted(out, key=lambda e: json.dumps(e, sort_keys=True))


def _run(conn: psycopg.Connection[Any], step: Step, schema: str) -> tuple[Any, ...]:
    """Run a step on one schema's table: the entries it wrote, or how it failed."""
    since = scalar(conn, "select coalesce(max(id), 0) from auditdb.log")
    try:
        if isinstance(step, Copy):
            with conn.cursor().copy(step.sql.replace("{s}", schema)) as copy:
                for row in step.rows:
                    copy.write_row(row)
        else:
            conn.execute((step.sql if isinstance(step, Refused) else step).replace("{s}", schema))
    except psycopg.Error as e:
        if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            conn.execute("rollback")
        return ("error", e.sqlstate, str(e.diag.message_primary).replace(f"{schema}.", "{s}."))
    return ("entries", _entries(conn, since, schema))


def _rows(conn: psycopg.Connection[Any], schema: str, table: str) -> list[str]:
    """The table's rows as text: both tables must end up the same."""
    query = sql.SQL("select format('%s', t) from {}.{} t order by 1").format(sql.Identifier(schema), sql.SQL(table))
    return [r[0] for r in conn.execute(query).fetchall()]


def _toml(case: Case, schemas: tuple[str, str]) -> str:
    parts = [f"[defaults]\n{case.defaults}\n"] if case.defaults else []
    parts += [f"[tables.'{s}.{case.table}']\n{case.config}" for s in schemas]
    return "\n".join(parts)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_generic_capture_writes_what_generated_capture_writes(
    case: Case, parity_conn: psycopg.Connection[Any], pg_server: Server, request: pytest.FixtureRequest
) -> None:
    conn = parity_conn
    if pg_server.major < case.min_major:
        pytest.skip(f"needs PostgreSQL {case.min_major}")
    if case.setup:
        try:
            conn.execute(case.setup)
        except (psycopg.errors.FeatureNotSupported, psycopg.errors.UndefinedFile) as e:
            pytest.skip(f"not available on this server: {e.diag.message_primary}")
    if case.xfail and (case.xfail_if is None or case.xfail_if(conn)):
        request.applymarker(pytest.mark.xfail(strict=True, reason=case.xfail))
    generated, generic = schemas = (f"{case.id}_{GENERATED}", f"{case.id}_{GENERIC}")
    for schema in schemas:
        conn.execute(sql.SQL("create schema {}").format(sql.Identifier(schema)))
        if not case.private:  # usable by everyone, as schema public is
            conn.execute(sql.SQL("grant usage on schema {} to public").format(sql.Identifier(schema)))
        conn.execute(case.schema.replace("{s}", schema))
    # Each case tracks its own two tables only: the previous case's leave (removing needs remove=True).
    apply(conn, parse_config(tomllib.loads(_toml(case, schemas))), remove=True)
    # Any change of the table's columns gives its capture function the generic body; the column goes again.
    conn.execute(f"alter table {generic}.{case.table} add column auditdb_parity_switch int")
    conn.execute(f"alter table {generic}.{case.table} drop column auditdb_parity_switch")
    kinds = conn.execute("""
        select n.nspname::text, pg_catalog.obj_description(p.oid, 'pg_proc') = 'auditdb:generic'
          from auditdb.tracked_tables t
          join pg_class c on c.oid = t.relid join pg_namespace n on n.oid = c.relnamespace
          join pg_proc p on p.proname = t.function_name and p.pronamespace = 'auditdb'::regnamespace""").fetchall()
    assert dict(kinds) == {generated: False, generic: True}

    written = 0
    for step in case.steps:
        by_generated, by_generic = (_run(conn, step, s) for s in schemas)
        assert by_generic == by_generated, step
        assert (by_generated[0] == "error") == isinstance(step, Refused), (step, by_generated)
        written += len(by_generated[1]) if by_generated[0] == "entries" else 0
    assert written > 0
    assert _rows(conn, generic, case.table) == _rows(conn, generated, case.table)
