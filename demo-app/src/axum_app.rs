//! The demo as an axum router (`--framework axum`): the same routes,
//! statuses and JSON as the warp tree, through the tower `SessionLayer`
//! and the axum `Session` extractor.

use axum::Router;
use axum::body::Body;
use axum::extract::{Extension, RawQuery, State};
use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, get, post};
use memcached_sessions::{Session, SessionHandle, SessionManager, SessionRejection};
use metrics_exporter_prometheus::PrometheusHandle;

use crate::handlers::{self, IncrementQuery, Login, MAX_LOGIN_BODY, Reply};

#[derive(Clone)]
struct AppState {
    manager: SessionManager,
    instance: String,
    metrics: PrometheusHandle,
}

/// The whole app: routes, session layer, error mapping, `X-Instance`.
pub(crate) fn app(manager: SessionManager, instance: String, metrics: PrometheusHandle) -> Router {
    let layer = manager.layer();
    let x_instance = HeaderValue::from_str(&instance).unwrap_or_else(|_| HeaderValue::from_static("invalid"));
    Router::new()
        // axum answers HEAD with the GET handler; warp's `get()` does not:
        // HEAD is refused explicitly, as in warp.
        .route("/health", get(|| async { "ok" }).on(MethodFilter::HEAD, not_allowed))
        .route(
            "/counter",
            get(counter).post(increment).on(MethodFilter::HEAD, not_allowed),
        )
        .route("/login", post(login))
        .route("/logout", post(logout))
        .route("/stats", get(stats).on(MethodFilter::HEAD, not_allowed))
        .route("/metrics", get(scrape).on(MethodFilter::HEAD, not_allowed))
        .route("/cluster", get(cluster).on(MethodFilter::HEAD, not_allowed))
        .route("/", get(page).on(MethodFilter::HEAD, not_allowed))
        .fallback(|| async { text(StatusCode::NOT_FOUND, "not found") })
        .method_not_allowed_fallback(not_allowed)
        .with_state(AppState {
            manager,
            instance,
            metrics,
        })
        .layer(layer)
        .layer(axum::middleware::map_response(move |mut response: Response| {
            let x_instance = x_instance.clone();
            async move {
                response.headers_mut().insert("x-instance", x_instance);
                response
            }
        }))
}

/// `GET /metrics`: Prometheus text.
async fn scrape(State(state): State<AppState>) -> Response {
    let mut response = state.metrics.render().into_response();
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(crate::metrics::CONTENT_TYPE));
    response
}

async fn not_allowed() -> Response {
    text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
}

fn text(status: StatusCode, message: &str) -> Response {
    respond(Reply::Text(status, message.to_owned()))
}

fn respond(reply: Reply) -> Response {
    let (status, content_type, body) = match reply {
        Reply::Json(body) => match serde_json::to_vec(&body) {
            Ok(json) => (StatusCode::OK, "application/json", json),
            Err(error) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain; charset=utf-8",
                error.to_string().into_bytes(),
            ),
        },
        Reply::Html(html) => (StatusCode::OK, "text/html; charset=utf-8", html.into_bytes()),
        Reply::Text(status, message) => (status, "text/plain; charset=utf-8", message.into_bytes()),
    };
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

async fn counter(State(app): State<AppState>, session: Session) -> Response {
    respond(handlers::counter(&session, app.instance))
}

/// The request is checked before the session is loaded (as warp's filter
/// order does): a bad request is a 4xx, never a wait for a lock or a 503.
async fn increment(
    State(app): State<AppState>,
    RawQuery(query): RawQuery,
    Extension(handle): Extension<SessionHandle>,
) -> Result<Response, SessionRejection> {
    let Ok(query) = serde_urlencoded::from_str::<IncrementQuery>(query.as_deref().unwrap_or("")) else {
        return Ok(text(StatusCode::BAD_REQUEST, "bad query string"));
    };
    let session = handle.session().await?;
    Ok(respond(handlers::increment(query, &session, app.instance).await))
}

/// As warp's `content_length_limit` + `body::json`: a length is required
/// and bounded, a content type other than JSON is refused, the body is
/// read (at most the limit) and parsed — all before the session is loaded.
async fn login(
    State(app): State<AppState>,
    headers: HeaderMap,
    Extension(handle): Extension<SessionHandle>,
    body: Body,
) -> Result<Response, SessionRejection> {
    let length = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    match length {
        None => return Ok(text(StatusCode::LENGTH_REQUIRED, "length required")),
        Some(length) if length > MAX_LOGIN_BODY => {
            return Ok(text(StatusCode::PAYLOAD_TOO_LARGE, "payload too large"));
        }
        Some(_) => {}
    }
    let json = headers.get(CONTENT_TYPE).is_none_or(|value| {
        value.to_str().is_ok_and(|v| {
            v.split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
        })
    });
    if !json {
        return Ok(text(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported media type"));
    }
    let limit = usize::try_from(MAX_LOGIN_BODY).unwrap_or(usize::MAX);
    let Ok(body) = axum::body::to_bytes(body, limit).await else {
        return Ok(text(StatusCode::PAYLOAD_TOO_LARGE, "payload too large"));
    };
    let login = match serde_json::from_slice::<Login>(&body) {
        Ok(login) => login,
        Err(error) => {
            return Ok(text(
                StatusCode::BAD_REQUEST,
                &format!("bad request body: Request body deserialize error: {error}"),
            ));
        }
    };
    let session = handle.session().await?;
    Ok(respond(handlers::login(login, &session, app.instance)))
}

async fn logout(State(app): State<AppState>, session: Session) -> Response {
    respond(handlers::logout(&session, app.instance))
}

async fn stats(State(app): State<AppState>) -> Response {
    match serde_json::to_vec(&app.manager.statistics()) {
        Ok(json) => ([(CONTENT_TYPE, "application/json")], json).into_response(),
        Err(error) => text(StatusCode::INTERNAL_SERVER_ERROR, &error.to_string()),
    }
}

async fn cluster(State(app): State<AppState>, session: Session) -> Response {
    respond(handlers::cluster(&app.manager, &session, app.instance))
}

async fn page(State(app): State<AppState>, session: Session) -> Response {
    respond(handlers::page(&session, app.instance, app.manager.config().sticky()))
}
