"""The console's pages: sign-in, studies and series, queue and peers, the upload check, /metrics.

Every page but sign-in, first-admin setup and /metrics needs a signed-in user; retrying a delivery and
seeing unmasked patient IDs need an admin. Forms carry a per-session token against cross-site posts.
Sign-ins, retries and unmasking are written to the audit trail.
"""

from __future__ import annotations

import base64
import secrets
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom import dcmread
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from core.errors import UserError
from core.events import AuditEventName
from node import overview
from node.audit import Audit
from node.config import Config
from node.db import Database
from node.metrics import Metrics
from node.predict import PICTURE_SUFFIXES, FileCheck, Models, check_file
from node.status import route_thresholds
from node.users import Account, SetupToken, authenticate, current_account
from node.web.pictures import heatmap_png, key_image_png
from node.web.throttle import SignInThrottle
from sr.reading import content_lines, group_scores

HERE = Path(__file__).parent
VERDICTS = ("SUSPECTED", "NOT SUSPECTED", "NOT EVALUATED")
MAX_IMAGE_ROWS = 200


@dataclass
class ConsoleContext:
    """What the pages need from the running node."""

    config: Config
    db: Database
    audit: Audit
    metrics: Metrics
    models: Models
    setup: SetupToken
    wake_deliverer: Callable[[], None]  # called after a retry so the deliverer does not wait for its next poll
    evaluating: Callable[[], int | None]  # the series id being evaluated now
    scored_while_waiting: Callable[[int], int]  # how many images of a waiting series are scored so far


def mask_patient_id(value: str) -> str:
    """Enough to tell two patients apart on one screen, not enough to identify one."""
    if not value:
        return "-"
    if len(value) <= 3:
        return "•" * len(value)
    return value[0] + "•" * (len(value) - 3) + value[-2:]


def session_secret(data_dir: Path) -> str:
    """The key that signs session cookies: made on first start, kept (mode 0600) in the data folder."""
    path = data_dir / "console-session.key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(secrets.token_hex(32))
    return path.read_text().strip()


def _when(seconds: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds)) if seconds else "-"


def _percent(score: float | None) -> str:
    return "-" if score is None else f"{score * 100:.1f}%"


