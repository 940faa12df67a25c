//! `fmnist-serve`: a trained model behind HTTP (axum on tokio). The model and the similarity
//! index are loaded once; each request's image is decoded with bounds, fitted to the 28x28
//! input by the model library ([`fmnist_models::photo`], as `predict` does), and classified
//! on a blocking thread.
//!
//! - `POST /classify`: an image body (`image/*` or `application/octet-stream`) answers one
//!   prediction; `multipart/form-data` with several files answers `{"results": [...]}`.
//! - `POST /similar?k=8`: the k training images nearest in the model's embedding.
//! - `GET /train-image/{i}`: training image i as PNG (the page shows the neighbours).
//! - `GET /`: a page to upload, drop or draw an image; `GET /health`; `GET /metrics`.
//!
//! Bad input answers a 4xx with `{"error": "..."}` and never stops the server: bodies over
//! the size limit (refused on their Content-Length before any is read, or while reading),
//! slow bodies (a read timeout),
//! wrong content types, empty, truncated or non-image files, too many pixels.
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{FromRequest, Multipart, Path as UrlPath, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use fmnist_data::ImageSet;
use fmnist_models::Classifier;
use serde::Deserialize;
use serde_json::json;

use fmnist_models::photo::{self, decode_bytes, DecodeError, Invert};
use fmnist_models::prediction::{top_k, Prediction};
use fmnist_models::similar::{similar_to, SimilarityIndex};

/// How the server answers.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Largest request body, in bytes (refused with 413 while reading).
    pub max_body: usize,
    /// Longest time to receive a body (408 after it).
    pub read_timeout: Duration,
    /// Classes per prediction.
    pub top: usize,
    /// `needs_review` below this top probability.
    pub threshold: f32,
    pub invert: Invert,
}

/// What every handler shares.
pub struct App {
    pub classifier: Classifier,
    pub index: SimilarityIndex,
    pub train: ImageSet,
    pub run: String,
    /// The machine it runs on, as `/health` reports it.
    pub machine: String,
    pub options: ServeOptions,
    metrics: Metrics,
}

impl App {
    pub fn new(
        classifier: Classifier,
        index: SimilarityIndex,
        train: ImageSet,
        run: String,
        machine: String,
        options: ServeOptions,
    ) -> Self {
        App {
            classifier,
            index,
            train,
            run,
            machine,
            options,
            metrics: Metrics::default(),
        }
    }
}

/// Requests, errors and the latencies of the last [`LATENCY_WINDOW`] requests.
#[derive(Default)]
struct Metrics {
    requests: AtomicU64,
    client_errors: AtomicU64,
    server_errors: AtomicU64,
    latencies: Mutex<std::collections::VecDeque<f64>>,
}

const LATENCY_WINDOW: usize = 10_000;

/// An error answer: a status and `{"error": message}`.
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

impl From<DecodeError> for ApiError {
    fn from(e: DecodeError) -> Self {
        let status = match e {
            DecodeError::Empty => StatusCode::BAD_REQUEST,
            DecodeError::UnknownFormat => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            DecodeError::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            DecodeError::Corrupt(_) => StatusCode::UNPROCESSABLE_ENTITY,
        };
        ApiError(status, e.to_string())
    }
}

/// The router of the service.
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/classify", post(classify))
        .route("/similar", post(similar))
        .route("/train-image/{index}", get(train_image))
        .layer(axum::extract::DefaultBodyLimit::max(app.options.max_body))
        .layer(middleware::from_fn_with_state(app.clone(), record))
        .with_state(app)
}

/// Serves on `addr` until Ctrl-C; `ready` is called with the bound address first.
pub async fn serve(
    app: Arc<App>,
    addr: SocketAddr,
    ready: impl FnOnce(SocketAddr),
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
    ready(listener.local_addr()?);
    axum::serve(listener, router(app))
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}

/// Counts every request and its latency.
async fn record(State(app): State<Arc<App>>, request: Request, next: Next) -> Response {
    let start = Instant::now();
    let response = next.run(request).await;
    let m = &app.metrics;
    m.requests.fetch_add(1, Ordering::Relaxed);
    if response.status().is_client_error() {
        m.client_errors.fetch_add(1, Ordering::Relaxed);
    } else if response.status().is_server_error() {
        m.server_errors.fetch_add(1, Ordering::Relaxed);
    }
    if let Ok(mut l) = m.latencies.lock() {
        if l.len() == LATENCY_WINDOW {
            l.pop_front();
        }
        l.push_back(start.elapsed().as_secs_f64());
    }
    response
}

async fn page() -> Html<&'static str> {
    Html(include_str!("../assets/serve.html"))
}

async fn health(State(app): State<Arc<App>>) -> Json<serde_json::Value> {
    Json(json!({
        "status": "ok",
        "run": app.run,
        "machine": app.machine,
        "model": app.classifier.model().kind().to_string(),
        "parameters": app.classifier.model().param_count(),
        "classes": app.classifier.class_names(),
        "index_images": app.index.len(),
    }))
}

