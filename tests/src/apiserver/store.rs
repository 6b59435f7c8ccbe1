//! The object store: current objects, a global resourceVersion, the change history that
//! watches replay and consistent paginated lists read, and the open watches.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::ops::Bound;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use serde_json::{Map, Value, json};
use tokio::sync::mpsc;

use super::resources::{RESOURCES, ResourceDef};
use super::selector::{FieldSelector, LabelSelector};

/// `(namespace, name)`; namespace is empty for cluster-scoped objects. Ordered like etcd keys.
pub(crate) type Key = (String, String);

/// An error answered as a `Status` body.
#[derive(Debug, Clone)]
pub(crate) struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    pub details: Option<Value>,
    /// `metadata.continue` of the Status (410 on an expired continue token).
    pub continue_token: Option<String>,
}

impl ApiError {
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            reason,
            message: message.into(),
            details: None,
            continue_token: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(400, "BadRequest", message)
    }

    pub fn with_details(mut self, details: Value) -> ApiError {
        self.details = Some(details);
        self
    }

    fn not_found(res: &ResourceDef, name: &str) -> ApiError {
        ApiError::new(
            404,
            "NotFound",
            format!("{} \"{name}\" not found", res.qualified()),
        )
        .with_details(details(res, name, None))
    }

    fn expired(message: String) -> ApiError {
        ApiError::new(410, "Expired", message)
    }

    fn too_large(requested: u64, current: u64) -> ApiError {
        ApiError::new(
            504,
            "Timeout",
            format!("Timeout: Too large resource version: {requested}, current: {current}"),
        )
        .with_details(json!({
            "causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}],
            "retryAfterSeconds": 1,
        }))
    }

    /// The `Status` object, as the API server serialises it.
    pub fn status(&self) -> Value {
        let mut metadata = Map::new();
        if let Some(c) = &self.continue_token {
            metadata.insert("continue".into(), Value::String(c.clone()));
        }
        let mut s = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": metadata,
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(d) = &self.details {
            s["details"] = d.clone();
        }
        s
    }
}

/// `details` of a Status about one object.
pub(crate) fn details(res: &ResourceDef, name: &str, uid: Option<&str>) -> Value {
    let mut d = json!({"name": name, "kind": res.plural});
    if !res.group.is_empty() {
        d["group"] = json!(res.group);
    }
    if let Some(uid) = uid {
        d["uid"] = json!(uid);
    }
    d
}

/// One object as stored: its JSON text plus what selectors need.
#[derive(Debug)]
pub(crate) struct StoredObject {
    pub json: String,
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub rv: u64,
    pub labels: BTreeMap<String, String>,
    /// Values of the resource's extra field-selector labels.
    pub fields: Vec<(&'static str, String)>,
}

impl StoredObject {
    fn new(res: &ResourceDef, value: &Value, rv: u64) -> StoredObject {
        let meta = &value["metadata"];
        let s = |v: &Value| v.as_str().unwrap_or_default().to_owned();
        let labels = meta["labels"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                    .collect()
            })
            .unwrap_or_default();
        let fields = res
            .fields
            .iter()
            .map(|(label, pointer)| {
                let v = match value.pointer(pointer) {
                    Some(Value::String(s)) => s.clone(),
                    Some(Value::Bool(b)) => b.to_string(),
                    Some(Value::Number(n)) => n.to_string(),
                    _ if label.ends_with("hostNetwork") || label.ends_with("unschedulable") => {
                        "false".to_owned()
                    }
                    _ => String::new(),
                };
                (*label, v)
            })
            .collect();
        StoredObject {
            json: value.to_string(),
            namespace: s(&meta["namespace"]),
            name: s(&meta["name"]),
            uid: s(&meta["uid"]),
            rv,
            labels,
            fields,
        }
    }

    pub fn value(&self) -> Value {
        serde_json::from_str(&self.json).expect("stored objects are valid JSON")
    }

    /// Value of a field-selector label.
    pub fn field(&self, label: &str) -> String {
        match label {
            "metadata.name" => self.name.clone(),
            "metadata.namespace" => self.namespace.clone(),
            _ => self
                .fields
                .iter()
                .find(|(l, _)| *l == label)
                .map(|(_, v)| v.clone())
                .unwrap_or_default(),
        }
    }

    /// This object with `metadata.resourceVersion` set to `rv`.
    fn stamped(&self, res: &ResourceDef, rv: u64) -> StoredObject {
        let mut v = self.value();
        v["metadata"]["resourceVersion"] = json!(rv.to_string());
        StoredObject::new(res, &v, rv)
    }

