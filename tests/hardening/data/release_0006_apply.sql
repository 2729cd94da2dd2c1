-- What `auditdb apply` of release 0006 (commit 1fc8c71) ran for public.tickets, with /tmp/old.toml:
-- [defaults]
-- mask = ["password*"]
-- 
-- [tables."public.tickets"]
-- name = "title"
-- rules = [{ on = "UPDATE", when = "OLD.state IS DISTINCT FROM NEW.state", action = "TICKET_STATE_CHANGED" }]
set local role auditdb_owner;
create or replace function "auditdb"."auditdb_capture_tickets_3e77342a1c"() returns trigger
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
-- Values are rendered the same whatever the session's time zone and styles.
set timezone = 'UTC'
set datestyle = 'ISO, YMD'
set intervalstyle = 'postgres'
set extra_float_digits = 1
-- Compiling the capture query costs more than it saves: a 20,000-row UPDATE spent 0.4 s in JIT.
set jit = off
as $auditdb$
-- Every column reference below is qualified (n., o., c.); an unqualified name is a variable,
-- whatever columns the table has.
#variable_conflict use_variable
declare
    ctx_actor_id text := nullif(current_setting('auditdb.actor_id', true), '');
    ctx_actor_email text := nullif(current_setting('auditdb.actor_email', true), '');
    ctx_actor_name text := nullif(current_setting('auditdb.actor_name', true), '');
    ctx_user_agent text := nullif(current_setting('auditdb.user_agent', true), '');
    ctx_tenant_id text := nullif(current_setting('auditdb.tenant_id', true), '');
    ctx_project_id text := nullif(current_setting('auditdb.project_id', true), '');
    ctx_request_id text := nullif(current_setting('auditdb.request_id', true), '');
    ctx_ip_text text := nullif(current_setting('auditdb.ip', true), '');
    ctx_ip inet;
    meta jsonb := '{}';
    row_count bigint;
    kind text;
    del_kind text;
    new_count bigint;
