"""The `archiver` command: one subcommand per thing an operator runs."""

from __future__ import annotations

import argparse
import os
import sys
from datetime import UTC
from pathlib import Path

from archiver.config.errors import ConfigError
from archiver.config.secrets import load_prefect_auth
from archiver.errors import UserError


def _config(args: argparse.Namespace) -> int:
    from archiver.config.settings import environment_overrides
    from archiver.tools.seeding import read_inputs, seed

    for key in environment_overrides():
        print(f"{key}: taken from the environment (overrides {args.vars})")
    inputs = read_inputs(args.vars, args.limits, args.secrets_dir, environ=os.environ)
    report = seed(inputs, say=lambda line: print(line, flush=True))
    if report.changes:
        print(f"archiver config: {len(report.changes)} change(s) applied, {report.unchanged} already up to date")
    else:
        print(f"archiver config: no changes, all {report.unchanged} items already up to date")
    return 0


def _secrets_init(args: argparse.Namespace) -> int:
    from archiver.config.secrets import SECRETS, init_secrets

    created = init_secrets(args.secrets_dir)
    for path in created:
        print(f"created {path}")
    print(f"{len(created)} secret file(s) created, {len(SECRETS) - len(created)} already present (left unchanged)")
    return 0


def _api(args: argparse.Namespace) -> int:
    import logging

    import uvicorn

    from archiver.api.app import create_app
    from archiver.api.settings import ApiSettings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    overrides = {"API_ROOT_PATH": args.root_path} if args.root_path is not None else {}
    settings = ApiSettings(**overrides)
    app = create_app(settings)
    # X-Forwarded-For is believed only from API_FORWARDED_ALLOW_IPS (the proxy): anyone else could forge
    # the address that auth-failure logs show.
    trusted = settings.forwarded_allow_ips.strip()
    uvicorn.run(app, host=args.host, port=args.port, proxy_headers=bool(trusted), forwarded_allow_ips=trusted or None)
    return 0


def _job(args: argparse.Namespace) -> int:
    from archiver.job_command import JobNotStarted, run

    try:
        return run(args.job_type, args.pids, args.scicat_url, args.secrets_dir, not args.no_follow, args.start_timeout)
    except JobNotStarted as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


def _upload(args: argparse.Namespace) -> int:
    from archiver.upload_command import UploadError, read_token, run

    try:
        token = read_token(args.token_file)
        return run(args.pid, args.files, args.root, args.api_url, token, args.parallel, args.finalize, args.archive)
    except UploadError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


def _upload_cleanup(args: argparse.Namespace) -> int:
    from datetime import datetime, timedelta

    from archiver.config.secrets import ARCHIVER_S3
    from archiver.config.settings import load_vars_file, with_environment_overrides
    from archiver.packing.naming import DATASETS_PREFIX
    from archiver.storage.multipart import abort_uploads, release_orphaned
    from archiver.storage.s3 import S3Credentials, s3_client

    settings = with_environment_overrides(load_vars_file(args.vars), os.environ, str(args.vars))
    days = settings.upload.abort_incomplete_days if args.older_than_days is None else args.older_than_days
    if days < 0:
        raise ConfigError(f"--older-than-days {days}: must be 0 or more")
    s3 = s3_client(
        settings.s3.endpoint, settings.s3.region, S3Credentials.from_secret_files(ARCHIVER_S3, args.secrets_dir)
    )
    bucket = settings.s3.landingzone_bucket
    aborted = abort_uploads(s3, bucket, DATASETS_PREFIX + "/", datetime.now(UTC) - timedelta(days=days))
    for upload in aborted:
        print(f"aborted s3://{bucket}/{upload.key} (started {upload.initiated:%Y-%m-%d %H:%M} UTC)")
    released = release_orphaned(s3, bucket)  # those the lifecycle rule aborted (the aborted uploads' went with them)
    print(
        f"archiver upload-cleanup: {len(aborted)} unfinished upload(s) older than {days:g} day(s) aborted, "
        f"{released} budget reservation(s) of uploads no longer under way released"
    )
    return 0