    /// `PartialObjectMetadata` JSON of this object.
    pub fn metadata_json(&self) -> String {
        let v = self.value();
        json!({
            "kind": "PartialObjectMetadata",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": v["metadata"],
        })
        .to_string()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Change {
    Added,
    Modified,
    Deleted,
}

/// One write in the history.
#[derive(Debug)]
pub(crate) struct LogEntry {
    pub rv: u64,
    pub resource: usize,
    pub key: Key,
    pub change: Change,
    /// The new state; for a deletion the last state stamped with the deletion's version.
    pub obj: Arc<StoredObject>,
    /// The state before this write.
    pub prev: Option<Arc<StoredObject>>,
}

/// What a list or watch selects.
#[derive(Debug, Clone, Default)]
pub(crate) struct Filter {
    pub namespace: Option<String>,
    pub labels: LabelSelector,
    pub fields: FieldSelector,
}

impl Filter {
    pub fn matches(&self, obj: &StoredObject) -> bool {
        self.namespace
            .as_ref()
            .is_none_or(|ns| *ns == obj.namespace)
            && self.labels.matches(&obj.labels)
            && self.fields.matches(&|l| obj.field(l))
    }

    fn is_unfiltered(&self) -> bool {
        self.labels.is_empty() && self.fields.is_empty()
    }
}

/// An open watch: where its events go.
pub(crate) struct Watch {
    pub id: u64,
    pub resource: usize,
    pub filter: Filter,
    pub bookmarks: bool,
    pub meta_only: bool,
    pub tx: mpsc::UnboundedSender<Bytes>,
}

/// A watch event line (`{"type":...,"object":...}\n`).
pub(crate) fn event_line(kind: &str, object_json: &str) -> Bytes {
    let mut s = String::with_capacity(object_json.len() + 32);
    s.push_str("{\"type\":\"");
    s.push_str(kind);
    s.push_str("\",\"object\":");
    s.push_str(object_json);
    s.push_str("}\n");
    Bytes::from(s)
}

/// A BOOKMARK event line carrying only `metadata.resourceVersion` (and the end-of-initial-events
/// annotation when `initial_end`).
pub(crate) fn bookmark_line(
    res: &ResourceDef,
    meta_only: bool,
    rv: u64,
    initial_end: bool,
) -> Bytes {
    let (kind, api_version) = if meta_only {
        (
            "PartialObjectMetadata".to_owned(),
            "meta.k8s.io/v1".to_owned(),
        )
    } else {
        (res.kind.to_owned(), res.api_version())
    };
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    if initial_end {
        metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    let obj = json!({"kind": kind, "apiVersion": api_version, "metadata": metadata});
    event_line("BOOKMARK", &obj.to_string())
}

fn change_name(c: Change) -> &'static str {
    match c {
        Change::Added => "ADDED",
        Change::Modified => "MODIFIED",
        Change::Deleted => "DELETED",
    }
}

/// A started watch: its id, the events to send first, and the receiver of the live ones.
pub(crate) type WatchStart = (u64, Vec<Bytes>, Option<mpsc::UnboundedReceiver<Bytes>>);

/// A page of a list.
pub(crate) struct ListPage {
    pub items: Vec<Arc<StoredObject>>,
    pub rv: u64,
    pub continue_token: Option<String>,
    pub remaining: Option<u64>,
}

/// How an object arrives at `write`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WriteMode {
    /// POST: must not exist; server-managed fields and status reset.
    Create,
    /// PUT/PATCH of the object: must exist; status kept for kinds with a status subresource.
    Update,
    /// PUT/PATCH of `/status`: must exist; only status taken.
    UpdateStatus,
    /// Test hook: create or replace, stored as given (status included).
    Hook,
}

/// Everything the server knows.
pub(crate) struct State {
    pub rv: u64,
    /// Versions below this have been compacted away: watches from them and continue tokens
    /// at them answer 410 Expired. Every change after `compacted` is in `log`.
    pub compacted: u64,
    pub objects: Vec<BTreeMap<Key, Arc<StoredObject>>>,
    pub log: VecDeque<Arc<LogEntry>>,
    pub history_limit: Option<usize>,
    pub watches: Vec<Watch>,
    next_watch_id: u64,
    pub forbidden: HashSet<String>,
    uid_seed: u64,
    uid_counter: u64,
}

impl State {
    pub fn new() -> State {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or_default();
        State {
            // Like a fresh cluster: versions do not start at zero.
            rv: 1000,
            compacted: 0,
            objects: RESOURCES.iter().map(|_| BTreeMap::new()).collect(),
            log: VecDeque::new(),
            history_limit: None,
            watches: Vec::new(),
            next_watch_id: 0,
            forbidden: HashSet::new(),
            uid_seed: nanos ^ u64::from(std::process::id()).rotate_left(32),
            uid_counter: 0,
        }
    }