begin
    if tg_op = 'TRUNCATE' then        row_count := 0;
    elsif tg_op = 'INSERT' then
        select count(*) into row_count from auditdb_new;
    elsif tg_op = 'UPDATE' then
        -- Both counts in one statement: a single-row UPDATE pays for one query here, not two.
        select (select count(*) from auditdb_old), (select count(*) from auditdb_new) into row_count, new_count;
    else
        select count(*) into row_count from auditdb_old;
    end if;
    if row_count = 0 and tg_op <> 'TRUNCATE' then
        return null;
    end if;    if ctx_request_id is not null then
        meta := jsonb_build_object('request_id', ctx_request_id);
    end if;
    if ctx_ip_text is not null then
        ctx_ip := auditdb.context_ip();
        if ctx_ip is null then
            meta := meta || jsonb_build_object('invalid_ip', ctx_ip_text);
        end if;
    end if;
    if row_count > 1 then
        meta := meta || jsonb_build_object('rows', row_count);
    end if;

    if tg_op = 'INSERT' then
        kind := case when row_count > 1 then 'BULK_CREATE' else 'CREATE' end;
        insert into auditdb.log (action, entity_type, entity_id, entity_name, project_id, tenant_id, actor_id,
                                 actor_email, actor_name, ip, user_agent, table_name, changes, metadata)
        select kind,
               'Ticket', n."id"::text, (n.title)::text,
               ctx_project_id, ctx_tenant_id,
               ctx_actor_id, ctx_actor_email, ctx_actor_name, ctx_ip, ctx_user_agent, 'public.tickets',
               jsonb_build_object('id', jsonb_build_object('new', n."id"), 'title', jsonb_build_object('new', n."title"), 'state', jsonb_build_object('new', n."state"), 'password_hash', jsonb_build_object('new', case when n."password_hash" is null then null else '***' end)),
               meta
          from auditdb_new n;
    elsif tg_op = 'UPDATE' then
        kind := case when row_count > 1 then 'BULK_UPDATE' else 'UPDATE' end;
        del_kind := case when row_count > 1 then 'BULK_DELETE' else 'DELETE' end;
        if row_count = 1 and new_count = 1 then
            -- One row each side: nothing to pair (the common single-row UPDATE, kept cheap).
            insert into auditdb.log (action, entity_type, entity_id, entity_name, project_id, tenant_id, actor_id,
                                     actor_email, actor_name, ip, user_agent, table_name, changes, metadata)
            select c.action, 'Ticket', c.entity_id, c.entity_name, c.project_id, c.tenant_id,
                   ctx_actor_id, ctx_actor_email, ctx_actor_name, ctx_ip, ctx_user_agent, 'public.tickets',
                   c.changes,
                   case when c.previous_id is distinct from c.entity_id
                        then meta || jsonb_build_object('previous_id', c.previous_id)
                        else meta
                   end
              from (
                select case when o.state IS DISTINCT FROM n.state then 'TICKET_STATE_CHANGED' else kind end as action,
                       n."id"::text as entity_id,
                       o."id"::text as previous_id,
                       (n.title)::text as entity_name,
                       ctx_project_id as project_id,
                       ctx_tenant_id as tenant_id,
                       false as soft_deleted,
                       case when o."id" is distinct from n."id" then jsonb_build_object('id', jsonb_build_object('old', o."id", 'new', n."id")) else '{}'::jsonb end
                       || case when o."title" is distinct from n."title" then jsonb_build_object('title', jsonb_build_object('old', o."title", 'new', n."title")) else '{}'::jsonb end
                       || case when o."state" is distinct from n."state" then jsonb_build_object('state', jsonb_build_object('old', o."state", 'new', n."state")) else '{}'::jsonb end
                       || case when o."password_hash" is distinct from n."password_hash" then jsonb_build_object('password_hash', jsonb_build_object('old', case when o."password_hash" is null then null else '***' end, 'new', case when n."password_hash" is null then null else '***' end)) else '{}'::jsonb end
                       as changes
                  from auditdb_old o cross join auditdb_new n
                -- offset 0 keeps this subquery whole, so changes is built once per row, not again in the filter.
                offset 0
              ) c
             where c.changes <> '{}'::jsonb or c.soft_deleted;
        elsif new_count = row_count then
            -- Old and new rows pair by their position in the transition tables: the executor
            -- appends each updated row's old and new versions together, including rows that
            -- move between partitions, so pairing holds even when the key changes.
            insert into auditdb.log (action, entity_type, entity_id, entity_name, project_id, tenant_id, actor_id,
                                     actor_email, actor_name, ip, user_agent, table_name, changes, metadata)
            select c.action, 'Ticket', c.entity_id, c.entity_name, c.project_id, c.tenant_id,
                   ctx_actor_id, ctx_actor_email, ctx_actor_name, ctx_ip, ctx_user_agent, 'public.tickets',
                   c.changes,
                   case when c.previous_id is distinct from c.entity_id
                        then meta || jsonb_build_object('previous_id', c.previous_id)
                        else meta
                   end
              from (
                select case when o.state IS DISTINCT FROM n.state then 'TICKET_STATE_CHANGED' else kind end as action,
                       n."id"::text as entity_id,
                       o."id"::text as previous_id,
                       (n.title)::text as entity_name,
                       ctx_project_id as project_id,
                       ctx_tenant_id as tenant_id,
                       false as soft_deleted,
                       case when o."id" is distinct from n."id" then jsonb_build_object('id', jsonb_build_object('old', o."id", 'new', n."id")) else '{}'::jsonb end
                       || case when o."title" is distinct from n."title" then jsonb_build_object('title', jsonb_build_object('old', o."title", 'new', n."title")) else '{}'::jsonb end
                       || case when o."state" is distinct from n."state" then jsonb_build_object('state', jsonb_build_object('old', o."state", 'new', n."state")) else '{}'::jsonb end
                       || case when o."password_hash" is distinct from n."password_hash" then jsonb_build_object('password_hash', jsonb_build_object('old', case when o."password_hash" is null then null else '***' end, 'new', case when n."password_hash" is null then null else '***' end)) else '{}'::jsonb end
                       as changes
                  from (select row_number() over () as auditdb_pair, t.* from auditdb_old t) o
                  join (select row_number() over () as auditdb_pair, t.* from auditdb_new t) n
                    on n.auditdb_pair = o.auditdb_pair
                -- offset 0 keeps this subquery whole, so changes is built once per row, not again in the filter.
                offset 0
              ) c
             where c.changes <> '{}'::jsonb or c.soft_deleted;
        else
            -- Fewer new rows than old: a BEFORE INSERT trigger on a partition dropped rows that
            -- were moving, so positions no longer pair. Pair by key instead; an old row with no
            -- partner is gone (DELETE), a new one with none appeared (CREATE). Nothing is lost.
            insert into auditdb.log (action, entity_type, entity_id, entity_name, project_id, tenant_id, actor_id,
                                     actor_email, actor_name, ip, user_agent, table_name, changes, metadata)
            select c.action, 'Ticket', c.entity_id, c.entity_name, c.project_id, c.tenant_id,
                   ctx_actor_id, ctx_actor_email, ctx_actor_name, ctx_ip, ctx_user_agent, 'public.tickets',
                   c.changes,
                   case when c.previous_id is distinct from c.entity_id
                        then (meta || '{"pairing": "key"}'::jsonb) || jsonb_build_object('previous_id', c.previous_id)
                        else (meta || '{"pairing": "key"}'::jsonb)
                   end
              from (
                select case when o.state IS DISTINCT FROM n.state then 'TICKET_STATE_CHANGED' else kind end as action,
                       n."id"::text as entity_id,
                       o."id"::text as previous_id,
                       (n.title)::text as entity_name,
                       ctx_project_id as project_id,
                       ctx_tenant_id as tenant_id,
                       false as soft_deleted,
                       case when o."id" is distinct from n."id" then jsonb_build_object('id', jsonb_build_object('old', o."id", 'new', n."id")) else '{}'::jsonb end
                       || case when o."title" is distinct from n."title" then jsonb_build_object('title', jsonb_build_object('old', o."title", 'new', n."title")) else '{}'::jsonb end
                       || case when o."state" is distinct from n."state" then jsonb_build_object('state', jsonb_build_object('old', o."state", 'new', n."state")) else '{}'::jsonb end
                       || case when o."password_hash" is distinct from n."password_hash" then jsonb_build_object('password_hash', jsonb_build_object('old', case when o."password_hash" is null then null else '***' end, 'new', case when n."password_hash" is null then null else '***' end)) else '{}'::jsonb end
                       as changes
                  from auditdb_old o join auditdb_new n on o."id" is not distinct from n."id"
                -- offset 0 keeps this subquery whole, so changes is built once per row, not again in the filter.
                offset 0
              ) c
             where c.changes <> '{}'::jsonb or c.soft_deleted;
            insert into auditdb.log (action, entity_type, entity_id, entity_name, project_id, tenant_id, actor_id,
                                     actor_email, actor_name, ip, user_agent, table_name, changes, metadata)
            select del_kind, 'Ticket', o."id"::text, (o.title)::text,
                   ctx_project_id, ctx_tenant_id,
                   ctx_actor_id, ctx_actor_email, ctx_actor_name, ctx_ip, ctx_user_agent, 'public.tickets',
                   jsonb_build_object('id', jsonb_build_object('old', o."id"), 'title', jsonb_build_object('old', o."title"), 'state', jsonb_build_object('old', o."state"), 'password_hash', jsonb_build_object('old', case when o."password_hash" is null then null else '***' end)), meta || '{"pairing": "key", "unpaired": "old"}'::jsonb
              from auditdb_old o
             where not exists (select from auditdb_new n where o."id" is not distinct from n."id");
            insert into auditdb.log (action, entity_type, entity_id, entity_name, project_id, tenant_id, actor_id,
                                     actor_email, actor_name, ip, user_agent, table_name, changes, metadata)
            select case when row_count > 1 then 'BULK_CREATE' else 'CREATE' end, 'Ticket',
                   n."id"::text, (n.title)::text,
                   ctx_project_id, ctx_tenant_id,
                   ctx_actor_id, ctx_actor_email, ctx_actor_name, ctx_ip, ctx_user_agent, 'public.tickets',
                   jsonb_build_object('id', jsonb_build_object('new', n."id"), 'title', jsonb_build_object('new', n."title"), 'state', jsonb_build_object('new', n."state"), 'password_hash', jsonb_build_object('new', case when n."password_hash" is null then null else '***' end)), meta || '{"pairing": "key", "unpaired": "new"}'::jsonb
              from auditdb_new n
             where not exists (select from auditdb_old o where o."id" is not distinct from n."id");
        end if;
    elsif tg_op = 'DELETE' then
        kind := case when row_count > 1 then 'BULK_DELETE' else 'DELETE' end;
        insert into auditdb.log (action, entity_type, entity_id, entity_name, project_id, tenant_id, actor_id,
                                 actor_email, actor_name, ip, user_agent, table_name, changes, metadata)
        select kind,
               'Ticket', o."id"::text, (o.title)::text,
               ctx_project_id, ctx_tenant_id,
               ctx_actor_id, ctx_actor_email, ctx_actor_name, ctx_ip, ctx_user_agent, 'public.tickets',
               jsonb_build_object('id', jsonb_build_object('old', o."id"), 'title', jsonb_build_object('old', o."title"), 'state', jsonb_build_object('old', o."state"), 'password_hash', jsonb_build_object('old', case when o."password_hash" is null then null else '***' end)),
               meta
          from auditdb_old o;
    else
        -- TRUNCATE: one entry for the whole table; rules do not apply.
        insert into auditdb.log (action, entity_type, project_id, tenant_id, actor_id, actor_email, actor_name,
                                 ip, user_agent, table_name, metadata)
        values ('BULK_DELETE', 'Ticket', ctx_project_id, ctx_tenant_id, ctx_actor_id, ctx_actor_email,
                ctx_actor_name, ctx_ip, ctx_user_agent, 'public.tickets',
                meta || jsonb_build_object('truncate', true));
    end if;
    return null;
