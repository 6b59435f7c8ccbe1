//! HTTP routing and handlers: discovery, list, watch, get, create, update, patch, delete.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt as _;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::resources::{self, RESOURCES, ResourceDef};
use super::selector::{FieldSelector, LabelSelector};
use super::store::{ApiError, Filter, Key, State, StoredObject, WriteMode, bookmark_line, details};

pub(crate) type Body = BoxBody<Bytes, Infallible>;

/// State shared by the server task, its connections and the test hooks.
pub(crate) struct Shared {
    pub state: Mutex<State>,
    pub requests: Mutex<Vec<(String, String)>>,
    /// How often open watches that allow bookmarks get one (the real server: about a minute).
    pub bookmark_interval: Mutex<Option<Duration>>,
    pub addr: SocketAddr,
}

impl Shared {
    pub fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Decodes an `application/x-www-form-urlencoded` query string.
pub fn decode_query(query: &str) -> Vec<(String, String)> {
    fn decode(s: &str) -> String {
        let bytes = s.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < bytes.len() => {
                    let hex = |b: u8| (b as char).to_digit(16);
                    match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                        (Some(h), Some(l)) => {
                            out.push((h * 16 + l) as u8);
                            i += 2;
                        }
                        _ => out.push(b'%'),
                    }
                }
                b => out.push(b),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (decode(k), decode(v)),
            None => (decode(p), String::new()),
        })
        .collect()
}

struct Query(Vec<(String, String)>);

impl Query {
    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn flag(&self, name: &str) -> bool {
        matches!(self.get(name), Some("true" | "1"))
    }
}

fn json_response(code: u16, v: &Value) -> Response<Body> {
    bytes_response(code, Bytes::from(v.to_string()))
}

fn bytes_response(code: u16, b: Bytes) -> Response<Body> {
    Response::builder()
        .status(StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header(header::CONTENT_TYPE, "application/json")
        .header("Cache-Control", "no-cache, private")
        .body(Full::new(b).boxed())
        .expect("valid response")
}

fn error_response(e: &ApiError) -> Response<Body> {
    json_response(e.code, &e.status())
}

fn not_found_path() -> Response<Body> {
    error_response(
        &ApiError::new(404, "NotFound", "the server could not find the requested resource")
            .with_details(json!({"causes": [{"reason": "UnexpectedServerResponse", "message": "404 page not found"}]})),
    )
}

fn method_not_allowed(method: &Method) -> Response<Body> {
    error_response(&ApiError::new(
        405,
        "MethodNotAllowed",
        format!("the server does not allow this method on the requested resource ({method})"),
    ))
}

enum Route {
    Version,
    Api,
    Apis,
    Group(String),
    ResourceList(String, String),
    Collection {
        res: usize,
        ns: Option<String>,
    },
    Object {
        res: usize,
        ns: Option<String>,
        name: String,
        status: bool,
    },
    Unknown,
}

fn route(path: &str) -> Route {
    let path = path.trim_end_matches('/');
    let segs: Vec<&str> = path.split('/').skip(1).collect();
    match segs.as_slice() {
        ["version"] => Route::Version,
        ["api"] => Route::Api,
        ["apis"] => Route::Apis,
        ["api", v] => Route::ResourceList(String::new(), (*v).to_owned()),
        ["apis", g] => Route::Group((*g).to_owned()),
        ["apis", g, v] => Route::ResourceList((*g).to_owned(), (*v).to_owned()),
        ["api", v, rest @ ..] => resource_route("", v, rest),
        ["apis", g, v, rest @ ..] => resource_route(g, v, rest),
        _ => Route::Unknown,
    }
}

fn resource_route(group: &str, version: &str, rest: &[&str]) -> Route {
    if let ["namespaces", ns, plural, tail @ ..] = rest
        && let Some(res) = resources::find(group, version, plural)
        && RESOURCES[res].namespaced
    {
        let ns = Some((*ns).to_owned());
        return match tail {
            [] => Route::Collection { res, ns },
            [name] => Route::Object {
                res,
                ns,
                name: (*name).to_owned(),
                status: false,
            },
            [name, "status"] if RESOURCES[res].status_subresource => Route::Object {
                res,
                ns,
                name: (*name).to_owned(),
                status: true,
            },
            _ => Route::Unknown,
        };
    }
    let Some((plural, tail)) = rest.split_first() else {
        return Route::Unknown;
    };
    let Some(res) = resources::find(group, version, plural) else {
        return Route::Unknown;
    };
    match tail {
        [] => Route::Collection { res, ns: None },
        [name] if !RESOURCES[res].namespaced => Route::Object {
            res,
            ns: None,
            name: (*name).to_owned(),
            status: false,
        },
        [name, "status"] if !RESOURCES[res].namespaced && RESOURCES[res].status_subresource => {
            Route::Object {
                res,
                ns: None,
                name: (*name).to_owned(),
                status: true,
            }
        }
        _ => Route::Unknown,
    }
}

/// The RBAC verb a request needs.
fn verb(method: &Method, watch: bool, object: bool) -> &'static str {
    match (method.as_str(), watch, object) {
        ("GET", true, _) => "watch",
        ("GET", false, false) => "list",
        ("GET", false, true) => "get",
        ("POST", ..) => "create",
        ("PUT", ..) => "update",
        ("PATCH", ..) => "patch",
        ("DELETE", _, false) => "deletecollection",
        ("DELETE", _, true) => "delete",
        _ => "unknown",
    }
}

