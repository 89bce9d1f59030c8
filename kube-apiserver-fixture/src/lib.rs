//! # kube-apiserver-fixture: a Kubernetes API server for tests
//!
//! No kube-apiserver can be installed on the machines these tests run on, so
//! the Kubernetes API client of `kube-proxy-rules` is tested against this
//! server, written from the API conventions
//! (<https://kubernetes.io/docs/reference/using-api/api-concepts/>), sharing
//! no code with the client:
//!
//! * **list** (`GET /api/v1/services`, `/api/v1/namespaces/{ns}/services`,
//!   `/apis/discovery.k8s.io/v1/endpointslices`, `/api/v1/nodes`, …): every
//!   object of the resource, `metadata.resourceVersion` of the list set to
//!   the store's current version; `labelSelector` (`k`, `!k`, `k=v`, `k!=v`)
//!   and `fieldSelector` (`metadata.name=`, `metadata.namespace=`); `limit`
//!   and `continue` (**chunked lists**: the snapshot of the first page is
//!   served page by page; a token older than the last compaction is
//!   `410 Gone`, reason `Expired`). [`ApiServer::set_max_page`] caps a page
//!   below the client's `limit`, as a server may.
//! * **watch** (`?watch=true&resourceVersion=N`): a `Transfer-Encoding:
//!   chunked` stream of `{"type": ADDED|MODIFIED|DELETED|BOOKMARK|ERROR,
//!   "object": …}` lines, one event per chunk: every change after `N` from
//!   the history, then live ones. `N` older than the history (after
//!   [`ApiServer::compact`]) is an `ERROR` event carrying a `Status` with
//!   code 410 (`Expired`), as the API server answers an expired version;
//!   `resourceVersion` empty or `0` starts with an `ADDED` of every current
//!   object. `allowWatchBookmarks=true`: `BOOKMARK` events (an object of the
//!   kind with only `metadata.resourceVersion`) every
//!   [`ApiServer::set_bookmark_interval`]; `timeoutSeconds` ends the stream.
//! * objects are created, updated and deleted by the test
//!   ([`ApiServer::create`], [`ApiServer::update`], [`ApiServer::delete`]),
//!   which stamps `resourceVersion`, `uid`, `creationTimestamp` as the server
//!   would; [`ApiServer::drop_watches`] ends every open watch (a dropped
//!   connection); [`ApiServer::requests`] is the request log (how many lists
//!   and watches a client made); [`ApiServer::fail_requests`] answers the
//!   next requests of a resource with `500`.
//!
//! Serves plain HTTP/1.1 on a listener the test gives (loopback, or a
//! socket made inside a test namespace), one thread per connection,
//! `Connection: close` after each answer.
//!
//! Owns: its threads and sockets. May call: nothing outside the process.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// A resource the server knows: its URL group/version, plural, kind, and
/// whether it is namespaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Resource {
    pub api_version: &'static str,
    pub plural: &'static str,
    pub kind: &'static str,
    pub namespaced: bool,
}

pub const SERVICES: Resource =
    Resource { api_version: "v1", plural: "services", kind: "Service", namespaced: true };
pub const ENDPOINT_SLICES: Resource = Resource {
    api_version: "discovery.k8s.io/v1",
    plural: "endpointslices",
    kind: "EndpointSlice",
    namespaced: true,
};
pub const NODES: Resource = Resource { api_version: "v1", plural: "nodes", kind: "Node", namespaced: false };
const RESOURCES: [Resource; 3] = [SERVICES, ENDPOINT_SLICES, NODES];

/// One request as the server saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub path: String,
    pub query: BTreeMap<String, String>,
}

impl Request {
    pub fn is_watch(&self) -> bool {
        matches!(self.query.get("watch").map(String::as_str), Some("true" | "1"))
    }
    /// A list (not a watch) of `r`.
    pub fn is_list_of(&self, r: Resource) -> bool {
        !self.is_watch() && self.path.ends_with(&format!("/{}", r.plural))
    }
    pub fn is_watch_of(&self, r: Resource) -> bool {
        self.is_watch() && self.path.ends_with(&format!("/{}", r.plural))
    }
}

#[derive(Debug, Clone)]
struct Event {
    rv: u64,
    resource: Resource,
    kind: &'static str,
    object: Value,
}

type Key = (String, String);