end
$auditdb$;

comment on function "auditdb"."auditdb_capture_tickets_3e77342a1c"() is 'auditdb:2:2c5b7e68359600bd';
reset role;

drop trigger if exists auditdb_capture_ins on "public"."tickets";
drop trigger if exists auditdb_capture_upd on "public"."tickets";
drop trigger if exists auditdb_capture_del on "public"."tickets";
drop trigger if exists auditdb_capture_trunc on "public"."tickets";
create trigger auditdb_capture_ins after insert on "public"."tickets"
    referencing new table as auditdb_new
    for each statement execute function "auditdb"."auditdb_capture_tickets_3e77342a1c"();
create trigger auditdb_capture_upd after update on "public"."tickets"
    referencing old table as auditdb_old new table as auditdb_new
    for each statement execute function "auditdb"."auditdb_capture_tickets_3e77342a1c"();
create trigger auditdb_capture_del after delete on "public"."tickets"
    referencing old table as auditdb_old
    for each statement execute function "auditdb"."auditdb_capture_tickets_3e77342a1c"();
create trigger auditdb_capture_trunc before truncate on "public"."tickets"
    for each statement execute function "auditdb"."auditdb_capture_tickets_3e77342a1c"();
alter table "public"."tickets" enable always trigger auditdb_capture_ins;
comment on trigger auditdb_capture_ins on "public"."tickets" is 'auditdb:2:2c5b7e68359600bd';
alter table "public"."tickets" enable always trigger auditdb_capture_upd;
comment on trigger auditdb_capture_upd on "public"."tickets" is 'auditdb:2:2c5b7e68359600bd';
alter table "public"."tickets" enable always trigger auditdb_capture_del;
comment on trigger auditdb_capture_del on "public"."tickets" is 'auditdb:2:2c5b7e68359600bd';
alter table "public"."tickets" enable always trigger auditdb_capture_trunc;
comment on trigger auditdb_capture_trunc on "public"."tickets" is 'auditdb:2:2c5b7e68359600bd';