fn forbidden(def: &ResourceDef, verb: &str, ns: Option<&str>, name: Option<&str>) -> ApiError {
    let scope = match ns {
        Some(ns) => format!("in the namespace \"{ns}\""),
        None => "at the cluster scope".to_owned(),
    };
    let named = name.map(|n| format!(" \"{n}\"")).unwrap_or_default();
    let mut details = json!({"kind": def.plural});
    if let Some(n) = name {
        details["name"] = json!(n);
    }
    if !def.group.is_empty() {
        details["group"] = json!(def.group);
    }
    ApiError::new(
        403,
        "Forbidden",
        format!(
            "{}{named} is forbidden: User \"system:anonymous\" cannot {verb} resource \"{}\" in \
             API group \"{}\" {scope}",
            def.qualified(),
            def.plural,
            def.group
        ),
    )
    .with_details(details)
}

fn wants_metadata_only(req: &Request<Incoming>) -> bool {
    req.headers().get_all(header::ACCEPT).iter().any(|v| {
        v.to_str()
            .is_ok_and(|s| s.contains("as=PartialObjectMetadata"))
    })
}

fn wants_aggregated(req: &Request<Incoming>) -> bool {
    req.headers().get_all(header::ACCEPT).iter().any(|v| {
        v.to_str()
            .is_ok_and(|s| s.contains("as=APIGroupDiscoveryList"))
    })
}