    fn new_uid(&mut self) -> String {
        self.uid_counter += 1;
        let a = self.uid_seed;
        let c = self.uid_counter;
        format!(
            "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
            (a >> 32) as u32,
            (a >> 16) as u16,
            (a & 0xfff) as u16,
            ((c >> 48) & 0xfff) as u16,
            c & 0xffff_ffff_ffff
        )
    }

    /// Drops the history: every version issued so far expires. The compaction itself is a
    /// write (as the API server's compaction of etcd is), so a list made afterwards returns a
    /// version that can be watched from.
    pub fn compact(&mut self) {
        self.rv += 1;
        self.compacted = self.rv;
        self.log.clear();
    }

    fn trim_history(&mut self) {
        if let Some(limit) = self.history_limit {
            while self.log.len() > limit {
                if let Some(e) = self.log.pop_front() {
                    self.compacted = self.compacted.max(e.rv);
                }
            }
        }
    }

    pub fn get(&self, res: usize, key: &Key) -> Option<Arc<StoredObject>> {
        self.objects[res].get(key).cloned()
    }

    fn namespace_exists(&self, ns: &str) -> bool {
        let nsi = RESOURCES
            .iter()
            .position(|r| r.plural == "namespaces")
            .expect("namespaces are served");
        self.objects[nsi].contains_key(&(String::new(), ns.to_owned()))
    }

    /// Records a write and tells the watches. `new` None deletes.
    fn commit(&mut self, res: usize, key: Key, new: Option<Value>) -> Arc<LogEntry> {
        let def = &RESOURCES[res];
        self.rv += 1;
        let rv = self.rv;
        let prev = self.objects[res].get(&key).cloned();
        let entry = match new {
            Some(mut v) => {
                v["metadata"]["resourceVersion"] = json!(rv.to_string());
                let obj = Arc::new(StoredObject::new(def, &v, rv));
                self.objects[res].insert(key.clone(), obj.clone());
                LogEntry {
                    rv,
                    resource: res,
                    key,
                    change: if prev.is_some() {
                        Change::Modified
                    } else {
                        Change::Added
                    },
                    obj,
                    prev,
                }
            }
            None => {
                self.objects[res].remove(&key);
                let last = prev.clone().expect("deleting an existing object");
                LogEntry {
                    rv,
                    resource: res,
                    key,
                    change: Change::Deleted,
                    obj: Arc::new(last.stamped(def, rv)),
                    prev,
                }
            }
        };
        let entry = Arc::new(entry);
        self.log.push_back(entry.clone());
        self.trim_history();
        self.dispatch(&entry);
        entry
    }

    /// What a watch with `filter` sees of `entry`, as the watch cache decides it: an object
    /// entering the selection is ADDED, one leaving it is DELETED.
    fn event_for(
        def: &ResourceDef,
        filter: &Filter,
        entry: &LogEntry,
    ) -> Option<(Change, Arc<StoredObject>)> {
        let cur = entry.change != Change::Deleted && filter.matches(&entry.obj);
        let old = entry.prev.as_ref().is_some_and(|p| filter.matches(p));
        match (entry.change, old, cur) {
            (Change::Deleted, true, _) => Some((Change::Deleted, entry.obj.clone())),
            (Change::Deleted, false, _) => None,
            (_, true, true) => Some((Change::Modified, entry.obj.clone())),
            (_, false, true) => Some((Change::Added, entry.obj.clone())),
            (_, true, false) => {
                let prev = entry.prev.as_ref().expect("old matched");
                Some((Change::Deleted, Arc::new(prev.stamped(def, entry.rv))))
            }
            (_, false, false) => None,
        }
    }

    fn render(change: Change, obj: &StoredObject, meta_only: bool) -> Bytes {
        if meta_only {
            event_line(change_name(change), &obj.metadata_json())
        } else {
            event_line(change_name(change), &obj.json)
        }
    }

    fn dispatch(&mut self, entry: &LogEntry) {
        let def = &RESOURCES[entry.resource];
        let mut cache: HashMap<(Change, bool, *const StoredObject), Bytes> = HashMap::new();
        self.watches.retain(|w| {
            if w.resource != entry.resource {
                return !w.tx.is_closed();
            }
            let Some((change, obj)) = Self::event_for(def, &w.filter, entry) else {
                return !w.tx.is_closed();
            };
            let line = cache
                .entry((change, w.meta_only, Arc::as_ptr(&obj)))
                .or_insert_with(|| Self::render(change, &obj, w.meta_only))
                .clone();
            w.tx.send(line).is_ok()
        });
    }