def _limits_reconcile(args: argparse.Namespace) -> int:
    from archiver.config.limits import load_limits_file
    from archiver.flows.concurrency import reconcile_tags

    limits = load_limits_file(args.limits).by_name()
    for result in reconcile_tags(limit.tag for limit in limits.values()):
        print(f"tag {result.tag}: released {result.released} stale slot(s), {result.kept} held by live task runs")
    return 0


def _prune_discarded(args: argparse.Namespace) -> int:
    from archiver.config.secrets import LTS_S3
    from archiver.config.settings import load_vars_file, with_environment_overrides
    from archiver.flows.maintenance import registered_in
    from archiver.packing.cleanup import freed_bytes, prune_discarded
    from archiver.scicat.client import ScicatClient, ScicatCredentials
    from archiver.storage.lts_store import open_store, require_lts
    from archiver.storage.s3 import S3Credentials

    settings = with_environment_overrides(load_vars_file(args.vars), os.environ, str(args.vars))
    lts = settings.lts
    days = lts.discarded_retention_days if args.older_than_days is None else args.older_than_days
    if days < 0:
        raise ConfigError(f"--older-than-days {days}: must be 0 or more")
    require_lts(lts)
    store = open_store(lts, S3Credentials.from_secret_files(LTS_S3, args.secrets_dir) if lts.backend == "s3" else None)
    with ScicatClient(settings.scicat, ScicatCredentials.from_secret_files(args.secrets_dir)) as scicat:
        found = prune_discarded(store, days, dry_run=args.dry_run, registered=registered_in(scicat))
    verb = "would delete" if args.dry_run else "deleted"
    for folder in found:
        what = f"kept ({folder.kept_because})" if folder.kept_because else verb
        # What an operator can look at: the folder's path, or its prefix in the bucket.
        where = lts.storage_root / folder.key if lts.backend == "posix" else f"{store.location}/{folder.key}"
        print(f"{what} {where} (set aside {folder.set_aside:%Y-%m-%d %H:%M} UTC, {folder.size_bytes} bytes)")
    deleted = [f for f in found if f.kept_because is None]
    freed = freed_bytes(found)
    print(
        f"archiver lts prune-discarded: {verb} {len(deleted)} folder(s) older than {days:g} day(s), "
        f"{freed} bytes ({freed / 2**30:.2f} GiB) {'would be ' if args.dry_run else ''}freed; "
        f"{len(found) - len(deleted)} kept"
    )
    return 0


def _remove_flow_run_containers(args: argparse.Namespace) -> int:
    from archiver.flow_run_containers import remove_flow_run_containers

    removed = remove_flow_run_containers(args.network)
    for name in removed:
        print(f"removed {name}")
    print(f"archiver flow-run-containers remove: {len(removed)} container(s) on network {args.network} removed")
    return 0


def _audit(args: argparse.Namespace) -> int:
    from archiver.config.runtime import load_run_configuration
    from archiver.flows.audit import LtsAuditFailed, lts_audit
    from archiver.flows.task_states import exception_of
    from archiver.storage.lts_store import require_lts

    if args.all and args.pid:
        raise UsageError("--pid and --all exclude each other: audit named datasets, or every datablock")
    require_lts(load_run_configuration().settings.lts)  # one line here, not a failed run
    state = lts_audit(pids=args.pid or None, everything=args.all, return_state=True)
    error = exception_of(state) if state.is_failed() else None
    if isinstance(error, LtsAuditFailed):
        for finding in error.findings:
            print(finding.line())
        print(
            f"error: LTS audit found {len(error.findings)} problem(s); "
            'docs/flows.md, "Auditing the LTS", says what to do',
            file=sys.stderr,
        )
        return 1
    if error is not None:
        raise error
    summary = state.result()
    print(
        f"archiver audit: {summary['checked']} of {summary['datablocks']} datablock(s) re-verified "
        f"({summary['bytes']} bytes), no problems"
    )
    return 0


