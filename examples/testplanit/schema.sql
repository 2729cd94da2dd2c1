-- A test-management application's schema (after the seed's TestPlanIt): one table per entity
-- type the audit log tracks. Every row carries its tenant; project-scoped rows their project.
create table users (
    id bigserial primary key,
    tenant_id text not null,
    email text not null unique,
    name text not null,
    role text not null default 'USER' check (role in ('USER', 'ADMIN', 'NONE')),
    password_hash text,
    is_active boolean not null default true,
    is_deleted boolean not null default false,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now()
);
create table groups (
    id bigserial primary key,
    tenant_id text not null,
    name text not null,
    is_deleted boolean not null default false
);
create table projects (
    id bigserial primary key,
    tenant_id text not null,
    name text not null,
    note text,
    is_deleted boolean not null default false,
    updated_at timestamptz not null default now()
);
create table project_permissions (
    user_id bigint not null references users,
    project_id bigint not null references projects,
    tenant_id text not null,
    access text not null check (access in ('VIEW', 'EDIT', 'ADMIN')),
    primary key (user_id, project_id)
);
create table group_members (
    group_id bigint not null references groups,
    user_id bigint not null references users,
    tenant_id text not null,
    primary key (group_id, user_id)
);
create table milestones (
    id bigserial primary key,
    tenant_id text not null,
    project_id bigint not null references projects,
    name text not null,
    due_at date,
    completed_at timestamptz
);
create table test_cases (
    id bigserial primary key,
    tenant_id text not null,
    project_id bigint not null references projects,
    name text not null,
    steps jsonb not null default '[]',
    priority int not null default 3,
    estimate interval,
    is_deleted boolean not null default false,
    updated_at timestamptz not null default now()
);
create table shared_steps (
    id bigserial primary key,
    tenant_id text not null,
    project_id bigint not null references projects,
    name text not null,
    steps jsonb not null default '[]',
    deleted_at timestamptz
);
create table test_runs (
    id bigserial primary key,
    tenant_id text not null,
    project_id bigint not null references projects,
    milestone_id bigint references milestones,
    name text not null,
    state text not null default 'OPEN',
    completed_at timestamptz
);
create table test_results (
    id bigserial primary key,
    tenant_id text not null,
    project_id bigint not null references projects,
    test_run_id bigint not null references test_runs,
    test_case_id bigint not null references test_cases,
    status text not null check (status in ('UNTESTED', 'PASSED', 'FAILED', 'BLOCKED', 'SKIPPED')),
    elapsed interval,
    notes text
);
create table sessions (
    id bigserial primary key,
    tenant_id text not null,
    project_id bigint not null references projects,
    name text not null,
    charter text,
    completed_at timestamptz
);
create table issues (
    id bigserial primary key,
    tenant_id text not null,
    project_id bigint not null references projects,
    external_key text not null,
    title text not null,
    url text
);
create table tags (
    id bigserial primary key,
    tenant_id text not null,
    name text not null,
    is_deleted boolean not null default false
);
create table comments (
    id bigserial primary key,
    tenant_id text not null,
    project_id bigint not null references projects,
    test_case_id bigint references test_cases,
    author_id bigint references users,
    body text not null,
    is_deleted boolean not null default false
);
create table attachments (
    id bigserial primary key,
    tenant_id text not null,
    project_id bigint not null references projects,
    test_case_id bigint references test_cases,
    file_name text not null,
    size_bytes bigint not null,
    storage_secret text
);
create table api_tokens (
    id bigserial primary key,
    tenant_id text not null,
    user_id bigint not null references users,
    label text not null,
    token_hash text not null,
    token_prefix text not null,
    expires_at timestamptz,
    revoked_at timestamptz,
    last_used_at timestamptz
);
create table sso_providers (
    id bigserial primary key,
    tenant_id text not null,
    name text not null,
    kind text not null check (kind in ('SAML', 'OIDC', 'GOOGLE', 'GITHUB')),
    client_id text,
    client_secret text,
    enabled boolean not null default false
);
create table email_domains (
    id bigserial primary key,
    tenant_id text not null,
    domain text not null,
    allowed boolean not null default true
);
create table app_config (
    key text not null,
    tenant_id text not null,
    value jsonb not null,
    primary key (tenant_id, key)
);