    /// Sends a BOOKMARK at the current version to every watch that allows them.
    pub fn send_bookmarks(&mut self) -> usize {
        let rv = self.rv;
        let mut sent = 0;
        self.watches.retain(|w| {
            if !w.bookmarks {
                return !w.tx.is_closed();
            }
            let ok =
                w.tx.send(bookmark_line(
                    &RESOURCES[w.resource],
                    w.meta_only,
                    rv,
                    false,
                ))
                .is_ok();
            sent += usize::from(ok);
            ok
        });
        sent
    }

    /// Starts a watch. Returns the events to send first, and the receiver of the live ones
    /// (None when the stream ends after the first events, as on 410 Expired).
    #[allow(clippy::too_many_arguments)]
    pub fn start_watch(
        &mut self,
        res: usize,
        filter: Filter,
        resource_version: Option<&str>,
        bookmarks: bool,
        meta_only: bool,
        send_initial_events: bool,
    ) -> Result<WatchStart, ApiError> {
        let def = &RESOURCES[res];
        let mut first = Vec::new();
        let from = match resource_version.unwrap_or("") {
            "" | "0" => None,
            v => Some(v.parse::<u64>().map_err(|_| invalid_rv(v))?),
        };
        if send_initial_events {
            if !bookmarks {
                return Err(ApiError::new(
                    422,
                    "Invalid",
                    "sendInitialEvents requires allowWatchBookmarks=true",
                ));
            }
            if let Some(n) = from
                && n > self.rv
            {
                return Err(ApiError::too_large(n, self.rv));
            }
        }
        match from {
            Some(n) if !send_initial_events => {
                if n < self.compacted {
                    // The real server answers 200 and streams one ERROR event, then ends.
                    let err = ApiError::expired(format!(
                        "too old resource version: {n} ({})",
                        self.compacted
                    ));
                    first.push(event_line("ERROR", &err.status().to_string()));
                    self.next_watch_id += 1;
                    return Ok((self.next_watch_id, first, None));
                }
                if n > self.rv {
                    return Err(ApiError::too_large(n, self.rv));
                }
                let start = self.log.partition_point(|e| e.rv <= n);
                for entry in self.log.range(start..) {
                    if entry.resource != res {
                        continue;
                    }
                    if let Some((change, obj)) = Self::event_for(def, &filter, entry) {
                        first.push(Self::render(change, &obj, meta_only));
                    }
                }
            }
            _ => {
                // Unset or "0" (or sendInitialEvents): the current state as ADDED events.
                for obj in self.objects[res].values() {
                    if filter.matches(obj) {
                        first.push(Self::render(Change::Added, obj, meta_only));
                    }
                }
                if send_initial_events {
                    first.push(bookmark_line(def, meta_only, self.rv, true));
                }
            }
        }
        let (tx, rx) = mpsc::unbounded_channel();
        self.next_watch_id += 1;
        let id = self.next_watch_id;
        self.watches.push(Watch {
            id,
            resource: res,
            filter,
            bookmarks,
            meta_only,
            tx,
        });
        Ok((id, first, Some(rx)))
    }

    pub fn remove_watch(&mut self, id: u64) {
        self.watches.retain(|w| w.id != id);
    }

    /// A page of a list, as the API server serves it.
    pub fn list(
        &self,
        res: usize,
        filter: &Filter,
        limit: Option<usize>,
        continue_token: Option<&str>,
        resource_version: Option<&str>,
        version_match: Option<&str>,
    ) -> Result<ListPage, ApiError> {
        let (snapshot_rv, start) =
            self.list_snapshot(continue_token, resource_version, version_match)?;
        let rebuilt;
        let view = match self.objects_at(res, snapshot_rv) {
            Some(snapshot) => {
                rebuilt = snapshot;
                &rebuilt
            }
            None => &self.objects[res],
        };
        let lower = match (&start, &filter.namespace) {
            (Some(s), _) => Bound::Excluded(s.clone()),
            (None, Some(ns)) => Bound::Included((ns.clone(), String::new())),
            (None, None) => Bound::Unbounded,
        };
        let mut matching = view
            .range((lower, Bound::Unbounded))
            .take_while(|(k, _)| filter.namespace.as_ref().is_none_or(|ns| k.0 == *ns))
            .map(|(_, o)| o)
            .filter(|o| filter.matches(o));
        let mut items = Vec::new();
        let mut continue_out = None;
        let mut remaining = None;
        match limit {
            Some(limit) if limit > 0 => {
                items.extend(matching.by_ref().take(limit));
                let rest = matching.count() as u64;
                if rest > 0 {
                    let last = items.last().expect("limit > 0 and more items");
                    continue_out = Some(encode_continue(
                        snapshot_rv,
                        &(last.namespace.clone(), last.name.clone()),
                    ));
                    if filter.is_unfiltered() {
                        remaining = Some(rest);
                    }
                }
            }
            _ => items.extend(matching),
        }
        Ok(ListPage {
            items: items.into_iter().cloned().collect(),
            rv: snapshot_rv,
            continue_token: continue_out,
            remaining,
        })
    }