def _scicat_dev(args: argparse.Namespace) -> int:
    from archiver.config.secrets import read_secret, secret_spec
    from archiver.devtools.scicat_job_action import JobAction
    from archiver.devtools.scicat_server import DevServerConfig, serve
    from archiver.scicat.client import ScicatCredentials

    account = ScicatCredentials.from_secret_files(args.secrets_dir)
    action = None
    if args.archiver_url:
        spec = secret_spec("ARCHIVER_API_AUTH_FILE")
        environ = {spec.file_env: str(args.archiver_auth_file)} if args.archiver_auth_file else None
        auth = read_secret(spec, args.secrets_dir, environ)
        try:
            action = JobAction(
                url=args.archiver_url,
                method=args.archiver_method.upper(),
                headers=_headers(args.archiver_header),
                secret_headers={"Authorization": auth},
                body=args.archiver_body or None,
            )
        except ValueError as e:
            raise ConfigError(f"scicat-dev job action: {e}") from e
    if args.unchanged_lifecycle_conflict and not args.datasetlifecycle_endpoint:
        raise ConfigError(
            "--unchanged-lifecycle-conflict is a quirk of the datasetlifecycle endpoint; "
            "give --datasetlifecycle-endpoint too"
        )
    config = DevServerConfig(
        {account.username: account.password},
        action,
        args.datasetlifecycle_endpoint,
        unchanged_lifecycle_conflict=args.unchanged_lifecycle_conflict,
    )
    target = f"{action.method} {args.archiver_url}" if action else "nowhere"
    endpoint = "off"
    if config.lifecycle_endpoint:
        endpoint = "on, 409 for an unchanged lifecycle" if config.unchanged_lifecycle_conflict else "on"
    print(
        f"SciCat development server on http://{args.host}:{args.port} (user {account.username!r}, "
        f"new jobs sent to {target}, datasetlifecycle endpoint {endpoint})",
        flush=True,
    )
    serve(config, args.host, args.port)
    return 0


def _headers(values: list[str]) -> dict[str, str]:
    headers = {}
    for value in values:
        name, colon, template = value.partition(":")
        if not colon or not name.strip():
            raise ConfigError(
                f"--archiver-header {value!r}: expected 'Name: value', e.g. 'Content-Type: application/json'"
            )
        headers[name.strip()] = template.strip()
    return headers


def _flag(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def _metrics(args: argparse.Namespace) -> int:
    import logging

    from archiver.metrics.server import serve

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    serve(args.host, args.port, args.slow_cache_s, args.fold_after_hours)
    return 0


def _serve(args: argparse.Namespace) -> int:
    from archiver.config.deployments import DEPLOYMENT_NAMES
    from archiver.flows.serve import serve_deployments

    print("serving " + ", ".join(DEPLOYMENT_NAMES.values()), flush=True)
    serve_deployments(limit=args.limit)
    return 0


def _dev(args: argparse.Namespace) -> int:
    import signal

    from archiver.local_pipeline import DevOptions, run

    def stop(signum, frame):
        raise KeyboardInterrupt  # unwinds the services it started, as Ctrl-C does

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGHUP, stop)  # its terminal closed
    return run(
        DevOptions(
            workdir=args.workdir.resolve(),
            num_files=args.files,
            file_size_mb=args.file_size_mb,
            prefect_port=args.prefect_port,
            keep_running=not args.exit,
            database_url=args.database_url,
        )
    )


