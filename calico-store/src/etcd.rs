//! The etcd v3 backend, shared by every node of a cluster.
//!
//! [`Datastore`] is synchronous, the `etcd-client` crate is async: the store
//! owns a tokio *current-thread* runtime and `block_on`s each call on the
//! calling thread. There is no background thread; the few tasks the gRPC
//! channel spawns (connection driver, balancer) only run inside a call and
//! die with the store. Connecting is lazy: [`EtcdStore::connect`] opens no
//! socket, the first request does.
//!
//! Compare-and-swap is a real etcd transaction: `commit` compares
//! `create_revision == 0` (create) or `mod_revision == rev` (update/delete) on
//! every key and applies all puts/deletes in one Txn. Its else-branch reads
//! every key back at the same revision, so a failed commit names the first key
//! whose condition did not hold.
//!
//! Every call is bounded by [`DatastoreConfig::timeout`] in total (connect,
//! request and retries): past it the call is [`StoreError::Unavailable`] naming
//! the endpoints and what failed. Reads are retried on transient errors within
//! that bound; a commit is retried only when the error proves it never reached
//! etcd (the connection could not be made), because re-sending a commit whose
//! answer was lost would turn its own success into a false conflict.
//!
//! With several endpoints the store talks to one member at a time (starting
//! at one chosen by the process ID, so plugin processes spread out) and moves
//! to the next after a transport failure. etcd-client's own balancer is not
//! used for this: it keeps picking a dead member, failing one call in N.

use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use etcd_client::proto::PbTxnOpResponse;
use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, GetOptions, Identity, KvClient, TlsOptions, Txn,
    TxnOp, WatchOptions, WatchStream,
};

use crate::{Datastore, DatastoreConfig, KeyValue, Op, Revision, StoreError};

/// How many times one call may be attempted (first try included).
const MAX_ATTEMPTS: u32 = 4;
/// First pause between attempts; doubles each retry.
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
/// Largest answer we accept (a big cluster's block list in one range read).
const MAX_RESPONSE_BYTES: usize = 256 << 20;

/// A [`Datastore`] on etcd v3.
pub struct EtcdStore {
    endpoints: Vec<String>,
    timeout: Duration,
    options: ConnectOptions,
    rt: tokio::runtime::Runtime,
    /// The connected client and the index of its endpoint; `None` until the
    /// first call, and again after a transport failure so the next call
    /// reconnects from scratch (to the next endpoint).
    client: Mutex<Option<(usize, KvClient)>>,
    /// The endpoint to connect to next (rotates on transport failures).
    current: AtomicUsize,
    requests: AtomicU64,
    /// [`ConnectOptions`] of the watch connection: `options` without the
    /// per-request timeout (a watch is one long request).
    watch_options: ConnectOptions,
    /// The watch [`Datastore::wait_for_change`] keeps open between calls.
    watch: Mutex<WatchState>,
}

/// The prefix the store's watch covers: every key Calico writes.
pub const WATCH_PREFIX: &str = "/calico/";
/// Longest pause between two attempts to open a watch.
const MAX_WATCH_BACKOFF: Duration = Duration::from_secs(5);

/// The open watch (if any) and the reconnect backoff.
struct WatchState {
    open: Option<OpenWatch>,
    backoff: Duration,
    /// No new attempt before this (after a failed one).
    retry_at: Option<Instant>,
    last_error: String,
}

struct OpenWatch {
    /// Kept with the stream: the connection the watch runs on.
    _client: Client,
    stream: WatchStream,
    /// The watch delivers every change from this revision on.
    start: Revision,
    /// The highest revision its events carried.
    seen: Revision,
}

/// Why one attempt failed, and whether trying again may help.
struct Failure {
    message: String,
    /// A transport problem: reconnect before the next attempt.
    transport: bool,
    /// The request certainly never reached etcd (safe to re-send a commit).
    not_sent: bool,
    /// Retrying cannot help (etcd refused the request itself).
    permanent: bool,
}