    /// The resource version a list is served at and the key it starts after: from a
    /// continue token, or from `resourceVersion` and `resourceVersionMatch` as the API
    /// server reads them.
    fn list_snapshot(
        &self,
        continue_token: Option<&str>,
        resource_version: Option<&str>,
        version_match: Option<&str>,
    ) -> Result<(u64, Option<Key>), ApiError> {
        let rv_param = resource_version.filter(|v| !v.is_empty());
        if let Some(token) = continue_token.filter(|t| !t.is_empty()) {
            if rv_param.is_some() {
                return Err(ApiError::bad_request(
                    "specifying resource version is not allowed when using continue",
                ));
            }
            let (rv, start) = decode_continue(token)?;
            if rv != 0 && rv < self.compacted {
                let mut err = ApiError::expired(
                    "The continue token refers to a resource version that has been compacted: \
                     a consistent list can no longer be served from it. Start a new list \
                     without the continue parameter, or continue from the token in this \
                     response to list the remaining objects as of now (an inconsistent list)."
                        .to_owned(),
                );
                err.continue_token = Some(encode_continue(0, &start));
                return Err(err);
            }
            Ok((if rv == 0 { self.rv } else { rv }, Some(start)))
        } else {
            let snapshot = match (rv_param, version_match.filter(|m| !m.is_empty())) {
                (None, None) => self.rv,
                (None, Some(_)) => {
                    return Err(ApiError::bad_request(
                        "resourceVersionMatch is forbidden unless resourceVersion is provided",
                    ));
                }
                (Some("0"), Some("Exact")) => {
                    return Err(ApiError::bad_request(
                        "resourceVersionMatch \"Exact\" is forbidden for resourceVersion \"0\"",
                    ));
                }
                (Some("0"), None | Some("NotOlderThan")) => self.rv,
                (Some(v), m) => {
                    let n: u64 = v.parse().map_err(|_| invalid_rv(v))?;
                    if n > self.rv {
                        return Err(ApiError::too_large(n, self.rv));
                    }
                    match m {
                        Some("Exact") => {
                            if n < self.compacted {
                                return Err(ApiError::expired(format!(
                                    "too old resource version: {n} ({})",
                                    self.compacted
                                )));
                            }
                            n
                        }
                        None | Some("NotOlderThan") => self.rv,
                        Some(other) => {
                            return Err(ApiError::bad_request(format!(
                                "unsupported resourceVersionMatch: {other:?}"
                            )));
                        }
                    }
                }
            };
            Ok((snapshot, None))
        }
    }

    /// The objects of `res` as they were at `snapshot_rv`, later changes undone; None
    /// when they are as they are now.
    fn objects_at(&self, res: usize, snapshot_rv: u64) -> Option<BTreeMap<Key, Arc<StoredObject>>> {
        if snapshot_rv >= self.rv {
            return None;
        }
        let from = self.log.partition_point(|e| e.rv <= snapshot_rv);
        let mut overrides: HashMap<&Key, Option<Arc<StoredObject>>> = HashMap::new();
        for e in self.log.range(from..).filter(|e| e.resource == res) {
            overrides.entry(&e.key).or_insert_with(|| e.prev.clone());
        }
        if overrides.is_empty() {
            return None;
        }
        let mut snap = self.objects[res].clone();
        for (k, v) in overrides {
            match v {
                Some(o) => snap.insert(k.clone(), o),
                None => snap.remove(k),
            };
        }
        Some(snap)
    }

