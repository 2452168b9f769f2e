"""Routes: read the page model or apply one control, then render. Nothing else lives here.

GET  /                      the page (refreshes its live part from /live every few seconds)
GET  /actions/{id}          one action and its whole history (live part: /actions/{id}/live)
GET  /artifacts/{log id}    an artifact with its SHA-256 recomputed (raw file: .../raw)
POST /control/{op}          pause, resume, kill, unkill, proof-on, proof-off, retry-all
POST /actions/{id}/retry    a dead action back to retry
POST /actions/{id}/cancel   a pending or retry action cancelled
GET|POST /login, POST /logout, GET /healthz

A POST answers 303 back to the page for a form, or JSON `{"ok", "message"}` when the client
asks for `application/json` (the page's script does); a refusal carries its HTTP status and
a message naming the problem, and changes nothing.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import jinja2
from starlette.applications import Starlette
from starlette.datastructures import FormData, MutableHeaders
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from aol.db import store
from aol.db.store import Executor
from aol.logs import get_logger
from aol.model import ActionStatus
from aol.settings import Settings
from aol.web import artifacts, auth, controls, views
from aol.web.auth import Session, Sessions
from aol.web.controls import ControlRefused

log = get_logger("aol.dashboard")

REFRESH_MS = 3000
MAX_BODY_BYTES = 64 * 1024
MAX_FORM_FIELDS = 20
LOGIN_FAILURE_DELAY = 0.5
BIGINT_MAX = 2**63 - 1
SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "cache-control": "no-store",
}


class SecurityHeaders:
    """Adds SECURITY_HEADERS to every response; `no-store`: a page is never a cached guess."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    headers[name] = value
            await send(message)

        await self.app(scope, receive, send_with_headers)


# --- template helpers -------------------------------------------------------------------


def fmt_time(value: datetime | None) -> str:
    return "-" if value is None else f"{value:%Y-%m-%d %H:%M:%S} UTC"


def fmt_seconds(value: float | None) -> str:
    if value is None:
        return "-"
    sign = "-" if value < 0 else ""
    s = abs(value)
    if s < 120:
        return f"{sign}{s:.1f} s"
    if s < 7200:
        return f"{sign}{s / 60:.1f} min"
    if s < 172800:
        return f"{sign}{s / 3600:.1f} h"
    return f"{sign}{s / 86400:.1f} d"


def fmt_json(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False, default=str)