/// Prometheus' text format: counters and latency quantiles of the recent requests.
async fn metrics(State(app): State<Arc<App>>) -> impl IntoResponse {
    let m = &app.metrics;
    let mut lat: Vec<f64> = m
        .latencies
        .lock()
        .map(|l| l.iter().copied().collect())
        .unwrap_or_default();
    lat.sort_by(f64::total_cmp);
    let q = |p: f64| {
        if lat.is_empty() {
            f64::NAN
        } else {
            lat[((lat.len() - 1) as f64 * p).round() as usize]
        }
    };
    let text = format!(
        "# HELP fmnist_requests_total Requests answered.\n# TYPE fmnist_requests_total counter\n\
         fmnist_requests_total {}\n\
         # HELP fmnist_request_errors_total Requests answered with an error status.\n\
         # TYPE fmnist_request_errors_total counter\n\
         fmnist_request_errors_total{{class=\"4xx\"}} {}\n\
         fmnist_request_errors_total{{class=\"5xx\"}} {}\n\
         # HELP fmnist_request_latency_seconds Latency of the last {} requests.\n\
         # TYPE fmnist_request_latency_seconds summary\n\
         fmnist_request_latency_seconds{{quantile=\"0.5\"}} {}\n\
         fmnist_request_latency_seconds{{quantile=\"0.9\"}} {}\n\
         fmnist_request_latency_seconds{{quantile=\"0.99\"}} {}\n\
         fmnist_request_latency_seconds_count {}\n",
        m.requests.load(Ordering::Relaxed),
        m.client_errors.load(Ordering::Relaxed),
        m.server_errors.load(Ordering::Relaxed),
        LATENCY_WINDOW,
        q(0.5),
        q(0.9),
        q(0.99),
        lat.len()
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}

/// The uploaded files of a request, with their names: one from an image body, each file of
/// a multipart form.
async fn read_images(
    app: &App,
    request: Request,
) -> Result<(Vec<(String, Vec<u8>)>, bool), ApiError> {
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let limit = app.options.max_body;
    let too_large = || {
        ApiError(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body is over the limit of {limit} bytes"),
        )
    };
    // A body announced as too large is refused before any of it is read.
    let announced = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if announced.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    let timeout = app.options.read_timeout;
    let slow = || {
        ApiError(
            StatusCode::REQUEST_TIMEOUT,
            format!("the body did not arrive within {} s", timeout.as_secs_f64()),
        )
    };
    if content_type.starts_with("multipart/form-data") {
        let read = async {
            let mut form = Multipart::from_request(request, &())
                .await
                .map_err(|e| ApiError(e.status(), e.body_text()))?;
            let mut files = Vec::new();
            while let Some(field) = form
                .next_field()
                .await
                .map_err(|e| ApiError(e.status(), e.body_text()))?
            {
                let name = field
                    .file_name()
                    .or(field.name())
                    .unwrap_or("file")
                    .to_string();
                let bytes = field.bytes().await.map_err(|e| {
                    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                        too_large()
                    } else {
                        ApiError(e.status(), e.body_text())
                    }
                })?;
                files.push((name, bytes.to_vec()));
            }
            if files.is_empty() {
                return Err(ApiError(
                    StatusCode::BAD_REQUEST,
                    "the form holds no file".into(),
                ));
            }
            Ok((files, true))
        };
        return tokio::time::timeout(timeout, read)
            .await
            .map_err(|_| slow())?;
    }
    if !(content_type.starts_with("image/") || content_type == "application/octet-stream") {
        return Err(ApiError(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "Content-Type {:?}: send an image (image/png, image/jpeg, ... or \
                 application/octet-stream) or multipart/form-data with image files",
                if content_type.is_empty() {
                    "(none)"
                } else {
                    &content_type
                }
            ),
        ));
    }
    let body = tokio::time::timeout(timeout, axum::body::to_bytes(request.into_body(), limit))
        .await
        .map_err(|_| slow())?
        .map_err(|e| {
            let mut source: Option<&dyn std::error::Error> = Some(&e);
            while let Some(s) = source {
                if s.to_string().contains("length limit exceeded") {
                    return too_large();
                }
                source = s.source();
            }
            ApiError(StatusCode::BAD_REQUEST, format!("reading the body: {e}"))
        })?;
    Ok((vec![("image".into(), body.to_vec())], false))
}

#[derive(Debug, Deserialize)]
struct ClassifyQuery {
    top: Option<usize>,
    threshold: Option<f32>,
}

/// The 28x28 input of an uploaded file (for the search, which embeds it), and whether it was
/// inverted.
fn input_of(bytes: &[u8], invert: Invert) -> Result<(Vec<u8>, bool), DecodeError> {
    let img = decode_bytes(bytes)?;
    let (input, inverted) = photo::fit(&img, invert);
    Ok((input.into_raw(), inverted))
}