impl EtcdStore {
    /// Prepare a store for `cfg`'s endpoints and TLS files. No connection is
    /// made here (see the module doc); a bad configuration (no endpoints,
    /// unreadable certificate files, TLS files with `http://` endpoints) is a
    /// [`StoreError::Config`].
    pub fn connect(cfg: &DatastoreConfig) -> Result<EtcdStore, StoreError> {
        let endpoints = cfg.endpoints();
        let endpoints_len = endpoints.len().max(1);
        if endpoints.is_empty() {
            return Err(StoreError::Config("etcd datastore needs etcd_endpoints".into()));
        }
        let timeout = cfg.timeout();
        let mut options = ConnectOptions::new().with_connect_timeout(timeout).with_timeout(timeout);
        let mut watch_options = ConnectOptions::new().with_connect_timeout(timeout);
        if let Some(tls) = tls_options(cfg)? {
            if let Some(ep) = endpoints.iter().find(|e| e.starts_with("http://")) {
                return Err(StoreError::Config(format!(
                    "etcd TLS files are configured but endpoint {ep} is http://; use https://"
                )));
            }
            watch_options = watch_options.with_tls(tls.clone());
            options = options.with_tls(tls);
        } else if let Some(ep) = endpoints.iter().find(|e| e.starts_with("https://")) {
            // Without a CA we would trust nothing (or everything): say so instead.
            return Err(StoreError::Config(format!(
                "etcd endpoint {ep} is https:// but etcd_ca_cert_file is not set"
            )));
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| StoreError::Unavailable(format!("cannot start the etcd client runtime: {e}")))?;
        Ok(EtcdStore {
            endpoints,
            timeout,
            options,
            rt,
            client: Mutex::new(None),
            // Spread short-lived plugin processes over the members.
            current: AtomicUsize::new(std::process::id() as usize % endpoints_len),
            requests: AtomicU64::new(0),
            watch_options,
            watch: Mutex::new(WatchState {
                open: None,
                backoff: FIRST_BACKOFF,
                retry_at: None,
                last_error: String::new(),
            }),
        })
    }