class _Help(argparse.HelpFormatter):
    """Every option's default in its help, unless the help already says it."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.option_strings and action.default not in (None, False, argparse.SUPPRESS) and "default" not in text:
            text += " (default: %(default)s)"
        return text


def add_command(commands, name: str, help: str, **kwargs) -> argparse.ArgumentParser:
    """A subcommand whose own --help starts with what it does."""
    kwargs.setdefault("description", help[0].upper() + help[1:] + ".")
    return commands.add_parser(name, help=help, formatter_class=_Help, **kwargs)


def _version() -> str:
    from importlib.metadata import version

    return f"archiver {version('archiver')} (prefect {version('prefect')})"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="archiver",
        description=__doc__,
        formatter_class=_Help,
        epilog="Commands that talk to Prefect read PREFECT_API_URL and the server's credentials: "
        "PREFECT_API_AUTH_STRING, or the file PREFECT_API_AUTH_STRING_FILE names (.secrets/prefectauth.txt).",
    )
    parser.add_argument("--version", action="version", version=_version())
    commands = parser.add_subparsers(dest="command", required=True)

    config = add_command(
        commands,
        "config",
        help="seed Prefect (at PREFECT_API_URL) with variables, secret blocks, concurrency limits; create buckets",
    )
    config.add_argument("--vars", type=Path, default=Path("prefect-vars.toml"), help="variables file")
    config.add_argument("--limits", type=Path, default=Path("concurrency-limits.toml"), help="concurrency limits file")
    config.add_argument(
        "--secrets-dir",
        type=Path,
        default=Path(".secrets"),
        help="where secret files are, unless *_FILE variables name them",
    )
    config.set_defaults(run=_config)

    secrets = add_command(commands, "secrets", help="manage the secret files in .secrets/")
    secrets_commands = secrets.add_subparsers(dest="secrets_command", required=True)
    init = add_command(
        secrets_commands, "init", help="create missing secret files with random values; never overwrites"
    )
    init.add_argument("--secrets-dir", type=Path, default=Path(".secrets"), help="where to create them")
    init.set_defaults(run=_secrets_init)

    api = add_command(commands, "api", help="serve the archiver API (SciCat jobs in, Prefect flow runs out)")
    api.add_argument("--host", default="127.0.0.1", help="address to listen on")
    api.add_argument("--port", type=int, default=8000, help="port to listen on")
    api.add_argument(
        "--root-path", default=None, help="path prefix of every route, e.g. /api/v1 (default: API_ROOT_PATH)"
    )
    api.set_defaults(run=_api)

    job = add_command(
        commands,
        "job",
        help="create a SciCat archive or retrieve job (as a user would) and follow it to the end",
        description="Creates the job in SciCat with the archiver's account; "
        "SciCat's job action calls the archiver API, "
        "which starts the flow run. Shows its progress, the outcome and any download links. Prefect is "
        "PREFECT_API_URL. Exit code 0 when the job finished successfully.",
    )
    job.add_argument("job_type", choices=["archive", "retrieve"], help="the job's type")
    job.add_argument("pids", nargs="+", metavar="PID", help="dataset PIDs the job is for")
    job.add_argument("--scicat-url", help="SciCat base URL (default: the scicat_endpoint Prefect variable)")
    job.add_argument(
        "--secrets-dir",
        type=Path,
        default=Path(".secrets"),
        help="where scicatuser.txt / scicatpass.txt are, "
        "unless SCICAT_USER_FILE / SCICAT_PASSWORD_FILE name them (default: .secrets)",
    )
    job.add_argument("--no-follow", action="store_true", help="only create the job")
    job.add_argument(
        "--start-timeout", type=float, default=60, help="seconds to wait for the flow run to appear (default: 60)"
    )
    job.set_defaults(run=_job)

    upload = add_command(
        commands,
        "upload",
        help="upload a dataset's files through the archiver API's presigned URLs (no S3 credentials), then finalize",
        description="Uploads the files of a dataset registered in SciCat (with its origdatablocks) into the landing "
        "zone through presigned multipart URLs the archiver API hands out for your SciCat token. A second "
        "run resumes: only parts S3 does not hold yet are sent. Sizes and checksums are verified "
        '(docs/api.md, "Uploads"). Exit code 0 when every file is uploaded (and finalized if asked).',
    )
    upload.add_argument("pid", metavar="PID", help="the dataset's PID")
    upload.add_argument("files", nargs="+", type=Path, metavar="FILE", help="files or folders of the dataset")
    upload.add_argument(
        "--root",
        type=Path,
        default=Path("."),
        help="folder the dataset's paths are relative to (default: the current folder)",
    )
    upload.add_argument(
        "--api-url",
        default=os.environ.get("ARCHIVER_API_URL", "http://localhost/api/v1"),
        help="the archiver API with its root path (default: $ARCHIVER_API_URL, else http://localhost/api/v1)",
    )
    upload.add_argument(
        "--token-file",
        type=Path,
        help="file holding your SciCat token (or a service account's); default: $ARCHIVER_UPLOAD_TOKEN",
    )
    upload.add_argument("--parallel", type=int, default=4, help="parts sent at once")
    upload.add_argument("--finalize", action="store_true", help="then mark the dataset archivable in SciCat")
    upload.add_argument("--archive", action="store_true", help="then finalize and create the archive job in SciCat")
    upload.set_defaults(run=_upload)

    upload_cleanup = add_command(
        commands,
        "upload-cleanup",
        help="abort unfinished uploads in the landing zone older than N days "
        "(what the bucket's lifecycle rule does too)",
    )
    upload_cleanup.add_argument(
        "--older-than-days",
        type=float,
        default=None,
        help="age limit in days (default: UPLOAD_ABORT_INCOMPLETE_DAYS of --vars)",
    )
    upload_cleanup.add_argument(
        "--vars",
        type=Path,
        default=Path("prefect-vars.toml"),
        help="variables file for the S3 endpoint and bucket (environment overrides it)",
    )
    upload_cleanup.add_argument(
        "--secrets-dir",
        type=Path,
        default=Path(".secrets"),
        help="the archiver's S3 account (s3archiveruser.txt / s3archiverpass.txt)",
    )
    upload_cleanup.set_defaults(run=_upload_cleanup)

    limits = add_command(commands, "limits", help="inspect and repair tag concurrency limits")
    limits_commands = limits.add_subparsers(dest="limits_command", required=True)
    reconcile = add_command(
        limits_commands,
        "reconcile",
        help="release slots held by task runs that are gone or finished (after a hard kill or a server restart)",
    )
    reconcile.add_argument(
        "--limits", type=Path, default=Path("concurrency-limits.toml"), help="concurrency limits file"
    )
    reconcile.set_defaults(run=_limits_reconcile)

    lts = add_command(commands, "lts", help="housekeeping on the LTS")
    lts_commands = lts.add_subparsers(dest="lts_command", required=True)
    prune = add_command(
        lts_commands,
        "prune-discarded",
        help="delete discarded/ folders (datablocks set aside by failed archivals) "
        "older than N days; never datablocks/",
    )
    prune.add_argument(
        "--older-than-days",
        type=float,
        default=None,
        help="age limit in days (default: LTS_DISCARDED_RETENTION_DAYS of --vars)",
    )
    prune.add_argument("--dry-run", action="store_true", help="only list what would be deleted")
    prune.add_argument(
        "--vars",
        type=Path,
        default=Path("prefect-vars.toml"),
        help="variables file for LTS_STORAGE_ROOT, the retention and SciCat (environment overrides it)",
    )
    prune.add_argument(
        "--secrets-dir",
        type=Path,
        default=Path(".secrets"),
        help="SciCat account (asked which datablocks are registered, so their only copy is never deleted)",
    )
    prune.set_defaults(run=_prune_discarded)

    containers = add_command(
        commands, "flow-run-containers", help="the containers Docker workers started for flow runs"
    )
    containers_commands = containers.add_subparsers(dest="containers_command", required=True)
    remove = add_command(
        containers_commands,
        "remove",
        help="remove every flow-run container on a network, finished or not (before `docker compose down -v`, "
        "whose LTS volume and network they keep in use)",
    )
    remove.add_argument("--network", required=True, help="the stack's network (STACK_NETWORK of .env)")
    remove.set_defaults(run=_remove_flow_run_containers)

    audit = add_command(
        commands,
        "audit",
        help="run the lts_audit flow here, now: "
        "re-verify datablocks against manifests and SciCat, reconcile the LTS with SciCat",
        description="Runs the lts_audit flow in this process "
        "(recorded in Prefect at PREFECT_API_URL, settings from its "
        "variables, the LTS at LTS_STORAGE_ROOT mounted here). Without options it reads what a scheduled "
        "run reads (LTS_AUDIT_BUDGET_MB). Prints every problem; exit code 1 when there is one.",
    )
    audit.add_argument(
        "--pid",
        action="append",
        default=[],
        metavar="PID",
        help="audit only this dataset, all its datablocks (repeatable)",
    )
    audit.add_argument("--all", action="store_true", help="re-verify every datablock on the LTS, whatever the budget")
    audit.set_defaults(run=_audit)

    serve = add_command(
        commands,
        "serve",
        help="run the archival, retrieval, recovery, test-dataset, "
        "discarded-pruning and LTS-audit deployments here (no Docker)",
    )
    serve.add_argument("--limit", type=int, default=None, help="most flow runs at once (default: no limit)")
    serve.set_defaults(run=_serve)

    metrics = add_command(
        commands,
        "metrics",
        help="serve archive metrics for Prometheus: "
        "jobs, bytes, durations, slots, LTS space, audit (docs/monitoring.md)",
        description="Serves /metrics, computed at each scrape "
        "from Prefect's flow-run history (PREFECT_API_URL), the LTS "
        "at LTS_STORAGE_ROOT mounted here (read only) and the retrieval bucket. Counters are derived from "
        "history (older runs folded into totals kept in Prefect), so neither a restart nor Prefect's history "
        "retention resets them.",
    )
    metrics.add_argument("--host", default="127.0.0.1", help="address to listen on")
    metrics.add_argument("--port", type=int, default=9108, help="port to listen on")
    metrics.add_argument(
        "--slow-cache-s",
        type=float,
        default=60.0,
        help="seconds the LTS audit-record walk and the bucket listing are reused between scrapes",
    )
    metrics.add_argument(
        "--fold-after-hours",
        type=float,
        default=168.0,
        help="runs that ended this long ago are folded into totals kept in Prefect (the block "
        "archiver-metrics), so counters outlive Prefect's history retention; keep it shorter than "
        "PREFECT_SERVER_SERVICES_DB_VACUUM_RETENTION_PERIOD",
    )
    metrics.set_defaults(run=_metrics)

    dev = add_command(
        commands,
        "dev",
        help="run the whole pipeline locally without Docker: services, a test dataset archived and retrieved",
    )
    dev.add_argument("--workdir", type=Path, default=Path(".local"), help="state, LTS folder, secrets and logs")
    dev.add_argument("--files", type=int, default=5, help="files in the test dataset")
    dev.add_argument("--file-size-mb", type=float, default=4.0, help="size of each test file")
    dev.add_argument("--prefect-port", type=int, default=4200, help="Prefect server and UI port (a free one if taken)")
    dev.add_argument(
        "--database-url",
        help="Prefect's database, e.g. postgresql+asyncpg://postgres@127.0.0.1:5432/prefect "
        "(default: SQLite in --workdir; slower under concurrent writes)",
    )
    dev.add_argument("--exit", action="store_true", help="stop everything after the run instead of waiting for Ctrl-C")
    dev.set_defaults(run=_dev)

    scicat = add_command(
        commands,
        "scicat-dev",
        help="run the SciCat development server (in-memory SciCat API for development and tests; see docs/scicat.md)",
    )
    scicat.add_argument("--host", default="127.0.0.1", help="address to listen on")
    scicat.add_argument("--port", type=int, default=3000, help="port to listen on")
    scicat.add_argument(
        "--secrets-dir",
        type=Path,
        default=Path(".secrets"),
        help="the account that may log in: "
        "SCICAT_USER_FILE / SCICAT_PASSWORD_FILE, else scicatuser.txt / scicatpass.txt here",
    )
    scicat.add_argument(
        "--archiver-url",
        default=os.environ.get("SCICAT_DEV_ARCHIVER_URL"),
        help="URL (a template like SciCat's url job action) called when a job is created, e.g. "
        "http://archiver-api:8000/jobs (default: $SCICAT_DEV_ARCHIVER_URL; unset: jobs are only stored)",
    )
    scicat.add_argument(
        "--archiver-auth-file",
        type=Path,
        help="file with the Authorization header value sent with it "
        "(default: ARCHIVER_API_AUTH_FILE, else archiverapiauth.txt in --secrets-dir)",
    )
    scicat.add_argument(
        "--archiver-method",
        default=os.environ.get("SCICAT_DEV_ARCHIVER_METHOD", "POST"),
        help="HTTP method of that call: GET, POST, PUT or DELETE (default: $SCICAT_DEV_ARCHIVER_METHOD, else POST)",
    )
    scicat.add_argument(
        "--archiver-header",
        action="append",
        default=[],
        metavar="'NAME: TEMPLATE'",
        help="a further header of that call, value a template such as {{job.id}}; repeatable. Without a "
        "Content-Type header the body goes as text/plain;charset=UTF-8, as from SciCat",
    )
    scicat.add_argument(
        "--archiver-body",
        default=os.environ.get("SCICAT_DEV_ARCHIVER_BODY", "{{{jsonify job}}}"),
        help="body template of that call "
        "(default: $SCICAT_DEV_ARCHIVER_BODY, else {{{jsonify job}}}; '' sends no body)",
    )
    scicat.add_argument(
        "--datasetlifecycle-endpoint",
        action="store_true",
        default=_flag(os.environ.get("SCICAT_DEV_DATASETLIFECYCLE_ENDPOINT")),
        help="serve PATCH/GET datasets/{pid}/datasetlifecycle (merging lifecycle updates, SciCat >= 4.19); "
        "default: $SCICAT_DEV_DATASETLIFECYCLE_ENDPOINT, else off",
    )
    scicat.add_argument(
        "--unchanged-lifecycle-conflict",
        action="store_true",
        default=_flag(os.environ.get("SCICAT_DEV_UNCHANGED_LIFECYCLE_CONFLICT")),
        help="that endpoint answers 409 to an update leaving the lifecycle as it is, as SciCat 4.19-4.23 do; "
        "default: $SCICAT_DEV_UNCHANGED_LIFECYCLE_CONFLICT, else off",
    )
    scicat.set_defaults(run=_scicat_dev)
    return parser


# Subcommands that talk to a Prefect server: without PREFECT_API_URL, Prefect would quietly start a
# temporary server of its own and the command would act on that.
NEEDS_PREFECT = {"config", "job", "limits", "serve", "audit", "metrics"}


class UsageError(UserError):
    """The command cannot run as called; the message says what to do."""


def _require_prefect_api() -> None:
    from prefect.settings import get_current_settings

    if not get_current_settings().api.url:
        raise UsageError(
            "PREFECT_API_URL is not set: this command works on a Prefect server. Set it to the server's API, "
            "e.g. PREFECT_API_URL=http://localhost/prefect-ui/api (compose stack) or http://127.0.0.1:4200/api"
        )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        load_prefect_auth()
        if args.command in NEEDS_PREFECT:
            _require_prefect_api()
        return args.run(args)
    except (ConfigError, UsageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as e:
        # A service that failed is said in one line; anything else is a bug and keeps its traceback.
        from archiver.flows.failures import credentials_refused, describe_failure, failing_service

        if failing_service(e) is None or os.environ.get("ARCHIVER_DEBUG"):
            raise
        where = (
            f" at {os.environ['PREFECT_API_URL']}"
            if failing_service(e) == "Prefect API" and os.environ.get("PREFECT_API_URL")
            else ""
        )
        check = "" if credentials_refused(e) else f"check that the service{where} runs and is reachable; "
        print(f"error: {describe_failure(e)}\n({check}ARCHIVER_DEBUG=1 shows the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