    /// Creates, replaces or deletes-and-stores one object. `ns` and `name` come from the URL
    /// (None for a create, which takes the body's name).
    pub fn write(
        &mut self,
        res: usize,
        ns: Option<&str>,
        name: Option<&str>,
        mut body: Value,
        mode: WriteMode,
        field_manager: &str,
    ) -> Result<Arc<StoredObject>, ApiError> {
        let def = &RESOURCES[res];
        check_type_fields(def, &mut body)?;
        let namespace = object_namespace(def, ns, &mut body)?;
        let body_name = self.object_name(def, name, &body)?;
        body["metadata"]["name"] = json!(body_name);
        let key: Key = (namespace.clone(), body_name.clone());
        let existing = self.objects[res].get(&key).cloned();

        if def.namespaced && mode != WriteMode::Hook && !self.namespace_exists(&namespace) {
            return Err(ApiError::new(
                404,
                "NotFound",
                format!("namespaces \"{namespace}\" not found"),
            )
            .with_details(json!({"name": namespace, "kind": "namespaces"})));
        }

        let now = now_rfc3339();
        let body = match (mode, existing) {
            (WriteMode::Create, Some(_)) => {
                return Err(ApiError::new(
                    409,
                    "AlreadyExists",
                    format!("{} \"{body_name}\" already exists", def.qualified()),
                )
                .with_details(details(def, &body_name, None)));
            }
            (WriteMode::Update | WriteMode::UpdateStatus, None) => {
                return Err(ApiError::not_found(def, &body_name));
            }
            (WriteMode::Create, None) | (WriteMode::Hook, None) => {
                self.new_object(def, mode, body, field_manager, &now)
            }
            (_, Some(old)) => replacement(def, mode, body, &old, &body_name, field_manager, &now)?,
        };
        let mut body = body;
        if def.plural == "secrets" {
            fold_string_data(&mut body);
        }
        let entry = self.commit(res, key, Some(body));
        Ok(entry.obj.clone())
    }

    /// Deletes one object (namespaces: their contents first). `preconditions` are the
    /// DeleteOptions' `uid` and `resourceVersion`.
    pub fn delete(
        &mut self,
        res: usize,
        key: &Key,
        precondition_uid: Option<&str>,
        precondition_rv: Option<&str>,
    ) -> Result<Arc<StoredObject>, ApiError> {
        let def = &RESOURCES[res];
        let Some(old) = self.objects[res].get(key).cloned() else {
            return Err(ApiError::not_found(def, &key.1));
        };
        if let Some(uid) = precondition_uid.filter(|u| !u.is_empty() && *u != old.uid) {
            return Err(ApiError::new(
                409,
                "Conflict",
                format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                    old.uid
                ),
            ));
        }
        if let Some(rv) = precondition_rv.filter(|r| !r.is_empty() && *r != old.rv.to_string()) {
            return Err(ApiError::new(
                409,
                "Conflict",
                format!(
                    "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion \
                     in object meta: {}",
                    old.rv
                ),
            ));
        }
        if def.plural == "namespaces" {
            for (i, r) in RESOURCES.iter().enumerate() {
                if !r.namespaced {
                    continue;
                }
                let keys: Vec<Key> = self.objects[i]
                    .range((key.1.clone(), String::new())..)
                    .take_while(|(k, _)| k.0 == key.1)
                    .map(|(k, _)| k.clone())
                    .collect();
                for k in keys {
                    self.commit(i, k, None);
                }
            }
        }
        let entry = self.commit(res, key.clone(), None);
        Ok(entry.obj.clone())
    }

    /// The object's name: the URL's, or the body's (which must agree), or generated
    /// from `generateName`; a valid DNS subdomain.
    fn object_name(
        &mut self,
        def: &ResourceDef,
        name: Option<&str>,
        body: &Value,
    ) -> Result<String, ApiError> {
        let mut body_name = body["metadata"]["name"].as_str().unwrap_or("").to_owned();
        if let Some(n) = name {
            if body_name.is_empty() {
                body_name = n.to_owned();
            } else if body_name != n {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({body_name}) does not match the name on the URL ({n})"
                )));
            }
        }
        if body_name.is_empty()
            && let Some(prefix) = body["metadata"]["generateName"].as_str()
        {
            body_name = format!("{prefix}{}", self.generated_suffix());
        }
        if let Err(why) = validate_name(&body_name) {
            let qualified_kind = if def.group.is_empty() {
                def.kind.to_owned()
            } else {
                format!("{}.{}", def.kind, def.group)
            };
            return Err(ApiError::new(
                422,
                "Invalid",
                format!("{qualified_kind} \"{body_name}\" is invalid: metadata.name: {why}"),
            )
            .with_details(details(def, &body_name, None)));
        }
        Ok(body_name)
    }

    /// A new object's server-set metadata (uid, creation time, generation; a hook
    /// keeps what it set itself).
    fn new_object(
        &mut self,
        def: &ResourceDef,
        mode: WriteMode,
        mut body: Value,
        field_manager: &str,
        now: &str,
    ) -> Value {
        let meta = body["metadata"].as_object_mut().expect("object");
        meta.remove("resourceVersion");
        meta.remove("selfLink");
        if mode == WriteMode::Create || !meta.contains_key("uid") {
            meta.insert("uid".into(), json!(self.new_uid()));
        }
        if mode == WriteMode::Create || !meta.contains_key("creationTimestamp") {
            meta.insert("creationTimestamp".into(), json!(now));
        }
        if mode == WriteMode::Create {
            meta.remove("deletionTimestamp");
        }
        if def.generation {
            meta.insert("generation".into(), json!(1));
        }
        if mode == WriteMode::Create {
            reset_status_on_create(def, &mut body);
            add_managed_fields(&mut body, field_manager, "Update", now);
        }
        body
    }

    fn generated_suffix(&mut self) -> String {
        const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
        self.uid_counter += 1;
        let mut n = self
            .uid_seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(self.uid_counter.wrapping_mul(1442695040888963407));
        (0..5)
            .map(|_| {
                let c = ALPHABET[(n % ALPHABET.len() as u64) as usize] as char;
                n /= ALPHABET.len() as u64;
                c
            })
            .collect()
    }
}