    /// How many requests this store has sent to etcd (every attempt counts).
    /// Benchmarks divide it by the work done to get requests per operation.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// The configured total bound of one call.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    fn endpoints_text(&self) -> String {
        self.endpoints.join(",")
    }

    fn cached_client(&self) -> Option<(usize, KvClient)> {
        match self.client.lock() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    fn set_client(&self, c: Option<(usize, KvClient)>) {
        match self.client.lock() {
            Ok(mut g) => *g = c,
            Err(p) => *p.into_inner() = c,
        }
    }

    /// Run `f` against etcd with the store's bound and retry policy.
    /// `resend_safe`: whether an attempt whose fate is unknown may be re-sent.
    fn call<T, F, Fut>(&self, what: &str, resend_safe: bool, f: F) -> Result<T, StoreError>
    where
        F: Fn(KvClient) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let start = Instant::now();
        let deadline = start + self.timeout;
        let members = self.endpoints.len();
        // Enough attempts to try every member twice.
        let max_attempts = MAX_ATTEMPTS.max(2 * members as u32);
        let mut backoff = FIRST_BACKOFF;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let remaining = deadline.saturating_duration_since(Instant::now());
            // With several members, a silent one must not eat the whole bound.
            let share = (max_attempts - attempt + 1).min(members as u32).max(1);
            let budget = remaining / share;
            let failure = match self.rt.block_on(self.attempt(budget, &f)) {
                Ok(v) => return Ok(v),
                Err(f) => f,
            };
            let retry_ok = !failure.permanent && (resend_safe || failure.not_sent);
            let left = deadline.saturating_duration_since(Instant::now());
            // Moving on to another member needs no pause; a full round does.
            let pause =
                if failure.transport && attempt % members as u32 != 0 { Duration::ZERO } else { backoff };
            if !retry_ok || attempt >= max_attempts || left <= pause {
                log::warn!("etcd {what} failed after {attempt} attempt(s): {}", failure.message);
                if failure.permanent {
                    return Err(StoreError::Unavailable(format!(
                        "etcd at {} refused {what}: {}",
                        self.endpoints_text(),
                        failure.message
                    )));
                }
                return Err(StoreError::Unavailable(format!(
                    "etcd at {}: {what} failed after {attempt} attempt(s) in {:.1?} (bound {:?}): {}",
                    self.endpoints_text(),
                    start.elapsed(),
                    self.timeout,
                    failure.message
                )));
            }
            log::debug!("etcd {what} attempt {attempt} failed, retrying: {}", failure.message);
            if !pause.is_zero() {
                std::thread::sleep(pause);
                backoff *= 2;
            }
        }
    }

    async fn attempt<T, F, Fut>(&self, budget: Duration, f: &F) -> Result<T, Failure>
    where
        F: Fn(KvClient) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let (idx, client) = match self.cached_client() {
            Some(c) => c,
            None => {
                let idx = self.current.load(Ordering::Relaxed) % self.endpoints.len();
                let endpoint = &self.endpoints[idx];
                // One member per client: a dead member must fail the attempt
                // (and make us move on), not be picked again by a balancer.
                let connect = Client::connect([endpoint], Some(self.options.clone()));
                match tokio::time::timeout(budget, connect).await {
                    Err(_) => return Err(self.failed(idx, timed_out("connect"))),
                    Ok(Err(e)) => return Err(self.failed(idx, classify(e))),
                    Ok(Ok(c)) => {
                        let kv = c
                            .kv_client()
                            .max_decoding_message_size(MAX_RESPONSE_BYTES)
                            .max_encoding_message_size(MAX_RESPONSE_BYTES);
                        self.set_client(Some((idx, kv.clone())));
                        (idx, kv)
                    }
                }
            }
        };
        self.requests.fetch_add(1, Ordering::Relaxed);
        match tokio::time::timeout(budget, f(client)).await {
            Err(_) => Err(self.failed(idx, timed_out("request"))),
            Ok(Err(e)) => Err(self.failed(idx, classify(e))),
            Ok(Ok(v)) => Ok(v),
        }
    }

    /// Name the endpoint in a failure; after a transport failure drop the
    /// client and move on to the next endpoint.
    fn failed(&self, idx: usize, mut f: Failure) -> Failure {
        if self.endpoints.len() > 1 {
            f.message = format!("{}: {}", self.endpoints[idx], f.message);
        }
        if f.transport {
            self.set_client(None);
            let _ = self.current.compare_exchange(
                idx,
                (idx + 1) % self.endpoints.len(),
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
        f
    }
}

/// The watch behind [`Datastore::wait_for_change`]: one etcd watch of
/// [`WATCH_PREFIX`], opened from the caller's revision + 1 and kept open
/// between calls, so an idle watcher sends nothing (waiting for the next
/// event costs no request) and a change that lands between two calls is
/// already queued on the stream. A history compacted past the start ends the
/// watch with the current revision, so the caller re-lists; a broken stream is
/// reopened from the caller's revision with a doubling backoff (up to
/// [`MAX_WATCH_BACKOFF`]), each attempt on the next endpoint.
impl EtcdStore {
    async fn open_watch(&self, start: Revision, budget: Duration) -> Result<OpenWatch, String> {
        let idx = self.current.load(Ordering::Relaxed) % self.endpoints.len();
        let endpoint = &self.endpoints[idx];
        let open = async {
            let mut client = Client::connect([endpoint], Some(self.watch_options.clone())).await?;
            let opts = WatchOptions::new().with_prefix().with_start_revision(start);
            let stream = client.watch(WATCH_PREFIX, Some(opts)).await?;
            Ok::<_, etcd_client::Error>((client, stream))
        };
        self.requests.fetch_add(1, Ordering::Relaxed);
        let failed = |msg: String| {
            // The next attempt goes to the next member.
            let next = (idx + 1) % self.endpoints.len();
            let _ = self.current.compare_exchange(idx, next, Ordering::Relaxed, Ordering::Relaxed);
            format!("{endpoint}: {msg}")
        };
        match tokio::time::timeout(budget, open).await {
            Err(_) => Err(failed("opening the watch timed out".into())),
            Ok(Err(e)) => Err(failed(describe(&e))),
            Ok(Ok((client, stream))) => Ok(OpenWatch { _client: client, stream, start, seen: start - 1 }),
        }
    }

    fn watch_failed(&self, st: &mut WatchState, msg: String) {
        log::debug!("etcd watch: {msg}; reopening in {:?}", st.backoff);
        st.open = None;
        st.last_error = msg;
        st.retry_at = Some(Instant::now() + st.backoff);
        st.backoff = (st.backoff * 2).min(MAX_WATCH_BACKOFF);
    }

    fn watch_unavailable(&self, st: &WatchState) -> StoreError {
        StoreError::Unavailable(format!("etcd watch at {}: {}", self.endpoints_text(), st.last_error))
    }

    fn wait_watching(&self, after: Revision, timeout: Duration) -> Result<Option<Revision>, StoreError> {
        let deadline = Instant::now() + timeout;
        let mut guard = match self.watch.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let st = &mut *guard;
        loop {
            // A watch opened later than the caller's revision cannot vouch
            // for what came between.
            if st.open.as_ref().is_some_and(|w| w.start > after + 1) {
                st.open = None;
            }
            match &st.open {
                Some(w) if w.seen > after => return Ok(Some(w.seen)),
                Some(_) => {}
                None => {
                    let now = Instant::now();
                    if let Some(at) = st.retry_at.filter(|at| *at > now) {
                        if at >= deadline {
                            std::thread::sleep(deadline.saturating_duration_since(now));
                            return Err(self.watch_unavailable(st));
                        }
                        std::thread::sleep(at - now);
                    }
                    let left = deadline.saturating_duration_since(Instant::now());
                    let budget = self.timeout.min(left.max(Duration::from_millis(500)));
                    match self.rt.block_on(self.open_watch(after + 1, budget)) {
                        Ok(w) => {
                            st.open = Some(w);
                            st.backoff = FIRST_BACKOFF;
                            st.retry_at = None;
                        }
                        Err(msg) => {
                            self.watch_failed(st, msg);
                            if Instant::now() >= deadline {
                                return Err(self.watch_unavailable(st));
                            }
                            continue;
                        }
                    }
                }
            }
            let Some(w) = st.open.as_mut() else { continue };
            let left = deadline.saturating_duration_since(Instant::now());
            // A zero timeout still polls the stream once: what is queued is seen.
            let got = self.rt.block_on(async { tokio::time::timeout(left, w.stream.message()).await });
            match got {
                Err(_) => return Ok(None),
                Ok(Ok(Some(resp))) => {
                    let header = resp.header().map(|h| h.revision()).unwrap_or(0);
                    if resp.compact_revision() > 0 {
                        // The history from `start` is gone: the caller re-lists.
                        log::info!(
                            "etcd watch from revision {} hit compaction at {}; reporting revision {header} for a re-list",
                            w.start,
                            resp.compact_revision()
                        );
                        st.open = None;
                        return Ok(Some(header.max(resp.compact_revision()).max(after + 1)));
                    }
                    if resp.canceled() {
                        let why = format!("etcd canceled the watch: {}", resp.cancel_reason());
                        self.watch_failed(st, why);
                        continue;
                    }
                    if let Some(rev) =
                        resp.events().iter().filter_map(|e| e.kv()).map(|kv| kv.mod_revision()).max()
                    {
                        w.seen = w.seen.max(rev.max(header));
                    }
                    if w.seen > after {
                        return Ok(Some(w.seen));
                    }
                    // Created, or a progress notification: nothing changed.
                    if Instant::now() >= deadline {
                        return Ok(None);
                    }
                }
                Ok(Ok(None)) => self.watch_failed(st, "etcd closed the watch stream".into()),
                Ok(Err(e)) => self.watch_failed(st, describe(&e)),
            }
        }
    }
}

fn timed_out(stage: &str) -> Failure {
    Failure {
        message: format!("{stage} timed out"),
        transport: true,
        not_sent: stage == "connect",
        permanent: false,
    }
}

/// Sort an etcd-client error into our retry classes.
fn classify(e: etcd_client::Error) -> Failure {
    use etcd_client::Error as E;
    use tonic::Code;
    let message = describe(&e);
    let not_sent = never_sent(&e);
    match &e {
        E::GRpcStatus(s) => match s.code() {
            Code::Unavailable | Code::Unknown | Code::Cancelled | Code::Aborted => {
                Failure { message, transport: true, not_sent, permanent: false }
            }
            Code::DeadlineExceeded | Code::ResourceExhausted => {
                Failure { message, transport: false, not_sent: false, permanent: false }
            }
            _ => Failure { message, transport: false, not_sent: false, permanent: true },
        },
        E::TransportError(_) | E::IoError(_) => {
            Failure { message, transport: true, not_sent, permanent: false }
        }
        E::InvalidArgs(_) | E::InvalidUri(_) => {
            Failure { message, transport: false, not_sent: true, permanent: true }
        }
        _ => Failure { message, transport: true, not_sent: false, permanent: false },
    }
}

/// True when the error proves the request never left: the connection could
/// not be made (refused, unreachable, name not resolved). A connection that
/// broke *after* sending (reset, GOAWAY, timeout) is not such proof.
fn never_sent(e: &etcd_client::Error) -> bool {
    use std::io::ErrorKind;
    let mut cause: Option<&(dyn std::error::Error + 'static)> = match e {
        etcd_client::Error::GRpcStatus(s) => std::error::Error::source(s),
        etcd_client::Error::TransportError(t) => std::error::Error::source(t),
        etcd_client::Error::IoError(io) => Some(io),
        _ => None,
    };
    while let Some(c) = cause {
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            if matches!(
                io.kind(),
                ErrorKind::ConnectionRefused
                    | ErrorKind::AddrNotAvailable
                    | ErrorKind::NetworkUnreachable
                    | ErrorKind::HostUnreachable
            ) {
                return true;
            }
        }
        // hyper-util's connector names its failures like this (its error type is private).
        let text = c.to_string();
        if text.starts_with("tcp connect error") || text.starts_with("dns error") {
            return true;
        }
        cause = c.source();
    }
    false
}