def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("aol.web", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["time"] = fmt_time
    env.filters["seconds"] = fmt_seconds
    env.filters["pretty_json"] = fmt_json
    env.globals["statuses"] = [str(s) for s in ActionStatus]
    env.globals["flag_ops"] = controls.FLAG_CHANGES
    return env


# --- the application --------------------------------------------------------------------


@dataclass(slots=True)
class Dashboard:
    settings: Settings
    pool: asyncpg.Pool[Any]
    sessions: Sessions
    templates: Jinja2Templates
    slow_reads: views.SlowReads

    @property
    def controls_enabled(self) -> bool:
        return bool(self.settings.dashboard_token)

    def session(self, request: Request) -> Session | None:
        if not self.controls_enabled:
            return None
        return self.sessions.get(request.cookies.get(auth.SESSION_COOKIE))

    def may_view(self, request: Request) -> bool:
        """A session, or loopback on both ends of the connection."""
        if self.session(request) is not None:
            return True
        client = request.client.host if request.client else None
        return auth.is_loopback(self.settings.dashboard_host) and auth.is_loopback(client)

    def render(
        self, request: Request, name: str, context: dict[str, Any], status: int = 200
    ) -> Response:
        session = self.session(request)
        base: dict[str, Any] = {
            "operator": session.operator if session else None,
            "csrf": session.csrf if session else "",
            "controls_enabled": self.controls_enabled,
            "refresh_ms": REFRESH_MS,
            "here": request.url.path + (f"?{request.url.query}" if request.url.query else ""),
        }
        base.update(context)
        return self.templates.TemplateResponse(request, name, base, status_code=status)

    def refuse(self, request: Request, status: int, message: str) -> Response:
        if wants_json(request):
            return JSONResponse({"ok": False, "message": message}, status_code=status)
        return self.render(request, "error.html", {"status": status, "message": message}, status)


def wants_json(request: Request) -> bool:
    return "application/json" in request.headers.get("accept", "")


def safe_next(value: object, default: str = "/") -> str:
    """A local path to return to after a POST; anything else becomes `default`."""
    if not isinstance(value, str) or not value.startswith("/") or value.startswith("//"):
        return default
    if "\\" in value or any(ord(ch) < 32 for ch in value):
        return default
    return value


def dashboard(request: Request) -> Dashboard:
    app_state: Dashboard = request.app.state.dashboard
    return app_state


def action_id_of(request: Request) -> int | None:
    value = int(request.path_params["action_id"])
    return value if 0 < value <= BIGINT_MAX else None


# --- pages ------------------------------------------------------------------------------


def _filters(request: Request) -> views.Filters:
    return views.Filters.parse(request.query_params.get("status"), request.query_params.get("type"))


async def index(request: Request) -> Response:
    return await _overview(request, "index.html")


async def live(request: Request) -> Response:
    return await _overview(request, "_live.html")


async def _overview(request: Request, template: str) -> Response:
    d = dashboard(request)
    if not d.may_view(request):
        return _login_needed(request)
    filters = _filters(request)
    if not filters.valid:
        return d.refuse(
            request,
            400,
            f"unknown status {filters.status!r}; expected one of "
            f"{', '.join(str(s) for s in ActionStatus)} or {views.ANY}",
        )
    model = await views.read_overview(d.pool, filters, d.slow_reads)
    return d.render(request, template, {"o": model})


async def action_page(request: Request) -> Response:
    return await _action(request, "action.html")


async def action_live(request: Request) -> Response:
    return await _action(request, "_action_live.html")


async def _action(request: Request, template: str) -> Response:
    d = dashboard(request)
    if not d.may_view(request):
        return _login_needed(request)
    action_id = action_id_of(request)
    page = None if action_id is None else await views.read_action_page(d.pool, action_id)
    if page is None:
        return d.refuse(request, 404, f"no action {request.path_params['action_id']}")
    return d.render(request, template, {"p": page})


async def artifact_page(request: Request) -> Response:
    d = dashboard(request)
    if not d.may_view(request):
        return _login_needed(request)
    row = await _artifact_row(request)
    if row is None:
        return d.refuse(request, 404, f"no artifact for log row {request.path_params['log_id']}")
    checked = await asyncio.to_thread(
        artifacts.check, d.settings.data_dir, row["artifact_ref"], row["artifact_sha256"]
    )
    status = {artifacts.Verdict.REFUSED: 403, artifacts.Verdict.MISSING: 404}.get(
        checked.verdict, 200
    )
    return d.render(request, "artifact.html", {"row": row, "c": checked}, status)


async def artifact_raw(request: Request) -> Response:
    d = dashboard(request)
    if not d.may_view(request):
        return _login_needed(request)
    row = await _artifact_row(request)
    if row is None:
        return d.refuse(request, 404, f"no artifact for log row {request.path_params['log_id']}")
    path = await asyncio.to_thread(artifacts.confine, d.settings.data_dir, row["artifact_ref"])
    if path is None:
        return d.refuse(
            request, 403, f"refused: {row['artifact_ref']!r} is outside the artifacts folder"
        )
    if not await asyncio.to_thread(path.is_file):
        return d.refuse(request, 404, f"no file at {path}")
    return FileResponse(
        path, media_type="text/plain; charset=utf-8", content_disposition_type="inline"
    )


async def _artifact_row(request: Request) -> dict[str, Any] | None:
    log_id = int(request.path_params["log_id"])
    if not 0 < log_id <= BIGINT_MAX:
        return None
    return await store.read_log_artifact(dashboard(request).pool, log_id=log_id)


def _login_needed(request: Request) -> Response:
    d = dashboard(request)
    if not d.controls_enabled:
        return d.refuse(request, 403, "this dashboard serves loopback clients only")
    if request.url.path.endswith("/live") or wants_json(request):
        return d.refuse(request, 401, "log in first: your session has ended or is missing")
    return RedirectResponse(f"/login?next={request.url.path}", status_code=303)


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


# --- login ------------------------------------------------------------------------------


async def login_form(request: Request) -> Response:
    d = dashboard(request)
    return _login_page(request, d, error=None, status=200)


def _login_page(request: Request, d: Dashboard, *, error: str | None, status: int) -> Response:
    token = secrets.token_urlsafe(32)
    response = d.render(
        request,
        "login.html",
        {
            "login_csrf": token,
            "error": error,
            "next": safe_next(request.query_params.get("next")),
        },
        status,
    )
    response.set_cookie(
        auth.LOGIN_CSRF_COOKIE,
        token,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/login",
    )
    return response


async def login(request: Request) -> Response:
    d = dashboard(request)
    try:
        form = await _form(request)
    except ControlRefused as exc:
        return d.refuse(request, exc.status, exc.message)
    if not d.controls_enabled:
        return d.refuse(
            request, 403, "controls are off: no AOL_DASHBOARD_TOKEN is set for this dashboard"
        )
    if not _same_origin(request):
        return d.refuse(request, 403, "cross-origin request refused")
    cookie = request.cookies.get(auth.LOGIN_CSRF_COOKIE)
    if not cookie or not auth.same_secret(cookie, _field(form, "csrf")):
        return _login_page(request, d, error="the form expired: try again", status=403)
    operator = auth.clean_operator(_field(form, "name") or "")
    given = _field(form, "token") or ""
    expected = d.settings.dashboard_token or ""
    if not auth.token_matches(expected, given):
        log.warning("dashboard_login_refused", operator=operator, client=_client(request))
        await asyncio.sleep(LOGIN_FAILURE_DELAY)
        return _login_page(request, d, error="wrong token", status=401)
    if operator is None:
        return _login_page(
            request,
            d,
            error=f"give your name (1 to {auth.OPERATOR_MAX_LENGTH} printable characters): "
            "it is recorded with every change you make",
            status=400,
        )
    session = d.sessions.create(operator)
    log.info("dashboard_login", operator=operator, client=_client(request))
    response = RedirectResponse(safe_next(_field(form, "next")), status_code=303)
    response.set_cookie(
        auth.SESSION_COOKIE,
        session.id,
        max_age=int(d.sessions.ttl),
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/",
    )
    response.delete_cookie(auth.LOGIN_CSRF_COOKIE, path="/login")
    return response


async def logout(request: Request) -> Response:
    d = dashboard(request)
    try:
        _guard(request, await _form(request))
    except ControlRefused as exc:
        return d.refuse(request, exc.status, exc.message)
    d.sessions.drop(request.cookies.get(auth.SESSION_COOKIE))
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(auth.SESSION_COOKIE, path="/")
    return response


# --- controls ---------------------------------------------------------------------------


async def _form(request: Request) -> FormData:
    """The posted form, refused beyond MAX_BODY_BYTES (a control form is a few fields)."""
    length = request.headers.get("content-length", "")
    if not length.isdigit() or int(length) > MAX_BODY_BYTES:
        raise ControlRefused(413, f"a form of up to {MAX_BODY_BYTES} bytes is expected")
    return await request.form(max_files=0, max_fields=MAX_FORM_FIELDS)


def _field(form: FormData, name: str) -> str | None:
    value = form.get(name)
    return value if isinstance(value, str) else None


def _client(request: Request) -> str | None:
    return request.client.host if request.client else None


def _same_origin(request: Request) -> bool:
    return auth.same_origin(
        request.headers.get("host"), request.headers.get("origin"), request.headers.get("referer")
    )


def _guard(request: Request, form: FormData) -> Session:
    """Origin, then a session, then its CSRF token: the checks every control POST passes."""
    d = dashboard(request)
    if not d.controls_enabled:
        raise ControlRefused(
            403, "controls are off: no AOL_DASHBOARD_TOKEN is set for this dashboard"
        )
    if not _same_origin(request):
        raise ControlRefused(403, "cross-origin request refused: Origin is not this dashboard")
    session = d.session(request)
    if session is None:
        raise ControlRefused(401, "log in first: controls need an operator session")
    given = request.headers.get(auth.CSRF_HEADER) or _field(form, "csrf")
    if not auth.same_secret(session.csrf, given):
        raise ControlRefused(403, "missing or wrong CSRF token: reload the page and try again")
    return session


Apply = Callable[[Executor, Session, str], Awaitable[str]]


async def _control(request: Request, control: str, apply: Apply) -> Response:
    d = dashboard(request)
    action_id = request.path_params.get("action_id")
    form = FormData()
    try:
        form = await _form(request)
        session = _guard(request, form)
        reason = controls.clean_reason(_field(form, "reason"))
        message = await apply(d.pool, session, reason)
    except ControlRefused as exc:
        log.warning(
            "dashboard_control_refused",
            control=control,
            action_id=action_id,
            status=exc.status,
            error=exc.message,
            client=_client(request),
        )
        return d.refuse(request, exc.status, exc.message)
    except asyncpg.InsufficientPrivilegeError as exc:
        return d.refuse(
            request, 403, f"the database refused: {exc}; the dashboard's database role lacks it"
        )
    log.info(
        "dashboard_control",
        control=control,
        action_id=action_id,
        operator=session.operator,
        reason=reason,
        result=message,
    )
    if wants_json(request):
        return JSONResponse({"ok": True, "message": message})
    return RedirectResponse(safe_next(_field(form, "next")), status_code=303)


async def flag_control(request: Request) -> Response:
    op = str(request.path_params["op"])
    if op == "retry-all":
        return await _control(
            request,
            op,
            lambda db, s, reason: controls.retry_all(db, operator=s.operator, reason=reason),
        )
    return await _control(
        request,
        op,
        lambda db, s, reason: controls.change_flags(db, op=op, operator=s.operator, reason=reason),
    )


async def retry_action(request: Request) -> Response:
    return await _action_control(request, "retry", controls.retry_one)


async def cancel_action(request: Request) -> Response:
    return await _action_control(request, "cancel", controls.cancel)


async def _action_control(
    request: Request, op: str, change: Callable[..., Awaitable[str]]
) -> Response:
    """A control on one action (`change(db, action_id=, operator=, reason=)`)."""
    action_id = action_id_of(request)
    return await _control(
        request,
        op,
        lambda db, s, reason: (
            _missing(request)
            if action_id is None
            else change(db, action_id=action_id, operator=s.operator, reason=reason)
        ),
    )


async def _missing(request: Request) -> str:
    raise ControlRefused(404, f"no action {request.path_params['action_id']}")


def create_app(settings: Settings, pool: asyncpg.Pool[Any]) -> Starlette:
    """The dashboard on an open pool; refuses a non-loopback address without a token."""
    auth.check_bind(settings.dashboard_host, settings.dashboard_token)
    app = Starlette(
        routes=[
            Route("/", index),
            Route("/live", live),
            Route("/healthz", healthz),
            Route("/login", login_form, methods=["GET"]),
            Route("/login", login, methods=["POST"]),
            Route("/logout", logout, methods=["POST"]),
            Route("/control/{op}", flag_control, methods=["POST"]),
            Route("/actions/{action_id:int}", action_page),
            Route("/actions/{action_id:int}/live", action_live),
            Route("/actions/{action_id:int}/retry", retry_action, methods=["POST"]),
            Route("/actions/{action_id:int}/cancel", cancel_action, methods=["POST"]),
            Route("/artifacts/{log_id:int}", artifact_page),
            Route("/artifacts/{log_id:int}/raw", artifact_raw),
            Mount("/static", StaticFiles(packages=[("aol.web", "static")]), name="static"),
        ],
    )
    app.state.dashboard = Dashboard(
        settings=settings,
        pool=pool,
        sessions=Sessions(),
        templates=Jinja2Templates(env=environment()),
        slow_reads=views.SlowReads.on(pool),
    )
    app.add_middleware(SecurityHeaders)
    return app
