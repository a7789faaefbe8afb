//! The demo as a warp filter tree (`--framework warp`, the default).

use std::convert::Infallible;

use memcached_sessions::{Session, SessionManager};
use metrics_exporter_prometheus::PrometheusHandle;
use warp::http::StatusCode;
use warp::http::header::CONTENT_TYPE;
use warp::reply::Response;
use warp::{Filter, Rejection, Reply as _};

use crate::handlers::{self, IncrementQuery, Login, MAX_LOGIN_BODY, Reply};

/// The whole app: routes, session layer, error mapping, `X-Instance`.
pub(crate) fn app(
    manager: SessionManager,
    instance: String,
    metrics: PrometheusHandle,
) -> impl Filter<Extract = (impl warp::Reply,), Error = Infallible> + Clone + Send + Sync + 'static {
    let session = manager.session();
    let with_instance = {
        let instance = instance.clone();
        warp::any().map(move || instance.clone())
    };
    let health = warp::path!("health").and(warp::get()).map(|| "ok");
    let read_counter = warp::path!("counter")
        .and(warp::get())
        .and(session.clone())
        .and(with_instance.clone())
        .map(|session: Session, instance| respond(handlers::counter(&session, instance)));
    let increment = warp::path!("counter")
        .and(warp::post())
        .and(warp::query::<IncrementQuery>())
        .and(session.clone())
        .and(with_instance.clone())
        .then(|query, session: Session, instance| async move {
            respond(handlers::increment(query, &session, instance).await)
        });
    let login = warp::path!("login")
        .and(warp::post())
        .and(warp::body::content_length_limit(MAX_LOGIN_BODY))
        .and(warp::body::json::<Login>())
        .and(session.clone())
        .and(with_instance.clone())
        .map(|login, session: Session, instance| respond(handlers::login(login, &session, instance)));
    let logout = warp::path!("logout")
        .and(warp::post())
        .and(session.clone())
        .and(with_instance.clone())
        .map(|session: Session, instance| respond(handlers::logout(&session, instance)));
    let stats = {
        let manager = manager.clone();
        warp::path!("stats")
            .and(warp::get())
            .map(move || warp::reply::json(&manager.statistics()))
    };
    let scrape = warp::path!("metrics").and(warp::get()).map(move || {
        warp::reply::with_header(metrics.render(), CONTENT_TYPE, crate::metrics::CONTENT_TYPE).into_response()
    });
    let cluster = {
        let manager = manager.clone();
        warp::path!("cluster")
            .and(warp::get())
            .and(session.clone())
            .and(with_instance.clone())
            .map(move |session: Session, instance| respond(handlers::cluster(&manager, &session, instance)))
    };
    let sticky = manager.config().sticky();
    let page = warp::path::end()
        .and(warp::get())
        .and(session)
        .and(with_instance)
        .map(move |session: Session, instance| respond(handlers::page(&session, instance, sticky)));
    let routes = health
        .or(read_counter)
        .or(increment)
        .or(login)
        .or(logout)
        .or(stats)
        .or(scrape)
        .or(cluster)
        .or(page);
    manager
        .wrap(routes)
        .recover(handle_rejection)
        .with(warp::reply::with::header("x-instance", instance))
}

fn respond(reply: Reply) -> Response {
    match reply {
        Reply::Json(body) => warp::reply::json(&body).into_response(),
        Reply::Html(html) => warp::reply::html(html).into_response(),
        Reply::Text(status, message) => warp::reply::with_status(message, status).into_response(),
    }
}

async fn handle_rejection(rejection: Rejection) -> Result<Response, Infallible> {
    // The specific rejections first: `POST /counter?delay_ms=x` is
    // rejected by the GET route (method) and the POST route (query), and
    // the query is what is wrong.
    let (status, message) = if rejection.is_not_found() {
        (StatusCode::NOT_FOUND, "not found".to_owned())
    } else if let Some(error) = rejection.find::<warp::filters::body::BodyDeserializeError>() {
        (StatusCode::BAD_REQUEST, format!("bad request body: {error}"))
    } else if rejection.find::<warp::reject::InvalidQuery>().is_some() {
        (StatusCode::BAD_REQUEST, "bad query string".to_owned())
    } else if rejection.find::<warp::reject::PayloadTooLarge>().is_some() {
        (StatusCode::PAYLOAD_TOO_LARGE, "payload too large".to_owned())
    } else if rejection.find::<warp::reject::UnsupportedMediaType>().is_some() {
        (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported media type".to_owned())
    } else if rejection.find::<warp::reject::LengthRequired>().is_some() {
        (StatusCode::LENGTH_REQUIRED, "length required".to_owned())
    } else if rejection.find::<warp::reject::MethodNotAllowed>().is_some() {
        (StatusCode::METHOD_NOT_ALLOWED, "method not allowed".to_owned())
    } else {
        tracing::error!(?rejection, "unhandled rejection");
        (StatusCode::INTERNAL_SERVER_ERROR, "internal error".to_owned())
    };
    Ok(warp::reply::with_status(message, status).into_response())
}