def build_app(ctx: ConsoleContext) -> Starlette:
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    throttle = SignInThrottle()
    templates.env.filters.update(when=_when, percent=_percent, mask=mask_patient_id)

    def account(request: Request) -> Account | None:
        """The signed-in user, checked against the database on every request."""
        name = request.session.get("user")
        if not name:
            return None
        user = current_account(ctx.db, str(name)) if request.session.get("expires", 0) >= time.time() else None
        if user is None:  # expired, or removed since signing in
            request.session.clear()
        return user

    def csrf_token(request: Request) -> str:
        if "csrf" not in request.session:
            request.session["csrf"] = secrets.token_urlsafe(24)
        return str(request.session["csrf"])

    def page(request: Request, name: str, status_code: int = 200, **values: Any) -> Response:
        values.update(user=account(request), csrf=csrf_token(request), node=ctx.config.node.ae_title)
        return templates.TemplateResponse(request, name, values, status_code=status_code)

    def client(request: Request) -> str:
        return request.client.host if request.client else ""

    async def checked_form(request: Request) -> Any:
        form = await request.form()
        if not secrets.compare_digest(str(form.get("csrf", "")), csrf_token(request)):
            await form.close()
            raise PermissionError("the form has expired; reload the page and try again")
        return form

    def signed_in(handler: Any, admin: bool = False) -> Any:
        async def guarded(request: Request) -> Response:
            user = account(request)
            if user is None:
                return RedirectResponse(f"/login?next={request.url.path}", status_code=303)
            if admin and not user.is_admin:
                return PlainTextResponse("this needs an admin", status_code=403)
            response: Response = await handler(request, user)
            return response
        return guarded

    async def login(request: Request) -> Response:
        if ctx.setup.pending:
            return RedirectResponse("/setup", status_code=303)
        if request.method == "GET":
            return page(request, "login.html", next=request.query_params.get("next", "/"))
        form = await checked_form(request)
        name, password = str(form.get("name", "")), str(form.get("password", ""))
        target = str(form.get("next", "/"))
        wait = throttle.wait_seconds(client(request))
        if wait > 0:
            ctx.audit.record(AuditEventName.CONSOLE_SIGNIN_REFUSED, address=client(request),
                             detail=f"user {name[:64]!r}: too many failed sign-ins from this address")
            return page(request, "login.html", status_code=429, next=target,
                        error=f"too many failed sign-ins from this address; try again in {wait:.0f} s")
        user = await run_in_threadpool(authenticate, ctx.db, name, password)
        if user is None:
            throttle.failed(client(request))
            ctx.audit.record(AuditEventName.CONSOLE_SIGNIN_REFUSED, address=client(request),
                             detail=f"user {name[:64]!r}")
            return page(request, "login.html", status_code=401, next=target, error="wrong user name or password")
        throttle.succeeded(client(request))
        _start_session(request, user, ctx.config.console.session_hours)
        ctx.audit.record(AuditEventName.CONSOLE_SIGNIN, address=client(request),
                         detail=f"user {user.name} ({user.role})")
        return RedirectResponse(target if target.startswith("/") and not target.startswith("//") else "/",
                                status_code=303)

    async def logout(request: Request) -> Response:
        await checked_form(request)
        request.session.clear()
        return RedirectResponse("/login", status_code=303)

    async def setup(request: Request) -> Response:
        if not ctx.setup.pending:
            return RedirectResponse("/login", status_code=303)
        if request.method == "GET":
            return page(request, "setup.html")
        form = await checked_form(request)
        try:
            user = await run_in_threadpool(ctx.setup.redeem, str(form.get("token", "")), str(form.get("name", "")),
                                           str(form.get("password", "")))
        except UserError as exc:
            return page(request, "setup.html", status_code=400, error=str(exc))
        ctx.audit.record(AuditEventName.CONSOLE_ADMIN_CREATED, address=client(request),
                         detail=f"user {user.name} by setup token")
        _start_session(request, user, ctx.config.console.session_hours)
        return RedirectResponse("/", status_code=303)

    async def studies(request: Request, user: Account) -> Response:
        search = request.query_params.get("q", "")[:128]
        verdict = request.query_params.get("verdict", "")
        verdict = verdict if verdict in VERDICTS else ""
        reveal = _reveal(request, user)
        rows = await run_in_threadpool(overview.recent_series, ctx.db, 200, search, verdict)
        if reveal:
            ctx.audit.record(AuditEventName.CONSOLE_UNMASKED, address=client(request),
                             detail=f"user {user.name}: series list")
        return page(request, "studies.html", rows=rows, q=search, verdict=verdict, verdicts=VERDICTS, reveal=reveal)

    async def series(request: Request, user: Account) -> Response:
        series_id = int(request.path_params["series_id"])
        row = await run_in_threadpool(overview.series_row, ctx.db, series_id)
        if row is None:
            return page(request, "missing.html", status_code=404, what=f"series {series_id}")
        reports = await run_in_threadpool(overview.series_reports, ctx.db, series_id)
        current = next((r for r in reports if not r.superseded), reports[0] if reports else None)
        groups, lines, problem = await run_in_threadpool(_read_report, current.path if current else None)
        reveal = _reveal(request, user)
        if reveal:
            ctx.audit.record(AuditEventName.CONSOLE_UNMASKED, address=client(request), series_uid=row.series_uid,
                             detail=f"user {user.name}")
        images = sorted((g for g in groups if g.label.startswith("image")),
                        key=lambda g: -(g.score_percent or 0.0))
        study = await run_in_threadpool(overview.study_facts, ctx.db, series_id)
        threshold = route_thresholds(ctx.config).get(row.route or "")
        return page(request, "series.html", row=row, reports=reports, study=study, threshold=threshold,
                    current=current, images=images[:MAX_IMAGE_ROWS],
                    image_count=len(images), regions=[g for g in groups if g.region], lines=lines,
                    report_problem=problem, reveal=reveal,
                    has_key_image=bool(current and current.key_image_path and Path(current.key_image_path).exists()))

    async def key_image(request: Request, user: Account) -> Response:
        reports = await run_in_threadpool(overview.series_reports, ctx.db, int(request.path_params["series_id"]))
        current = next((r for r in reports if not r.superseded), None)
        if current is None or not current.key_image_path or not Path(current.key_image_path).exists():
            return PlainTextResponse("no key image", status_code=404)
        png = await run_in_threadpool(key_image_png, current.key_image_path)
        return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=60"})

    async def queue(request: Request, user: Account) -> Response:
        now = ctx.evaluating()
        running = await run_in_threadpool(overview.series_row, ctx.db, now) if now is not None else None
        waiting = [r for r in await run_in_threadpool(overview.series_in_state, ctx.db, "waiting")
                   if running is None or r.id != running.id]
        failed = await run_in_threadpool(overview.series_in_state, ctx.db, "error")
        sends = await run_in_threadpool(overview.deliveries, ctx.db)
        peer_rows = await run_in_threadpool(overview.peers, ctx.db, ctx.config)
        scored = {r.id: ctx.scored_while_waiting(r.id) for r in waiting}
        return page(request, "queue.html", running=running, waiting=waiting, scored=scored, failed=failed,
                    deliveries=sends, peers=peer_rows, notice=request.query_params.get("notice", ""))

    async def retry(request: Request, user: Account) -> Response:
        await checked_form(request)
        delivery_id = int(request.path_params["delivery_id"])
        row = await run_in_threadpool(overview.requeue_delivery, ctx.db, delivery_id)
        if row is None:
            return RedirectResponse(f"/queue?notice=delivery {delivery_id} is not waiting or failed", status_code=303)
        ctx.audit.record(AuditEventName.CONSOLE_RETRY, address=client(request), series_uid=row.series_uid,
                         detail=f"user {user.name}: delivery {row.id} to {row.destination} sent again")
        ctx.wake_deliverer()
        return RedirectResponse(f"/queue?notice=delivery {row.id} to {row.destination} queued again", status_code=303)

    async def upload_check(request: Request, user: Account) -> Response:
        models = sorted(ctx.config.models)
        if request.method == "GET":
            return page(request, "check.html", models=models, chosen="")
        limit = int(ctx.config.console.max_upload_megabytes * 2**20)
        if int(request.headers.get("content-length", "0") or 0) > limit + 2**16:
            return page(request, "check.html", status_code=413, models=models, chosen="",
                        error=f"the file is larger than {ctx.config.console.max_upload_megabytes:g} MB")
        form = await checked_form(request)
        try:
            upload, chosen = form.get("image"), str(form.get("model", ""))
            filename = upload.filename if isinstance(upload, UploadFile) else None
            data = await upload.read(limit + 1) if isinstance(upload, UploadFile) else b""
        finally:
            await form.close()  # the spooled upload
        if not filename:
            return page(request, "check.html", status_code=400, models=models, chosen=chosen,
                        error="choose a DICOM, PNG or JPEG file")
        if chosen and chosen not in ctx.config.models:
            return page(request, "check.html", status_code=400, models=models, chosen="",
                        error=f"unknown model {chosen!r}")
        if len(data) > limit:
            return page(request, "check.html", status_code=413, models=models, chosen=chosen,
                        error=f"the file is larger than {ctx.config.console.max_upload_megabytes:g} MB")
        check, heatmap = await run_in_threadpool(_check_upload, ctx.models, filename, data, chosen or None)
        ctx.audit.record(AuditEventName.CONSOLE_CHECK, address=client(request),
                         detail=f"user {user.name}: {check.verdict.value} ({check.problem or 'scored'})")
        return page(request, "check.html", status_code=200 if check.problem is None else 422, models=models,
                    chosen=chosen, check=check, heatmap=heatmap, top=check.most_suspicious,
                    threshold=check.classifier.card.threshold if check.classifier else None)

    async def metrics(request: Request) -> Response:
        body = await run_in_threadpool(ctx.metrics.exposition)
        return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")

    routes = [
        Route("/login", login, methods=["GET", "POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/setup", setup, methods=["GET", "POST"]),
        Route("/", signed_in(studies)),
        Route("/series/{series_id:int}", signed_in(series)),
        Route("/series/{series_id:int}/key-image.png", signed_in(key_image)),
        Route("/queue", signed_in(queue)),
        Route("/deliveries/{delivery_id:int}/retry", signed_in(retry, admin=True), methods=["POST"]),
        Route("/check", signed_in(upload_check), methods=["GET", "POST"]),
        Route("/metrics", metrics),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    secret = session_secret(ctx.config.storage.data_dir)
    middleware = [Middleware(SessionMiddleware, secret_key=secret, session_cookie="dfnode_console",  # type: ignore[arg-type]
                             max_age=int(ctx.config.console.session_hours * 3600), same_site="strict")]
    return Starlette(routes=routes, middleware=middleware, exception_handlers={PermissionError: _forbidden})


async def _forbidden(request: Request, exc: Exception) -> Response:
    """A form without its session's token (expired, or posted from another site)."""
    return PlainTextResponse(str(exc), status_code=403)


def _start_session(request: Request, user: Account, hours: float) -> None:
    request.session.clear()
    request.session.update(user=user.name, expires=time.time() + hours * 3600,
                           csrf=secrets.token_urlsafe(24))


def _reveal(request: Request, user: Account) -> bool:
    """Unmasked patient IDs: asked for, and the user is an admin."""
    return request.query_params.get("reveal") == "1" and user.is_admin


def _read_report(path: str | None) -> tuple[list, list[tuple[int, str]], str | None]:
    if path is None:
        return [], [], None
    try:
        sr = dcmread(path)
        return group_scores(sr), content_lines(sr), None
    except (OSError, ValueError, AttributeError, KeyError, IndexError) as exc:
        return [], [], f"the report file cannot be read ({exc.__class__.__name__}: {exc})"


def _check_upload(models: Models, filename: str, data: bytes, model: str | None) -> tuple[FileCheck, str | None]:
    """Score an uploaded file; the heatmap of its most suspicious image as a data: URL."""
    suffix = Path(filename).suffix.lower()
    suffix = suffix if suffix in PICTURE_SUFFIXES else ".dcm"
    with tempfile.TemporaryDirectory(prefix="dfnode-check-") as folder:
        path = Path(folder) / f"upload{suffix}"
        path.write_bytes(data)
        check = check_file(path, models, model)
    check = FileCheck(Path(filename).name[:128], check.classifier, check.images, check.problem)
    top = check.most_suspicious
    if top is None or check.classifier is None:
        return check, None
    forensic = check.classifier.card.forensic
    png = heatmap_png(top.pixels, check.classifier.activation_cells(top.pixels),
                      forensic.cell_stride if forensic is not None else None)
    return check, "data:image/png;base64," + base64.b64encode(png).decode()