/// Answers one request.
pub(crate) async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Response<Body> {
    let path_and_query = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| req.uri().path().to_owned());
    shared
        .requests
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push((req.method().to_string(), path_and_query));
    if req.uri().path().trim_end_matches('/') == super::tokenreview::PATH {
        return super::tokenreview::handle(&shared, req).await;
    }
    let query = Query(decode_query(req.uri().query().unwrap_or("")));
    let method = req.method().clone();
    match route(req.uri().path()) {
        Route::Version if method == Method::GET => json_response(200, &resources::version_info()),
        Route::Api if method == Method::GET => {
            if wants_aggregated(&req) {
                json_response(200, &resources::aggregated_discovery(true))
            } else {
                json_response(200, &resources::api_versions(&shared.addr.to_string()))
            }
        }
        Route::Apis if method == Method::GET => {
            if wants_aggregated(&req) {
                json_response(200, &resources::aggregated_discovery(false))
            } else {
                json_response(200, &resources::api_group_list())
            }
        }
        Route::Group(g) if method == Method::GET => match resources::api_group(&g) {
            Some(v) => json_response(200, &v),
            None => not_found_path(),
        },
        Route::ResourceList(g, v) if method == Method::GET => {
            match resources::api_resource_list(&g, &v) {
                Some(v) => json_response(200, &v),
                None => not_found_path(),
            }
        }
        Route::Collection { res, ns } => {
            let def = &RESOURCES[res];
            let watch = query.flag("watch");
            if shared.state().forbidden.contains(def.plural) {
                return error_response(&forbidden(
                    def,
                    verb(&method, watch, false),
                    ns.as_deref(),
                    None,
                ));
            }
            let result = match method {
                Method::GET if watch => {
                    return watch_collection(&shared, res, ns, &query, wants_metadata_only(&req));
                }
                Method::GET => list_collection(&shared, res, ns, &query, wants_metadata_only(&req)),
                Method::POST => match ns {
                    Some(ns) => create(&shared, res, &ns, &query, req).await,
                    None if !def.namespaced => create(&shared, res, "", &query, req).await,
                    None => return method_not_allowed(&method),
                },
                _ => return method_not_allowed(&method),
            };
            result.unwrap_or_else(|e| error_response(&e))
        }
        Route::Object {
            res,
            ns,
            name,
            status,
        } => {
            let def = &RESOURCES[res];
            if shared.state().forbidden.contains(def.plural) {
                return error_response(&forbidden(
                    def,
                    verb(&method, false, true),
                    ns.as_deref(),
                    Some(&name),
                ));
            }
            let key: Key = (ns.clone().unwrap_or_default(), name.clone());
            let meta_only = wants_metadata_only(&req);
            let result = match method {
                Method::GET => get(&shared, res, &key, meta_only),
                Method::PUT => Edit::read(res, &key, status, &query, req)
                    .await
                    .and_then(|edit| update(&shared, edit)),
                Method::PATCH => Edit::read(res, &key, status, &query, req)
                    .await
                    .and_then(|edit| patch(&shared, edit)),
                Method::DELETE if !status => delete(&shared, res, &key, req).await,
                _ => return method_not_allowed(&method),
            };
            result.unwrap_or_else(|e| error_response(&e))
        }
        Route::Unknown => not_found_path(),
        _ => method_not_allowed(&method),
    }
}

fn filter_from(def: &ResourceDef, ns: Option<String>, query: &Query) -> Result<Filter, ApiError> {
    let labels = LabelSelector::parse(query.get("labelSelector").unwrap_or(""))
        .map_err(|e| ApiError::bad_request(format!("unable to parse requirement: {e}")))?;
    let supported = |label: &str| {
        matches!(label, "metadata.name" | "metadata.namespace")
            || def.fields.iter().any(|(l, _)| *l == label)
    };
    let fields = FieldSelector::parse(query.get("fieldSelector").unwrap_or(""), &supported)
        .map_err(ApiError::bad_request)?;
    Ok(Filter {
        namespace: ns,
        labels,
        fields,
    })
}

fn list_collection(
    shared: &Shared,
    res: usize,
    ns: Option<String>,
    query: &Query,
    meta_only: bool,
) -> Result<Response<Body>, ApiError> {
    let def = &RESOURCES[res];
    let filter = filter_from(def, ns, query)?;
    let limit = match query.get("limit") {
        None | Some("") => None,
        Some(l) => Some(
            l.parse::<i64>()
                .map_err(|_| ApiError::bad_request(format!("invalid limit: {l:?}")))?
                .max(0) as usize,
        ),
    };
    let page = shared.state().list(
        res,
        &filter,
        limit,
        query.get("continue"),
        query.get("resourceVersion"),
        query.get("resourceVersionMatch"),
    )?;
    // Rendered outside the lock.
    let (kind, api_version) = if meta_only {
        (
            "PartialObjectMetadataList".to_owned(),
            "meta.k8s.io/v1".to_owned(),
        )
    } else {
        (format!("{}List", def.kind), def.api_version())
    };
    let mut metadata = json!({"resourceVersion": page.rv.to_string()});
    if let Some(c) = &page.continue_token {
        metadata["continue"] = json!(c);
    }
    if let Some(r) = page.remaining {
        metadata["remainingItemCount"] = json!(r);
    }
    let mut body =
        String::with_capacity(page.items.iter().map(|o| o.json.len() + 1).sum::<usize>() + 256);
    body.push_str(&format!(
        "{{\"kind\":{},\"apiVersion\":{},\"metadata\":{},\"items\":[",
        json!(kind),
        json!(api_version),
        metadata
    ));
    for (i, item) in page.items.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        if meta_only {
            body.push_str(&item.metadata_json());
        } else {
            body.push_str(&item.json);
        }
    }
    body.push_str("]}");
    Ok(bytes_response(200, Bytes::from(body)))
}