/// A one-line description: the gRPC message plus the innermost cause (e.g.
/// "tcp connect error: Connection refused (os error 111)").
fn describe(e: &etcd_client::Error) -> String {
    let (head, mut cause): (String, Option<&(dyn std::error::Error + 'static)>) = match e {
        etcd_client::Error::GRpcStatus(s) => (s.message().to_string(), std::error::Error::source(s)),
        etcd_client::Error::TransportError(t) => (t.to_string(), std::error::Error::source(t)),
        other => (other.to_string(), None),
    };
    let mut root = None;
    while let Some(c) = cause {
        root = Some(c);
        cause = c.source();
    }
    match root.map(|r| r.to_string()) {
        Some(r) if !head.contains(&r) => format!("{head}: {r}"),
        _ => head,
    }
}

/// TLS client options from `etcd_ca_cert_file` / `etcd_cert_file` /
/// `etcd_key_file`, or `None` when none is set.
fn tls_options(cfg: &DatastoreConfig) -> Result<Option<TlsOptions>, StoreError> {
    let (ca, cert, key) = (&cfg.etcd_ca_cert_file, &cfg.etcd_cert_file, &cfg.etcd_key_file);
    if ca.is_none() && cert.is_none() && key.is_none() {
        return Ok(None);
    }
    let read = |what: &str, p: &std::path::Path| {
        std::fs::read(p).map_err(|e| StoreError::Config(format!("cannot read {what} {}: {e}", p.display())))
    };
    let mut tls = TlsOptions::new();
    match ca {
        Some(p) => tls = tls.ca_certificate(Certificate::from_pem(read("etcd_ca_cert_file", p)?)),
        None => {
            return Err(StoreError::Config(
                "etcd_cert_file/etcd_key_file are set but etcd_ca_cert_file is not".into(),
            ))
        }
    }
    match (cert, key) {
        (Some(c), Some(k)) => {
            tls = tls.identity(Identity::from_pem(read("etcd_cert_file", c)?, read("etcd_key_file", k)?))
        }
        (None, None) => {}
        (Some(_), None) => {
            return Err(StoreError::Config("etcd_cert_file is set without etcd_key_file".into()))
        }
        (None, Some(_)) => {
            return Err(StoreError::Config("etcd_key_file is set without etcd_cert_file".into()))
        }
    }
    Ok(Some(tls))
}

fn to_key_value(kv: &etcd_client::KeyValue) -> Result<KeyValue, StoreError> {
    let key = String::from_utf8(kv.key().to_vec()).map_err(|_| StoreError::Corrupt {
        key: String::from_utf8_lossy(kv.key()).into_owned(),
        reason: "key is not valid UTF-8".into(),
    })?;
    Ok(KeyValue { key, value: kv.value().to_vec(), revision: kv.mod_revision() })
}

fn header_revision(h: Option<&etcd_client::ResponseHeader>, what: &str) -> Result<Revision, StoreError> {
    h.map(|h| h.revision())
        .ok_or_else(|| StoreError::Unavailable(format!("etcd answered {what} without a response header")))
}

impl Datastore for EtcdStore {
    fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let resp = self.call(&format!("get {key}"), true, |mut kv| {
            let key = key.to_string();
            async move { kv.get(key, None).await }
        })?;
        resp.kvs().first().map(to_key_value).transpose()
    }

    fn list(&self, prefix: &str) -> Result<Vec<KeyValue>, StoreError> {
        let resp = self.call(&format!("list {prefix}"), true, |mut kv| {
            let prefix = prefix.to_string();
            async move { kv.get(prefix, Some(GetOptions::new().with_prefix())).await }
        })?;
        // etcd returns a range sorted by key (bytewise), which for UTF-8 keys
        // is the same order as `String`'s.
        resp.kvs().iter().map(to_key_value).collect()
    }

    fn commit(&self, ops: &[Op]) -> Result<Revision, StoreError> {
        if ops.is_empty() {
            return self.revision();
        }
        for (i, op) in ops.iter().enumerate() {
            if ops[..i].iter().any(|o| o.key() == op.key()) {
                return Err(StoreError::Config(format!("one commit names key {} twice", op.key())));
            }
        }
        let mut compares = Vec::with_capacity(ops.len());
        let mut writes = Vec::with_capacity(ops.len());
        let mut reads = Vec::with_capacity(ops.len());
        for op in ops {
            match op {
                Op::Create { key, value } => {
                    compares.push(Compare::create_revision(key.as_str(), CompareOp::Equal, 0));
                    writes.push(TxnOp::put(key.as_str(), value.clone(), None));
                }
                Op::Update { key, value, revision } => {
                    compares.push(Compare::mod_revision(key.as_str(), CompareOp::Equal, *revision));
                    writes.push(TxnOp::put(key.as_str(), value.clone(), None));
                }
                Op::Delete { key, revision } => {
                    compares.push(Compare::mod_revision(key.as_str(), CompareOp::Equal, *revision));
                    writes.push(TxnOp::delete(key.as_str(), None));
                }
            }
            reads.push(TxnOp::get(op.key(), None));
        }
        let txn = Txn::new().when(compares).and_then(writes).or_else(reads);
        let what = format!("commit of {} op(s) starting at {}", ops.len(), ops[0].key());
        let resp = self.call(&what, false, |mut kv| {
            let txn = txn.clone();
            async move { kv.txn(txn).await }
        })?;
        if resp.succeeded() {
            return header_revision(resp.header(), &what);
        }
        // The else-branch read every key at the revision the compares saw.
        // (Read through the raw protobuf: `op_responses()` would panic on an
        // answer without a body.)
        for (i, op) in ops.iter().enumerate() {
            let found = match resp.0.responses.get(i).and_then(|r| r.response.as_ref()) {
                Some(PbTxnOpResponse::ResponseRange(r)) => r.kvs.first().map(|kv| kv.mod_revision),
                _ => None,
            };
            let holds = match op {
                Op::Create { .. } => found.is_none(),
                Op::Update { revision, .. } | Op::Delete { revision, .. } => found == Some(*revision),
            };
            if !holds {
                return Err(StoreError::Conflict { key: op.key().to_string() });
            }
        }
        // Unreachable in a consistent etcd; still a conflict, on the first key.
        Err(StoreError::Conflict { key: ops[0].key().to_string() })
    }

    fn revision(&self) -> Result<Revision, StoreError> {
        let resp = self.call("revision", true, |mut kv| async move {
            kv.get("/", Some(GetOptions::new().with_count_only())).await
        })?;
        header_revision(resp.header(), "revision")
    }

    /// An etcd watch of everything under [`WATCH_PREFIX`], kept open between
    /// calls (see [`EtcdStore::wait_watching`]'s impl block): `Some` with
    /// the revision of a change under `/calico/` after `after` (or the
    /// current revision after a compaction, to re-list), `None` when
    /// `timeout` passed without one, `Unavailable` when etcd could not be
    /// watched for the whole `timeout`.
    fn wait_for_change(&self, after: Revision, timeout: Duration) -> Result<Option<Revision>, StoreError> {
        self.wait_watching(after, timeout)
    }
}
