-- Capture functions after an upgrade. One this release did not generate (another template
-- version, or an older release's generic body) gets the current generic body: it is safe and
-- complete at once, and `auditdb status` reports its table outdated until `auditdb apply`
-- generates the fast one again. Every capture function belongs to auditdb_capture and is
-- executable by nobody else. The template version here is auditdb/plan.py's TEMPLATE_VERSION
-- (tests/test_install.py checks that they agree).
do $$
declare
    f record;
begin
    for f in
        select p.proname::text as name, coalesce(obj_description(p.oid, 'pg_proc'), '') as signature
          from pg_proc p
         where p.pronamespace = 'auditdb'::regnamespace and p.proname like 'auditdb\_capture\_%'
           and p.pronargs = 0 and p.prorettype = 'trigger'::regtype
    loop
        if f.signature not like 'auditdb:5:%' then
            perform auditdb.use_generic_capture(f.name);
        end if;
        execute format('alter function auditdb.%I() owner to auditdb_capture', f.name);
    end loop;
end
$$;