/// Removes the watch from the registry when its stream is dropped.
struct WatchGuard {
    shared: Arc<Shared>,
    id: u64,
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        self.shared.state().remove_watch(self.id);
    }
}

struct WatchStream {
    pending: VecDeque<Bytes>,
    rx: Option<mpsc::UnboundedReceiver<Bytes>>,
    deadline: Instant,
    bookmark_every: Option<Duration>,
    next_bookmark: Option<Instant>,
    bookmarks: bool,
    res: usize,
    meta_only: bool,
    finished: bool,
    guard: WatchGuard,
}

impl WatchStream {
    /// Moves everything already sent to this watch into `pending`, then a BOOKMARK at the
    /// current version if bookmarks are allowed. Holding the lock, no event at or below that
    /// version can still be on its way.
    fn flush(&mut self, with_bookmark: bool) {
        let state = self.guard.shared.state();
        if let Some(rx) = self.rx.as_mut() {
            while let Ok(b) = rx.try_recv() {
                self.pending.push_back(b);
            }
        }
        if with_bookmark && self.bookmarks {
            self.pending.push_back(bookmark_line(
                &RESOURCES[self.res],
                self.meta_only,
                state.rv,
                false,
            ));
        }
    }

    async fn next(mut self) -> Option<(Bytes, WatchStream)> {
        loop {
            if let Some(b) = self.pending.pop_front() {
                return Some((b, self));
            }
            if self.finished {
                return None;
            }
            let far = self.deadline + Duration::from_secs(86_400);
            let next_bookmark = self.next_bookmark.unwrap_or(far);
            let rx = self.rx.as_mut()?;
            tokio::select! {
                biased;
                msg = rx.recv() => match msg {
                    Some(b) => return Some((b, self)),
                    None => return None,
                },
                _ = tokio::time::sleep_until(self.deadline) => {
                    // Timed out: a last bookmark (as the watch cache sends before closing), then end.
                    self.flush(true);
                    self.finished = true;
                }
                _ = tokio::time::sleep_until(next_bookmark), if self.next_bookmark.is_some() => {
                    self.flush(true);
                    self.next_bookmark = self.bookmark_every.map(|d| Instant::now() + d);
                }
            }
        }
    }
}

fn watch_collection(
    shared: &Arc<Shared>,
    res: usize,
    ns: Option<String>,
    query: &Query,
    meta_only: bool,
) -> Response<Body> {
    let def = &RESOURCES[res];
    let filter = match filter_from(def, ns, query) {
        Ok(f) => f,
        Err(e) => return error_response(&e),
    };
    let timeout = match query.get("timeoutSeconds").map(str::parse::<u64>) {
        None | Some(Ok(0)) => Duration::from_secs(1800),
        Some(Ok(s)) => Duration::from_secs(s),
        Some(Err(_)) => return error_response(&ApiError::bad_request("invalid timeoutSeconds")),
    };
    let bookmarks = query.flag("allowWatchBookmarks");
    let send_initial = query.flag("sendInitialEvents");
    let started = shared.state().start_watch(
        res,
        filter,
        query.get("resourceVersion"),
        bookmarks,
        meta_only,
        send_initial,
    );
    let (id, first, rx) = match started {
        Ok(s) => s,
        Err(e) => return error_response(&e),
    };
    let bookmark_every = *shared
        .bookmark_interval
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let now = Instant::now();
    let finished = rx.is_none();
    let stream = WatchStream {
        pending: first.into(),
        rx,
        deadline: now + timeout,
        bookmark_every,
        next_bookmark: bookmark_every.filter(|_| bookmarks).map(|d| now + d),
        bookmarks,
        res,
        meta_only,
        finished,
        guard: WatchGuard {
            shared: shared.clone(),
            id,
        },
    };
    let body = futures::stream::unfold(stream, WatchStream::next)
        .map(|b| Ok::<_, Infallible>(Frame::data(b)));
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .header("Cache-Control", "no-cache, private")
        .body(BodyExt::boxed(StreamBody::new(body)))
        .expect("valid response")
}