/// `apiVersion` and `kind`: filled in when absent, else they must be the resource's.
fn check_type_fields(def: &ResourceDef, body: &mut Value) -> Result<(), ApiError> {
    if !body.is_object() {
        return Err(ApiError::bad_request(
            "the body of the request must be a JSON object",
        ));
    }
    for (field, what, want) in [
        ("apiVersion", "API version", def.api_version()),
        ("kind", "kind", def.kind.to_owned()),
    ] {
        match &body[field] {
            Value::Null => body[field] = json!(want),
            Value::String(s) if *s == want => {}
            other => {
                return Err(ApiError::bad_request(format!(
                    "the {what} in the data ({}) does not match the expected {what} ({want})",
                    other
                        .as_str()
                        .map_or_else(|| other.to_string(), str::to_owned)
                )));
            }
        }
    }
    if !body["metadata"].is_object() {
        body["metadata"] = json!({});
    }
    Ok(())
}

/// The object's namespace: the URL's, which the body must agree with (none for a
/// cluster-scoped resource).
fn object_namespace(
    def: &ResourceDef,
    ns: Option<&str>,
    body: &mut Value,
) -> Result<String, ApiError> {
    let body_ns = body["metadata"]["namespace"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    if !def.namespaced {
        if let Some(m) = body["metadata"].as_object_mut() {
            m.remove("namespace");
        }
        return Ok(String::new());
    }
    let ns = ns.map(str::to_owned).unwrap_or(body_ns.clone());
    if ns.is_empty() {
        return Err(ApiError::bad_request(
            "the namespace of the object is required",
        ));
    }
    if !body_ns.is_empty() && body_ns != ns {
        return Err(ApiError::bad_request(
            "the namespace of the provided object does not match the namespace sent on \
             the request",
        ));
    }
    body["metadata"]["namespace"] = json!(ns);
    Ok(ns)
}
/// What replaces `old`: preconditions checked (resourceVersion, uid), the server-set
/// metadata kept, the generation moved on a spec change, the status kept unless
/// written through its subresource.
fn replacement(
    def: &ResourceDef,
    mode: WriteMode,
    body: Value,
    old: &StoredObject,
    body_name: &str,
    field_manager: &str,
    now: &str,
) -> Result<Value, ApiError> {
    let old_v = old.value();
    let mut body = if mode == WriteMode::UpdateStatus {
        let mut merged = old_v.clone();
        merged["status"] = body["status"].clone();
        if let Some(rv) = body["metadata"].get("resourceVersion") {
            merged["metadata"]["resourceVersion"] = rv.clone();
        }
        merged
    } else {
        body
    };
    let sent_rv = body["metadata"]["resourceVersion"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    if mode != WriteMode::Hook && !sent_rv.is_empty() && sent_rv != old.rv.to_string() {
        return Err(ApiError::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{body_name}\": the object has \
                     been modified; please apply your changes to the latest version and \
                     try again",
                def.qualified()
            ),
        )
        .with_details(details(def, body_name, None)));
    }
    let sent_uid = body["metadata"]["uid"].as_str().unwrap_or("").to_owned();
    if mode != WriteMode::Hook && !sent_uid.is_empty() && sent_uid != old.uid {
        return Err(ApiError::new(
            409,
            "Conflict",
            format!(
                "Precondition failed: UID in precondition: {sent_uid}, UID in object \
                     meta: {}",
                old.uid
            ),
        )
        .with_details(details(def, body_name, None)));
    }
    let meta = body["metadata"].as_object_mut().expect("object");
    meta.insert("uid".into(), json!(old.uid));
    for kept in ["creationTimestamp", "deletionTimestamp"] {
        match old_v["metadata"].get(kept) {
            Some(v) => meta.insert(kept.into(), v.clone()),
            None => meta.remove(kept),
        };
    }
    if def.generation {
        let g = old_v["metadata"]["generation"].as_i64().unwrap_or(1);
        let g = if body["spec"] != old_v["spec"] {
            g + 1
        } else {
            g
        };
        body["metadata"]["generation"] = json!(g);
    }
    if mode == WriteMode::Update && def.status_subresource {
        match old_v.get("status") {
            Some(s) => body["status"] = s.clone(),
            None => {
                body.as_object_mut().expect("object").remove("status");
            }
        }
    }
    if mode != WriteMode::Hook {
        add_managed_fields(&mut body, field_manager, "Update", now);
    }
    Ok(body)
}