#[derive(Default)]
struct Store {
    rv: u64,
    /// Objects per resource, by (namespace, name).
    objects: HashMap<Resource, BTreeMap<Key, Value>>,
    /// Every change after `compacted`, oldest first.
    history: Vec<Event>,
    compacted: u64,
    /// List snapshots being paged: token → (snapshot rv, remaining items).
    pages: HashMap<u64, (u64, Vec<Value>)>,
    next_token: u64,
    /// Bumped by `drop_watches`: a watch started before ends.
    watch_generation: u64,
    requests: Vec<Request>,
    max_page: Option<usize>,
    /// The next n requests of a resource fail with 500.
    failing: HashMap<Resource, usize>,
    bookmark_interval: Option<Duration>,
    uid: u64,
}

struct Shared {
    store: Mutex<Store>,
    changed: Condvar,
    stop: AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Store> {
        // A panicking connection thread must not take the test down with it.
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The running server; stops on drop.
pub struct ApiServer {
    shared: Arc<Shared>,
    addr: SocketAddr,
    accept: Option<JoinHandle<()>>,
}

impl ApiServer {
    /// Serve on 127.0.0.1, a free port.
    pub fn start() -> std::io::Result<ApiServer> {
        Ok(ApiServer::serve(TcpListener::bind("127.0.0.1:0")?))
    }

    /// Serve on a listener the caller made (e.g. inside a test namespace).
    pub fn serve(listener: TcpListener) -> ApiServer {
        let addr = listener.local_addr().unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)));
        let shared = Arc::new(Shared {
            store: Mutex::new(Store {
                rv: 100,
                compacted: 100,
                bookmark_interval: Some(Duration::from_secs(1)),
                ..Default::default()
            }),
            changed: Condvar::new(),
            stop: AtomicBool::new(false),
        });
        let _ = listener.set_nonblocking(true);
        let s = shared.clone();
        let accept = std::thread::spawn(move || {
            while !s.stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let s = s.clone();
                        std::thread::spawn(move || {
                            let _ = conn.set_nonblocking(false);
                            let _ = handle(&s, conn);
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        ApiServer { shared, addr, accept: Some(accept) }
    }

    /// `http://addr:port`, for `--master` or a kubeconfig's server.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Create an object (JSON with at least metadata.name); returns its resourceVersion.
    pub fn create(&self, r: Resource, object: Value) -> u64 {
        self.write(r, object, "ADDED")
    }
    /// Replace an object; returns its new resourceVersion.
    pub fn update(&self, r: Resource, object: Value) -> u64 {
        self.write(r, object, "MODIFIED")
    }
    /// Delete an object; the DELETED event carries its last state.
    pub fn delete(&self, r: Resource, namespace: &str, name: &str) -> Option<u64> {
        let mut st = self.shared.lock();
        let key = (if r.namespaced { namespace.to_string() } else { String::new() }, name.to_string());
        let mut obj = st.objects.entry(r).or_default().remove(&key)?;
        st.rv += 1;
        let rv = st.rv;
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        st.history.push(Event { rv, resource: r, kind: "DELETED", object: obj });
        drop(st);
        self.shared.changed.notify_all();
        Some(rv)
    }

    fn write(&self, r: Resource, mut obj: Value, kind: &'static str) -> u64 {
        let mut st = self.shared.lock();
        st.rv += 1;
        let rv = st.rv;
        let name = obj["metadata"]["name"].as_str().unwrap_or_default().to_string();
        let ns = if r.namespaced {
            obj["metadata"]["namespace"].as_str().filter(|n| !n.is_empty()).unwrap_or("default").to_string()
        } else {
            String::new()
        };
        if r.namespaced {
            obj["metadata"]["namespace"] = json!(ns);
        }
        obj["apiVersion"] = json!(r.api_version);
        obj["kind"] = json!(r.kind);
        let key = (ns, name);
        let old = st.objects.get(&r).and_then(|m| m.get(&key)).cloned();
        let kind = if old.is_some() { "MODIFIED" } else { kind };
        let uid = match old.as_ref().and_then(|o| o["metadata"]["uid"].as_str()) {
            Some(u) => u.to_string(),
            None => {
                st.uid += 1;
                format!("00000000-0000-4000-8000-{:012}", st.uid)
            }
        };
        obj["metadata"]["uid"] = json!(uid);
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        if obj["metadata"]["creationTimestamp"].is_null() {
            obj["metadata"]["creationTimestamp"] = json!("2026-01-01T00:00:00Z");
        }
        st.objects.entry(r).or_default().insert(key, obj.clone());
        st.history.push(Event { rv, resource: r, kind, object: obj });
        drop(st);
        self.shared.changed.notify_all();
        rv
    }

    /// Forget the history up to now: a watch from an older version, or a
    /// list continue token issued before, is `410 Gone`.
    pub fn compact(&self) {
        let mut st = self.shared.lock();
        st.compacted = st.rv;
        st.history.clear();
        st.pages.clear();
    }

    /// End every open watch stream (as a restarted API server or a broken
    /// connection would).
    pub fn drop_watches(&self) {
        self.shared.lock().watch_generation += 1;
        self.shared.changed.notify_all();
    }

    /// Serve at most `n` items per list page, whatever `limit` the client asked.
    pub fn set_max_page(&self, n: usize) {
        self.shared.lock().max_page = Some(n.max(1));
    }

    /// How often an idle watch with bookmarks gets a BOOKMARK (None: never).
    pub fn set_bookmark_interval(&self, every: Option<Duration>) {
        self.shared.lock().bookmark_interval = every;
    }

    /// The requests served so far.
    pub fn requests(&self) -> Vec<Request> {
        self.shared.lock().requests.clone()
    }

    /// Answer the next `n` requests (lists and watches) of `r` with
    /// `500 Internal Server Error` (an API server in trouble: the client
    /// must back off and retry).
    pub fn fail_requests(&self, r: Resource, n: usize) {
        self.shared.lock().failing.insert(r, n);
    }

    /// The current resourceVersion of the store.
    pub fn resource_version(&self) -> u64 {
        self.shared.lock().rv
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.drop_watches();
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                match u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16) {
                    Ok(v) => {
                        out.push(v);
                        i += 3;
                        continue;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Which resource and namespace a path names.
fn route(path: &str) -> Option<(Resource, Option<String>)> {
    let rest = path
        .strip_prefix("/api/v1/")
        .map(|r| ("v1", r))
        .or_else(|| path.strip_prefix("/apis/discovery.k8s.io/v1/").map(|r| ("discovery.k8s.io/v1", r)))?;
    let parts: Vec<&str> = rest.1.split('/').collect();
    let (ns, plural) = match parts.as_slice() {
        [plural] => (None, *plural),
        ["namespaces", ns, plural] => (Some(ns.to_string()), *plural),
        _ => return None,
    };
    RESOURCES.iter().find(|r| r.api_version == rest.0 && r.plural == plural).map(|r| (*r, ns))
}

/// `labelSelector` and `fieldSelector` as the API server reads them.
fn selected(obj: &Value, labels: Option<&str>, fields: Option<&str>) -> bool {
    let lbl = &obj["metadata"]["labels"];
    for term in labels.unwrap_or("").split(',').map(str::trim).filter(|t| !t.is_empty()) {
        let ok = if let Some(k) = term.strip_prefix('!') {
            lbl.get(k).is_none()
        } else if let Some((k, v)) = term.split_once("!=") {
            lbl.get(k).and_then(Value::as_str) != Some(v)
        } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
            lbl.get(k).and_then(Value::as_str) == Some(v)
        } else {
            lbl.get(term).is_some()
        };
        if !ok {
            return false;
        }
    }
    for term in fields.unwrap_or("").split(',').map(str::trim).filter(|t| !t.is_empty()) {
        let (k, v, eq) = match term.split_once("!=") {
            Some((k, v)) => (k, v, false),
            None => match term.split_once("==").or_else(|| term.split_once('=')) {
                Some((k, v)) => (k, v, true),
                None => return false,
            },
        };
        let have = match k {
            "metadata.name" => obj["metadata"]["name"].as_str(),
            "metadata.namespace" => obj["metadata"]["namespace"].as_str(),
            _ => return false,
        };
        if (have == Some(v)) != eq {
            return false;
        }
    }
    true
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

fn respond(conn: &mut TcpStream, code: u16, body: &Value) -> std::io::Result<()> {
    let text = body.to_string();
    let phrase = match code {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        410 => "Gone",
        500 => "Internal Server Error",
        _ => "Error",
    };
    write!(
        conn,
        "HTTP/1.1 {code} {phrase}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
        text.len()
    )?;
    conn.flush()
}

fn chunk(conn: &mut TcpStream, line: &Value) -> std::io::Result<()> {
    let text = format!("{line}\n");
    write!(conn, "{:x}\r\n{text}\r\n", text.len())?;
    conn.flush()
}

fn handle(shared: &Shared, mut conn: TcpStream) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h == "\r\n" || h == "\n" {
            break;
        }
    }
    let mut words = line.split_whitespace();
    let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let query: BTreeMap<String, String> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect();
    let req = Request { path: path.to_string(), query };
    shared.lock().requests.push(req.clone());
    if method != "GET" {
        return respond(&mut conn, 405, &status(405, "MethodNotAllowed", "only GET is served"));
    }
    let Some((resource, namespace)) = route(path) else {
        return respond(&mut conn, 404, &status(404, "NotFound", &format!("no resource at {path}")));
    };
    {
        let mut st = shared.lock();
        if let Some(n) = st.failing.get_mut(&resource).filter(|n| **n > 0) {
            *n -= 1;
            drop(st);
            return respond(&mut conn, 500, &status(500, "InternalError", "the fixture was told to fail"));
        }
    }
    let q = |k: &str| req.query.get(k).map(String::as_str);
    let matches = |o: &Value| {
        namespace.as_deref().is_none_or(|ns| o["metadata"]["namespace"].as_str() == Some(ns))
            && selected(o, q("labelSelector"), q("fieldSelector"))
    };
    if req.is_watch() {
        return watch(shared, conn, resource, &req, &matches);
    }
    // A list, maybe one page of it.
    let mut st = shared.lock();
    let limit = q("limit").and_then(|l| l.parse::<usize>().ok()).filter(|l| *l > 0);
    let limit = match (limit, st.max_page) {
        (Some(l), Some(m)) => Some(l.min(m)),
        (l, m) => l.or(m),
    };
    let (snapshot_rv, mut items) = match q("continue").filter(|c| !c.is_empty()) {
        Some(token) => match token.parse::<u64>().ok().and_then(|t| st.pages.remove(&t)) {
            Some(page) => page,
            None => {
                drop(st);
                let msg = "The provided continue parameter is too old to display a consistent list result. \
                           You can start a new list without the continue parameter.";
                return respond(&mut conn, 410, &status(410, "Expired", msg));
            }
        },
        None => {
            let all: Vec<Value> = st
                .objects
                .get(&resource)
                .map(|m| m.values().filter(|o| matches(o)).cloned().collect())
                .unwrap_or_default();
            (st.rv, all)
        }
    };
    let mut meta = json!({"resourceVersion": snapshot_rv.to_string()});
    if let Some(l) = limit {
        if items.len() > l {
            let rest = items.split_off(l);
            st.next_token += 1;
            let token = st.next_token;
            meta["continue"] = json!(token.to_string());
            meta["remainingItemCount"] = json!(rest.len());
            st.pages.insert(token, (snapshot_rv, rest));
        }
    }
    drop(st);
    let list = json!({"kind": format!("{}List", resource.kind), "apiVersion": resource.api_version,
                      "metadata": meta, "items": items});
    respond(&mut conn, 200, &list)
}

fn watch(
    shared: &Shared,
    mut conn: TcpStream,
    resource: Resource,
    req: &Request,
    matches: &dyn Fn(&Value) -> bool,
) -> std::io::Result<()> {
    let q = |k: &str| req.query.get(k).map(String::as_str);
    let bookmarks = q("allowWatchBookmarks") == Some("true");
    let timeout = q("timeoutSeconds").and_then(|t| t.parse::<u64>().ok()).map(Duration::from_secs);
    let started = Instant::now();
    write!(
        conn,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )?;
    let mut st = shared.lock();
    let generation = st.watch_generation;
    let mut sent = match q("resourceVersion").filter(|v| !v.is_empty() && *v != "0") {
        Some(v) => match v.parse::<u64>() {
            Ok(rv) if rv >= st.compacted => rv,
            Ok(rv) => {
                let msg = format!("too old resource version: {rv} ({})", st.compacted);
                drop(st);
                chunk(&mut conn, &json!({"type": "ERROR", "object": status(410, "Expired", &msg)}))?;
                return write!(conn, "0\r\n\r\n");
            }
            Err(_) => {
                drop(st);
                let e = status(400, "BadRequest", &format!("invalid resourceVersion {v:?}"));
                chunk(&mut conn, &json!({"type": "ERROR", "object": e}))?;
                return write!(conn, "0\r\n\r\n");
            }
        },
        None => {
            // "Start at any": the current objects as ADDED, then changes.
            let rv = st.rv;
            let objs: Vec<Value> = st
                .objects
                .get(&resource)
                .map(|m| m.values().filter(|o| matches(o)).cloned().collect())
                .unwrap_or_default();
            drop(st);
            for o in objs {
                chunk(&mut conn, &json!({"type": "ADDED", "object": o}))?;
            }
            st = shared.lock();
            rv
        }
    };
    let mut last_bookmark = Instant::now();
    loop {
        if shared.stop.load(Ordering::Relaxed) || st.watch_generation != generation {
            break;
        }
        if timeout.is_some_and(|t| started.elapsed() >= t) {
            break;
        }
        let events: Vec<Event> =
            st.history.iter().filter(|e| e.rv > sent && e.resource == resource).cloned().collect();
        let current = st.rv;
        let interval = st.bookmark_interval;
        drop(st);
        for e in events {
            if matches(&e.object) {
                chunk(&mut conn, &json!({"type": e.kind, "object": e.object}))?;
            }
            sent = e.rv;
        }
        if bookmarks && interval.is_some_and(|i| last_bookmark.elapsed() >= i) {
            last_bookmark = Instant::now();
            sent = sent.max(current);
            let obj = json!({"kind": resource.kind, "apiVersion": resource.api_version,
                             "metadata": {"resourceVersion": sent.to_string()}});
            chunk(&mut conn, &json!({"type": "BOOKMARK", "object": obj}))?;
        }
        st = shared.lock();
        if !st.history.iter().any(|e| e.rv > sent && e.resource == resource) {
            let (g, _) = shared
                .changed
                .wait_timeout(st, Duration::from_millis(100))
                .unwrap_or_else(|e| e.into_inner());
            st = g;
        }
    }
    drop(st);
    write!(conn, "0\r\n\r\n")?;
    conn.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn get(addr: SocketAddr, target: &str) -> (u16, String) {
        let mut c = TcpStream::connect(addr).unwrap();
        write!(c, "GET {target} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut out = String::new();
        c.read_to_string(&mut out).unwrap();
        let code = out[9..12].parse().unwrap();
        (code, out)
    }

    fn body(resp: &str) -> Value {
        serde_json::from_str(resp.split_once("\r\n\r\n").unwrap().1).unwrap()
    }

    #[test]
    fn lists_page_and_expire() {
        let s = ApiServer::start().unwrap();
        for i in 0..5 {
            s.create(SERVICES, json!({"metadata": {"name": format!("s{i}"), "namespace": "a"}}));
        }
        s.create(
            SERVICES,
            json!({"metadata": {"name": "p", "labels": {"service.kubernetes.io/service-proxy-name": "x"}}}),
        );
        let (code, r) = get(
            s.addr(),
            "/api/v1/services?limit=2&labelSelector=%21service.kubernetes.io%2Fservice-proxy-name",
        );
        assert_eq!(code, 200);
        let l = body(&r);
        assert_eq!(l["items"].as_array().unwrap().len(), 2);
        assert_eq!(l["metadata"]["remainingItemCount"], 3);
        let token = l["metadata"]["continue"].as_str().unwrap().to_string();
        s.create(SERVICES, json!({"metadata": {"name": "late"}}));
        let (_, r) = get(s.addr(), &format!("/api/v1/services?limit=10&continue={token}"));
        let l2 = body(&r);
        assert_eq!(l2["items"].as_array().unwrap().len(), 3, "the snapshot, not the new object");
        assert_eq!(l2["metadata"]["resourceVersion"], l["metadata"]["resourceVersion"]);
        // An expired token.
        let (_, r) = get(s.addr(), "/api/v1/services?limit=1");
        let token = body(&r)["metadata"]["continue"].as_str().unwrap().to_string();
        s.compact();
        assert_eq!(get(s.addr(), &format!("/api/v1/services?continue={token}")).0, 410);
        let (_, r) = get(s.addr(), "/api/v1/namespaces/a/services");
        assert_eq!(body(&r)["items"].as_array().unwrap().len(), 5);
        assert_eq!(get(s.addr(), "/api/v1/pods").0, 404);
    }

    #[test]
    fn watches_stream_history_bookmarks_and_410() {
        let s = ApiServer::start().unwrap();
        s.set_bookmark_interval(Some(Duration::from_millis(50)));
        let rv = s.create(NODES, json!({"metadata": {"name": "n1"}}));
        s.create(NODES, json!({"metadata": {"name": "n2"}}));
        s.update(NODES, json!({"metadata": {"name": "n1", "labels": {"a": "b"}}}));
        s.delete(NODES, "", "n2");
        let (code, r) = get(
            s.addr(),
            &format!("/api/v1/nodes?watch=true&resourceVersion={rv}&allowWatchBookmarks=true&timeoutSeconds=1&fieldSelector=metadata.name%3Dn1"),
        );
        assert_eq!(code, 200);
        assert!(r.contains("Transfer-Encoding: chunked"));
        assert!(r.contains("\"type\":\"MODIFIED\"") && r.contains("\"type\":\"BOOKMARK\""), "{r}");
        assert!(!r.contains("n2"), "field selector: {r}");
        s.compact();
        let (_, r) = get(s.addr(), &format!("/api/v1/nodes?watch=true&resourceVersion={rv}"));
        assert!(r.contains("\"type\":\"ERROR\"") && r.contains("\"code\":410"), "{r}");
        assert_eq!(s.requests().iter().filter(|r| r.is_watch_of(NODES)).count(), 2);
    }
}