fn object_response(code: u16, obj: &StoredObject, meta_only: bool) -> Response<Body> {
    if meta_only {
        bytes_response(code, Bytes::from(obj.metadata_json()))
    } else {
        bytes_response(code, Bytes::from(obj.json.clone()))
    }
}

fn get(
    shared: &Shared,
    res: usize,
    key: &Key,
    meta_only: bool,
) -> Result<Response<Body>, ApiError> {
    let def = &RESOURCES[res];
    let obj = shared.state().get(res, key);
    match obj {
        Some(o) => Ok(object_response(200, &o, meta_only)),
        None => Err(ApiError::new(
            404,
            "NotFound",
            format!("{} \"{}\" not found", def.qualified(), key.1),
        )
        .with_details(details(def, &key.1, None))),
    }
}

async fn read_json(req: Request<Incoming>) -> Result<(Value, String), ApiError> {
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .to_owned();
    let body = req
        .into_body()
        .collect()
        .await
        .map_err(|e| ApiError::bad_request(format!("reading the request body: {e}")))?
        .to_bytes();
    if body.is_empty() {
        return Ok((Value::Null, content_type));
    }
    let v = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("the request body is not valid JSON: {e}")))?;
    Ok((v, content_type))
}

fn field_manager(query: &Query, user_agent: Option<&str>) -> String {
    query
        .get("fieldManager")
        .map(str::to_owned)
        .or_else(|| user_agent.map(|u| u.split('/').next().unwrap_or(u).to_owned()))
        .unwrap_or_else(|| "unknown".to_owned())
}

fn user_agent(req: &Request<Incoming>) -> Option<String> {
    req.headers()
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

async fn create(
    shared: &Shared,
    res: usize,
    ns: &str,
    query: &Query,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let manager = field_manager(query, user_agent(&req).as_deref());
    let dry_run = query.get("dryRun").is_some();
    let (body, _) = read_json(req).await?;
    let ns = (!ns.is_empty()).then_some(ns);
    if dry_run {
        return Err(ApiError::bad_request(
            "dryRun is not supported by the test API server",
        ));
    }
    let obj = shared
        .state()
        .write(res, ns, None, body, WriteMode::Create, &manager)?;
    Ok(object_response(201, &obj, false))
}

/// A PUT or PATCH of one object, or of its `status`: what and by whom, and the body.
struct Edit<'a> {
    res: usize,
    key: &'a Key,
    /// The `/status` subresource.
    status: bool,
    manager: String,
    body: Value,
    content_type: String,
}

impl<'a> Edit<'a> {
    async fn read(
        res: usize,
        key: &'a Key,
        status: bool,
        query: &Query,
        req: Request<Incoming>,
    ) -> Result<Edit<'a>, ApiError> {
        let manager = field_manager(query, user_agent(&req).as_deref());
        let (body, content_type) = read_json(req).await?;
        Ok(Edit {
            res,
            key,
            status,
            manager,
            body,
            content_type,
        })
    }

    /// The object's namespace (None for cluster-scoped kinds).
    fn namespace(&self) -> Option<&'a str> {
        (!self.key.0.is_empty()).then_some(self.key.0.as_str())
    }

    /// How an existing object is written.
    fn mode(&self) -> WriteMode {
        if self.status {
            WriteMode::UpdateStatus
        } else {
            WriteMode::Update
        }
    }
}

fn update(shared: &Shared, edit: Edit<'_>) -> Result<Response<Body>, ApiError> {
    let (ns, mode) = (edit.namespace(), edit.mode());
    let obj = shared.state().write(
        edit.res,
        ns,
        Some(&edit.key.1),
        edit.body,
        mode,
        &edit.manager,
    )?;
    Ok(object_response(200, &obj, false))
}