fn invalid_rv(v: &str) -> ApiError {
    ApiError::bad_request(format!("invalid resource version: {v:?}"))
}

/// DNS-1123 subdomain, as object names must be.
fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("Required value: name or generateName is required".to_owned());
    }
    let ok = name.len() <= 253
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "Invalid value: \"{name}\": a lowercase RFC 1123 subdomain must consist of lower case \
             alphanumeric characters, '-' or '.', and must start and end with an alphanumeric \
             character"
        ))
    }
}

/// What a create does to `status` on the real server.
fn reset_status_on_create(def: &ResourceDef, body: &mut Value) {
    if !def.status_subresource {
        return;
    }
    let obj = body.as_object_mut().expect("object");
    match def.plural {
        "namespaces" => {
            obj.insert("status".into(), json!({"phase": "Active"}));
        }
        "pods" => {
            obj.insert(
                "status".into(),
                json!({"phase": "Pending", "qosClass": "BestEffort"}),
            );
        }
        _ => {
            obj.insert("status".into(), json!({}));
        }
    }
}

/// Secrets: `stringData` is folded into base64 `data` on write.
fn fold_string_data(body: &mut Value) {
    let Some(obj) = body.as_object_mut() else {
        return;
    };
    let Some(Value::Object(string_data)) = obj.remove("stringData") else {
        return;
    };
    let data = obj
        .entry("data")
        .or_insert_with(|| json!({}))
        .as_object_mut();
    if let Some(data) = data {
        for (k, v) in string_data {
            data.insert(k, json!(B64.encode(v.as_str().unwrap_or_default())));
        }
    }
}

/// The `f:` tree of managedFields for a value (lists collapsed).
fn fields_v1(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| !matches!(k.as_str(), "apiVersion" | "kind"))
                .map(|(k, v)| (format!("f:{k}"), fields_v1(v)))
                .collect(),
        ),
        _ => json!({}),
    }
}

/// Sets `metadata.managedFields` to one entry for `manager`, as server-side field tracking does.
fn add_managed_fields(body: &mut Value, manager: &str, operation: &str, now: &str) {
    let mut tracked = body.clone();
    if let Some(meta) = tracked["metadata"].as_object_mut() {
        meta.retain(|k, _| matches!(k.as_str(), "labels" | "annotations" | "ownerReferences"));
    }
    if let Some(o) = tracked.as_object_mut() {
        o.remove("status");
    }
    let entry = json!({
        "manager": manager,
        "operation": operation,
        "apiVersion": body["apiVersion"],
        "time": now,
        "fieldsType": "FieldsV1",
        "fieldsV1": fields_v1(&tracked),
    });
    body["metadata"]["managedFields"] = json!([entry]);
}

#[derive(serde::Serialize, serde::Deserialize)]
struct ContinueToken {
    v: String,
    rv: u64,
    start: (String, String),
}

fn encode_continue(rv: u64, start: &Key) -> String {
    let t = ContinueToken {
        v: "meta.k8s.io/v1".to_owned(),
        rv,
        start: start.clone(),
    };
    B64.encode(serde_json::to_vec(&t).expect("serialisable"))
}

fn decode_continue(token: &str) -> Result<(u64, Key), ApiError> {
    let bad = |why: &str| ApiError::bad_request(format!("continue key is not valid: {why}"));
    let raw = B64.decode(token).map_err(|e| bad(&e.to_string()))?;
    let t: ContinueToken = serde_json::from_slice(&raw).map_err(|e| bad(&e.to_string()))?;
    if t.v != "meta.k8s.io/v1" {
        return Err(bad(
            "incorrect encoded start resourceVersion (version meta.k8s.io/v1)",
        ));
    }
    Ok((t.rv, t.start))
}

/// Now as RFC 3339 UTC with seconds, as Kubernetes timestamps are.
pub(crate) fn now_rfc3339() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default();
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamp_shape() {
        let t = now_rfc3339();
        assert_eq!(t.len(), 20, "{t}");
        assert!(t.starts_with("20"), "{t}");
        assert!(t.ends_with('Z'));
    }

    #[test]
    fn continue_token_round_trip() {
        let k = ("ns".to_owned(), "a".to_owned());
        assert_eq!(decode_continue(&encode_continue(7, &k)).unwrap(), (7, k));
        assert_eq!(decode_continue("!!").unwrap_err().code, 400);
    }
}