async fn classify(
    State(app): State<Arc<App>>,
    Query(q): Query<ClassifyQuery>,
    request: Request,
) -> Response {
    let (files, multipart) = match read_images(&app, request).await {
        Ok(f) => f,
        Err(e) => return e.into_response(),
    };
    let top = q.top.unwrap_or(app.options.top).clamp(1, 10);
    let threshold = q.threshold.unwrap_or(app.options.threshold);
    let worker = app.clone();
    let answers = tokio::task::spawn_blocking(move || {
        files
            .into_iter()
            .map(|(name, bytes)| {
                let answer = decode_bytes(&bytes)
                    .map_err(ApiError::from)
                    .and_then(|photo| {
                        let (probs, inverted) = worker
                            .classifier
                            .classify_photo(&photo, worker.options.invert)
                            .map_err(|e| {
                                ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
                            })?;
                        Ok(Prediction::new(
                            name.clone(),
                            &probs,
                            worker.classifier.class_names(),
                            top,
                            threshold,
                            inverted,
                        ))
                    });
                (name, answer)
            })
            .collect::<Vec<(String, Result<Prediction, ApiError>)>>()
    })
    .await;
    let Ok(mut answers) = answers else {
        return ApiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the classifier failed".into(),
        )
        .into_response();
    };
    if !multipart {
        return match answers.remove(0).1 {
            Ok(p) => Json(p).into_response(),
            Err(e) => e.into_response(),
        };
    }
    // A form answers per file; a file that fails carries its error and status.
    let results: Vec<FormAnswer> = answers
        .into_iter()
        .map(|(file, a)| match a {
            Ok(p) => FormAnswer::Classified(p),
            Err(ApiError(status, error)) => FormAnswer::Failed {
                file,
                error,
                status: status.as_u16(),
            },
        })
        .collect();
    Json(FormAnswers { results }).into_response()
}

/// The answer to a form (serialized directly: through `serde_json::Value` the f32
/// probabilities would print as f64, unlike `predict --json`'s).
#[derive(serde::Serialize)]
struct FormAnswers {
    results: Vec<FormAnswer>,
}

/// The answer for one file of a form.
#[derive(serde::Serialize)]
#[serde(untagged)]
enum FormAnswer {
    Classified(Prediction),
    Failed {
        file: String,
        error: String,
        status: u16,
    },
}

#[derive(Debug, Deserialize)]
struct SimilarQuery {
    k: Option<usize>,
}

/// Neighbours answered at most.
const MAX_K: usize = 100;

async fn similar(
    State(app): State<Arc<App>>,
    Query(q): Query<SimilarQuery>,
    request: Request,
) -> Response {
    let k = q.k.unwrap_or(8);
    if k == 0 || k > MAX_K {
        return ApiError(
            StatusCode::BAD_REQUEST,
            format!("k must be from 1 to {MAX_K}"),
        )
        .into_response();
    }
    let (mut files, _) = match read_images(&app, request).await {
        Ok(f) => f,
        Err(e) => return e.into_response(),
    };
    let (_, bytes) = files.remove(0);
    let worker = app.clone();
    let answer = tokio::task::spawn_blocking(move || -> Result<serde_json::Value, ApiError> {
        let (input, inverted) = input_of(&bytes, worker.options.invert)?;
        let internal = |e: fmnist_models::ModelError| {
            ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
        };
        let probs = worker.classifier.classify(&input).map_err(internal)?;
        let names = worker.classifier.class_names();
        let best = top_k(&probs, names, 1).remove(0);
        let neighbours =
            similar_to(&worker.classifier, &worker.index, &input, k).map_err(internal)?;
        let neighbours: Vec<serde_json::Value> = neighbours
            .into_iter()
            .map(|n| {
                json!({
                    "index": n.index,
                    "label": n.label,
                    "distance": n.distance,
                    "image": format!("/train-image/{}", n.index),
                })
            })
            .collect();
        Ok(json!({
            "class": best.class,
            "probability": best.probability,
            "inverted": inverted,
            "neighbours": neighbours,
        }))
    })
    .await;
    match answer {
        Ok(Ok(v)) => Json(v).into_response(),
        Ok(Err(e)) => e.into_response(),
        Err(_) => ApiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the search failed".into(),
        )
        .into_response(),
    }
}

async fn train_image(State(app): State<Arc<App>>, UrlPath(index): UrlPath<String>) -> Response {
    let found = index
        .trim_end_matches(".png")
        .parse::<usize>()
        .ok()
        .and_then(|i| app.train.get(i));
    let Some((pixels, _)) = found else {
        return ApiError(
            StatusCode::NOT_FOUND,
            format!(
                "no training image {index} (0 to {})",
                app.train.len().saturating_sub(1)
            ),
        )
        .into_response();
    };
    let img = image::GrayImage::from_raw(28, 28, pixels.to_vec());
    let mut png = Vec::new();
    let encoded = img.map(|img| {
        image::DynamicImage::ImageLuma8(img)
            .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
    });
    match encoded {
        Some(Ok(())) => {
            let mut headers = HeaderMap::new();
            headers.insert(
                header::CONTENT_TYPE,
                "image/png".parse().expect("a header value"),
            );
            headers.insert(
                header::CACHE_CONTROL,
                "public, max-age=86400".parse().expect("a header value"),
            );
            (headers, Body::from(png)).into_response()
        }
        _ => ApiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            "cannot encode the image".into(),
        )
        .into_response(),
    }
}