/// RFC 7386 JSON merge patch.
fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = json!({});
            }
            let t = target.as_object_mut().expect("object");
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        other => *target = other.clone(),
    }
}

fn patch(shared: &Shared, edit: Edit<'_>) -> Result<Response<Body>, ApiError> {
    let (res, key, status, manager) = (edit.res, edit.key, edit.status, &edit.manager);
    let (body, content_type) = (&edit.body, &edit.content_type);
    let apply = content_type.starts_with("application/apply-patch");
    if !(apply
        || content_type.starts_with("application/merge-patch+json")
        || content_type.starts_with("application/strategic-merge-patch+json"))
    {
        return Err(ApiError::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: application/merge-patch+json, application/strategic-merge-patch+json, application/apply-patch+yaml (got {content_type})"
            ),
        ));
    }
    let ns = edit.namespace();
    let mut state = shared.state();
    let existing = state.get(res, key);
    let (obj, code) = match existing {
        Some(old) => {
            let mut v = old.value();
            merge_patch(&mut v, body);
            (
                state.write(res, ns, Some(&key.1), v, edit.mode(), manager)?,
                200,
            )
        }
        None if apply && !status => (
            state.write(
                res,
                ns,
                Some(&key.1),
                body.clone(),
                WriteMode::Create,
                manager,
            )?,
            201,
        ),
        None => {
            let def = &RESOURCES[res];
            return Err(ApiError::new(
                404,
                "NotFound",
                format!("{} \"{}\" not found", def.qualified(), key.1),
            )
            .with_details(details(def, &key.1, None)));
        }
    };
    Ok(object_response(code, &obj, false))
}

async fn delete(
    shared: &Shared,
    res: usize,
    key: &Key,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let (options, _) = read_json(req).await?;
    let pre = &options["preconditions"];
    let obj = shared.state().delete(
        res,
        key,
        pre["uid"].as_str(),
        pre["resourceVersion"].as_str(),
    )?;
    let def = &RESOURCES[res];
    Ok(json_response(
        200,
        &json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Success",
            "details": details(def, &key.1, Some(&obj.uid)),
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_decoding() {
        assert_eq!(
            decode_query("&fieldSelector=type%3Dkubernetes.io%2Fdockerconfigjson&limit=500&watch"),
            vec![
                (
                    "fieldSelector".to_owned(),
                    "type=kubernetes.io/dockerconfigjson".to_owned()
                ),
                ("limit".to_owned(), "500".to_owned()),
                ("watch".to_owned(), String::new()),
            ]
        );
        assert_eq!(
            decode_query("a=b+c%2"),
            vec![("a".to_owned(), "b c%2".to_owned())]
        );
    }

    #[test]
    fn routes() {
        assert!(matches!(
            route("/api/v1/pods"),
            Route::Collection { ns: None, .. }
        ));
        assert!(matches!(
            route("/api/v1/namespaces"),
            Route::Collection { ns: None, .. }
        ));
        assert!(matches!(
            route("/api/v1/namespaces/x"),
            Route::Object {
                ns: None,
                status: false,
                ..
            }
        ));
        assert!(matches!(
            route("/api/v1/namespaces/x/status"),
            Route::Object {
                ns: None,
                status: true,
                ..
            }
        ));
        assert!(matches!(
            route("/api/v1/namespaces/x/pods"),
            Route::Collection { ns: Some(_), .. }
        ));
        assert!(matches!(
            route("/apis/apps/v1/namespaces/x/deployments/d/status"),
            Route::Object { status: true, .. }
        ));
        assert!(matches!(
            route("/apis/apps/v1/deployments/d"),
            Route::Unknown
        ));
        assert!(matches!(route("/apis/apps/v1"), Route::ResourceList(..)));
        assert!(matches!(route("/apis/nope/v1/things"), Route::Unknown));
        assert!(matches!(
            route("/api/v1/namespaces/x/secrets/s/status"),
            Route::Unknown
        ));
    }
}
