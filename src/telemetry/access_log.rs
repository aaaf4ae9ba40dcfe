//! The access log (`--access-log off|stdout|PATH`, `--access-log-format json|text`): one
//! line per WebSocket connection when it ends, per proxied HTTP request when its response
//! ends, and per answer wsgate gives itself (a refusal or an error, with its status and
//! reason).
//!
//! Written off the relay's hot path: whoever ends a connection only fills in an
//! [`AccessRecord`] (built at the handshake, boxed) and hands it to a bounded channel
//! ([`AccessLog::log`], a `try_send`, no lock held across it, never blocking). One writer
//! thread formats the records and writes them through a 64 KiB buffer, flushed at most
//! [`FLUSH_EVERY`] after a line was written (and when the buffer fills). When the channel is
//! full, the record is dropped and counted (`wsgate_access_log_dropped_total`): a relay never
//! waits for a slow disk or a blocked stdout, and memory stays bounded by [`QUEUE`] records.

use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender, TrySendError};
use std::time::{Duration, Instant, SystemTime};

use prometheus_client::metrics::counter::Counter;

/// Records waiting for the writer at most; more are dropped and counted.
pub const QUEUE: usize = 4096;
/// How long a written line may wait in the buffer before it is flushed.
pub const FLUSH_EVERY: Duration = Duration::from_millis(200);
const BUFFER_BYTES: usize = 64 * 1024;

/// Where the access log goes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum AccessLogTarget {
    /// No access log (the default).
    #[default]
    Off,
    Stdout,
    /// Appended to this file (created when missing).
    File(PathBuf),
}

impl FromStr for AccessLogTarget {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "" => Err("expected off, stdout or a file path".into()),
            "off" => Ok(AccessLogTarget::Off),
            "stdout" | "-" => Ok(AccessLogTarget::Stdout),
            path => Ok(AccessLogTarget::File(PathBuf::from(path))),
        }
    }
}

/// How each line is written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum AccessLogFormat {
    /// One JSON object per line.
    #[default]
    Json,
    /// One `key=value` line (logfmt), values quoted when they hold spaces or quotes.
    Text,
}

/// `--access-log` and `--access-log-format`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AccessLogOptions {
    pub target: AccessLogTarget,
    pub format: AccessLogFormat,
}

/// What a line is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccessKind {
    /// A WebSocket upgrade: relayed (101), refused by the backend, or answered by wsgate.
    WebSocket,
    /// A plain HTTP request.
    Http,
}

impl AccessKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AccessKind::WebSocket => "ws",
            AccessKind::Http => "http",
        }
    }
}

/// Who closed a relayed connection first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Closer {
    Client,
    Backend,
    /// wsgate itself (idle timeout, drain, token expiry, a broken rule or a limit).
    Gateway,
}

impl Closer {
    pub fn as_str(self) -> &'static str {
        match self {
            Closer::Client => "client",
            Closer::Backend => "backend",
            Closer::Gateway => "wsgate",
        }
    }
}

/// How a relayed connection ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CloseRecord {
    pub by: Closer,
    /// The first Close's code; 1005 for a Close without one, 1006 when the side that ended
    /// first sent no Close at all (both as RFC 6455 §7.1.5 reports them; never sent).
    pub code: u16,
    /// Why: wsgate's reason, or for a side that sent no Close, that it went away.
    pub reason: Option<&'static str>,
}

/// What a relayed connection moved.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RelayTotals {
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub messages_up: u64,
    pub messages_down: u64,
}

/// One access log line before formatting. Built when the request is known, finished and
/// handed to [`AccessLog::log`] when it ends.
#[derive(Clone, Debug)]
pub struct AccessRecord {
    /// When the request head had been read (not printed; durations count from here).
    pub received: Instant,
    pub kind: AccessKind,
    pub request_id: String,
    /// The route's id; empty when no route matched.
    pub route: String,
    /// The client's address (`X-Forwarded-For` from a trusted proxy, else the TCP peer).
    pub client: SocketAddr,
    /// The backend endpoint; empty when none was reached.
    pub endpoint: String,
    /// None when the request head could not be parsed.
    pub method: Option<http::Method>,
    /// Path and query, with the value of `access_token` redacted.
    pub path: String,
    pub status: u16,
    /// Why wsgate answered itself (a `wsgate_refusals_total` or
    /// `wsgate_handshake_failures_total` reason); None for a backend's answer.
    pub reason: Option<&'static str>,
    /// Request head read → 101 written (WebSocket only).
    pub upgrade: Option<Duration>,
    /// Request head read → the line's end (connection closed, response body sent).
    pub duration: Duration,
    /// A relayed connection's bytes and messages each way.
    pub relay: Option<RelayTotals>,
    /// A plain HTTP response's body bytes.
    pub body_bytes: Option<u64>,
    pub close: Option<CloseRecord>,
}

impl AccessRecord {
    /// A record of a request received at `received`, to be filled in.
    pub fn new(
        received: Instant,
        kind: AccessKind,
        client: SocketAddr,
        method: Option<http::Method>,
        path: String,
    ) -> AccessRecord {
        AccessRecord {
            received,
            kind,
            request_id: String::new(),
            route: String::new(),
            client,
            endpoint: String::new(),
            method,
            path,
            status: 0,
            reason: None,
            upgrade: None,
            duration: Duration::ZERO,
            relay: None,
            body_bytes: None,
            close: None,
        }
    }
}

/// A record on its way to the log: what the data plane keeps until the connection or
/// request ends (boxed, so a relayed connection's state grows by a pointer), then
/// [`AccessEntry::send`]s.
#[derive(Debug)]
pub struct AccessEntry {
    log: AccessLog,
    time: SystemTime,
    pub record: AccessRecord,
}

impl AccessEntry {
    /// Hands the finished record to the writer, stamped with the time now; drops and
    /// counts it when the writer is behind by [`QUEUE`] records. Never blocks.
    pub fn send(mut self: Box<Self>) {
        self.time = SystemTime::now();
        let log = self.log.clone();
        match log.tx.try_send(Msg::Line(self)) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                log.dropped.inc();
            }
        }
    }
}

enum Msg {
    Line(Box<AccessEntry>),
    /// Flush, then say so.
    Flush(mpsc::Sender<()>),
}

/// The sending end of the access log, cheap to clone; the writer thread stops once every
/// clone is gone.
#[derive(Clone)]
pub struct AccessLog {
    tx: SyncSender<Msg>,
    dropped: Counter,
}

impl std::fmt::Debug for AccessLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessLog").finish_non_exhaustive()
    }
}

impl AccessLog {
    /// Opens the target and starts the writer thread; None when the log is off. `dropped`
    /// counts the records a full channel turned away.
    pub fn start(options: &AccessLogOptions, dropped: Counter) -> io::Result<Option<AccessLog>> {
        let out: Box<dyn Write + Send> = match &options.target {
            AccessLogTarget::Off => return Ok(None),
            AccessLogTarget::Stdout => Box::new(io::stdout()),
            AccessLogTarget::File(path) => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?,
            ),
        };
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let format = options.format;
        std::thread::Builder::new()
            .name("wsgate-access-log".into())
            .spawn(move || write_lines(rx, out, format))?;
        Ok(Some(AccessLog { tx, dropped }))
    }

    /// An entry for `record`, to fill in and [`AccessEntry::send`] when it ends.
    pub fn entry(&self, record: AccessRecord) -> Box<AccessEntry> {
        Box::new(AccessEntry {
            log: self.clone(),
            time: SystemTime::UNIX_EPOCH,
            record,
        })
    }

    /// Waits (up to `timeout`) until every line logged before has been written and
    /// flushed: at shutdown, so the last lines are not lost. Blocks the calling thread.
    pub fn flush(&self, timeout: Duration) -> bool {
        let (done, flushed) = mpsc::channel();
        let deadline = Instant::now() + timeout;
        let mut msg = Msg::Flush(done);
        loop {
            match self.tx.try_send(msg) {
                Ok(()) => break,
                Err(TrySendError::Full(back)) if Instant::now() < deadline => {
                    msg = back;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(_) => return false,
            }
        }
        flushed
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .is_ok()
    }
}

/// While lines keep coming, the writer sleeps this long between batches instead of being
/// woken per line: a sender then finds no receiver waiting and makes no system call, and
/// the writer no wake-up per line (bench/RESULTS.md "Issue 21: what the telemetry costs").
/// At [`QUEUE`] lines per poll, up to ~400,000 lines a second before lines are dropped.
const POLL: Duration = Duration::from_millis(10);

/// The writer thread. Idle, it blocks until a line comes; then it takes lines in batches,
/// [`POLL`] apart, until a poll finds none. Lines are buffered and flushed within
/// [`FLUSH_EVERY`] of the first unflushed one.
fn write_lines(rx: mpsc::Receiver<Msg>, out: Box<dyn Write + Send>, format: AccessLogFormat) {
    let mut w = Writer {
        out: io::BufWriter::with_capacity(BUFFER_BYTES, out),
        line: Vec::with_capacity(512),
        clock: LineClock::default(),
        format,
        flush_at: None,
        failed: false,
    };
    loop {
        let msg = match w.flush_at {
            None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
            Some(at) => rx.recv_timeout(at.saturating_duration_since(Instant::now())),
        };
        match msg {
            Ok(msg) => w.take(msg),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return w.flush(),
        }
        // Busy: batches until a poll finds nothing.
        loop {
            std::thread::sleep(POLL);
            let mut taken = 0;
            loop {
                match rx.try_recv() {
                    Ok(msg) => w.take(msg),
                    Err(mpsc::TryRecvError::Empty) => break,
                    Err(mpsc::TryRecvError::Disconnected) => return w.flush(),
                }
                taken += 1;
            }
            w.flush_if_due(Instant::now());
            if taken == 0 {
                break;
            }
        }
        w.flush_if_due(Instant::now());
    }
}

/// The writer thread's state.
struct Writer {
    out: io::BufWriter<Box<dyn Write + Send>>,
    line: Vec<u8>,
    clock: LineClock,
    format: AccessLogFormat,
    /// When the first unflushed line must be out by.
    flush_at: Option<Instant>,
    /// The last write failed (reported once until one works again).
    failed: bool,
}

impl Writer {
    fn take(&mut self, msg: Msg) {
        match msg {
            Msg::Line(entry) => {
                self.line.clear();
                let time = self.clock.format(entry.time);
                match self.format {
                    AccessLogFormat::Json => json_line(&mut self.line, time, &entry.record),
                    AccessLogFormat::Text => text_line(&mut self.line, time, &entry.record),
                }
                drop(entry);
                self.line.push(b'\n');
                let r = self.out.write_all(&self.line);
                self.report(r);
                if self.flush_at.is_none() {
                    self.flush_at = Some(Instant::now() + FLUSH_EVERY);
                }
            }
            Msg::Flush(done) => {
                self.flush();
                let _ = done.send(());
            }
        }
    }

    fn flush_if_due(&mut self, now: Instant) {
        if self.flush_at.is_some_and(|at| at <= now) {
            self.flush();
        }
    }

    fn flush(&mut self) {
        let r = self.out.flush();
        self.report(r);
        self.flush_at = None;
    }

    fn report(&mut self, r: io::Result<()>) {
        match r {
            Err(e) if !self.failed => {
                tracing::warn!(error = %e, "cannot write the access log; lines are lost until it works again");
                self.failed = true;
            }
            Err(_) => {}
            Ok(()) => self.failed = false,
        }
    }
}

/// The fields of a line in order, for both formats.
enum Value<'a> {
    /// Text from outside (a client's path or request id, a route's name): escaped as
    /// needed.
    Str(&'a str),
    /// Text wsgate made, with nothing to escape: the time, a method (an HTTP token), a kind,
    /// a side, a reason.
    Known(&'a str),
    /// Written as text (an address, already without anything to escape).
    Addr(SocketAddr),
    Num(u64),
    Millis(Duration),
}

fn fields(time: &str, r: &AccessRecord, mut field: impl FnMut(&str, Value<'_>)) {
    field("time", Value::Known(time));
    field("kind", Value::Known(r.kind.as_str()));
    field("request_id", Value::Str(&r.request_id));
    field("route", Value::Str(&r.route));
    field("client", Value::Addr(r.client));
    field("endpoint", Value::Str(&r.endpoint));
    field(
        "method",
        Value::Known(r.method.as_ref().map_or("", |m| m.as_str())),
    );
    field("path", Value::Str(&r.path));
    field("status", Value::Num(u64::from(r.status)));
    if let Some(reason) = r.reason {
        field("reason", Value::Known(reason));
    }
    if let Some(upgrade) = r.upgrade {
        field("upgrade_ms", Value::Millis(upgrade));
    }
    field("duration_ms", Value::Millis(r.duration));
    if let Some(t) = &r.relay {
        field("bytes_up", Value::Num(t.bytes_up));
        field("bytes_down", Value::Num(t.bytes_down));
        field("messages_up", Value::Num(t.messages_up));
        field("messages_down", Value::Num(t.messages_down));
    }
    if let Some(bytes) = r.body_bytes {
        field("bytes_down", Value::Num(bytes));
    }
    if let Some(close) = &r.close {
        field("closed_by", Value::Known(close.by.as_str()));
        field("close_code", Value::Num(u64::from(close.code)));
        if let Some(reason) = close.reason {
            field("close_reason", Value::Known(reason));
        }
    }
}

fn json_line(out: &mut Vec<u8>, time: &str, r: &AccessRecord) {
    out.push(b'{');
    let mut first = true;
    fields(time, r, |name, value| {
        if !first {
            out.push(b',');
        }
        first = false;
        out.push(b'"');
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b"\":");
        match value {
            Value::Str(s) => json_string(out, s),
            Value::Known(s) => {
                out.push(b'"');
                out.extend_from_slice(s.as_bytes());
                out.push(b'"');
            }
            Value::Addr(a) => {
                out.push(b'"');
                address(out, a);
                out.push(b'"');
            }
            Value::Num(n) => decimal(out, n),
            Value::Millis(d) => millis(out, d),
        }
    });
    out.push(b'}');
}

fn text_line(out: &mut Vec<u8>, time: &str, r: &AccessRecord) {
    let mut first = true;
    fields(time, r, |name, value| {
        if !first {
            out.push(b' ');
        }
        first = false;
        out.extend_from_slice(name.as_bytes());
        out.push(b'=');
        match value {
            Value::Str("") | Value::Known("") => out.push(b'-'),
            Value::Str(s) | Value::Known(s)
                if s.bytes()
                    .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\') =>
            {
                out.extend_from_slice(s.as_bytes())
            }
            // Quoted like a JSON string: spaces, quotes and line breaks stay on one line.
            Value::Str(s) | Value::Known(s) => json_string(out, s),
            Value::Addr(a) => address(out, a),
            Value::Num(n) => decimal(out, n),
            Value::Millis(d) => millis(out, d),
        }
    });
}

/// `ip:port` (`[ip]:port` for IPv6), as `SocketAddr` displays it; IPv4 without `fmt`.
fn address(out: &mut Vec<u8>, a: SocketAddr) {
    match a {
        SocketAddr::V4(v4) => {
            for (i, octet) in v4.ip().octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                decimal(out, u64::from(octet));
            }
            out.push(b':');
            decimal(out, u64::from(v4.port()));
        }
        SocketAddr::V6(_) => {
            // Writing into a Vec cannot fail.
            let _ = write!(out, "{a}");
        }
    }
}

/// Milliseconds with three decimals (microseconds).
fn millis(out: &mut Vec<u8>, d: Duration) {
    let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
    decimal(out, micros / 1000);
    let frac = micros % 1000;
    out.extend_from_slice(&[
        b'.',
        b'0' + (frac / 100) as u8,
        b'0' + (frac / 10 % 10) as u8,
        b'0' + (frac % 10) as u8,
    ]);
}

/// `n` in decimal, without `fmt`'s machinery (a line has a dozen numbers).
fn decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut buf = [0u8; 20];
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[at..]);
}

/// Whether `s` holds a byte a JSON string must escape. Without an early exit, so that the
/// compiler checks many bytes per instruction (most values have none).
fn needs_escape(s: &[u8]) -> bool {
    s.iter().fold(0u8, |any, &b| {
        any | u8::from(b < 0x20) | u8::from(b == b'"') | u8::from(b == b'\\') | u8::from(b == 0x7f)
    }) != 0
}

/// `s` as a JSON string, quotes included (control characters escaped). Most values need
/// no escape: they are copied whole.
fn json_string(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    if !needs_escape(s.as_bytes()) {
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
        return;
    }
    for c in s.chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            '\n' => out.extend_from_slice(b"\\n"),
            '\r' => out.extend_from_slice(b"\\r"),
            '\t' => out.extend_from_slice(b"\\t"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => {
                let mut utf8 = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut utf8).as_bytes());
            }
        }
    }
    out.push(b'"');
}

/// The writer's timestamps: the date and time to the second are formatted once per
/// second, the milliseconds per line.
#[derive(Default)]
struct LineClock {
    second: u64,
    text: String,
}

impl LineClock {
    fn format(&mut self, t: SystemTime) -> &str {
        let d = t
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or(Duration::ZERO);
        if self.text.is_empty() || d.as_secs() != self.second {
            self.second = d.as_secs();
            self.text = rfc3339_millis(t);
        } else {
            // Same second: only the milliseconds change ("…:SS.mmmZ").
            let ms = d.subsec_millis();
            let at = self.text.len() - 4;
            self.text.truncate(at);
            for digit in [ms / 100, ms / 10 % 10, ms % 10] {
                self.text.push(char::from(b'0' + digit as u8));
            }
            self.text.push('Z');
        }
        &self.text
    }
}

/// `2026-12-07T06:01:02.345Z`.
pub fn rfc3339_millis(t: SystemTime) -> String {
    let d = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> AccessRecord {
        let mut r = AccessRecord::new(
            Instant::now(),
            AccessKind::WebSocket,
            "10.0.0.1:5000".parse().unwrap(),
            Some(http::Method::GET),
            "/chat?room=a b\"\n".into(),
        );
        r.request_id = "abc".into();
        r.route = "ns/chat".into();
        r.status = 101;
        r.upgrade = Some(Duration::from_micros(1500));
        r.duration = Duration::from_millis(20);
        r.relay = Some(RelayTotals {
            bytes_up: 10,
            bytes_down: 20,
            messages_up: 1,
            messages_down: 2,
        });
        r.close = Some(CloseRecord {
            by: Closer::Gateway,
            code: 1001,
            reason: Some("idle timeout"),
        });
        r
    }

    #[test]
    fn times_are_rfc3339_in_utc() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_796_623_262_345);
        assert_eq!(rfc3339_millis(t), "2026-12-07T06:01:02.345Z");
        assert_eq!(
            rfc3339_millis(SystemTime::UNIX_EPOCH),
            "1970-01-01T00:00:00.000Z"
        );
        let leap = SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(rfc3339_millis(leap), "2000-02-29T00:00:00.000Z");
        let mut clock = LineClock::default();
        assert_eq!(clock.format(t), "2026-12-07T06:01:02.345Z");
        let later = t + Duration::from_millis(607);
        assert_eq!(clock.format(later), "2026-12-07T06:01:02.952Z");
        let next = t + Duration::from_millis(700);
        assert_eq!(clock.format(next), "2026-12-07T06:01:03.045Z");
        assert_eq!(
            clock.format(t + Duration::from_millis(5)),
            "2026-12-07T06:01:02.350Z"
        );
    }

    #[test]
    fn a_json_line_parses_and_a_text_line_stays_one_line() {
        let r = record();
        let mut json = Vec::new();
        json_line(&mut json, "1970-01-01T00:00:00.000Z", &r);
        let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(v["path"], "/chat?room=a b\"\n");
        assert_eq!(v["upgrade_ms"].as_f64(), Some(1.5));
        assert_eq!(v["closed_by"], "wsgate");
        assert_eq!(v["close_code"], 1001);
        let mut text = Vec::new();
        text_line(&mut text, "1970-01-01T00:00:00.000Z", &r);
        let text = String::from_utf8(text).unwrap();
        assert!(!text.contains('\n'), "{text}");
        assert!(text.contains(r#"path="/chat?room=a b\"\n""#), "{text}");
        assert!(text.contains("endpoint=- "), "{text}");
        assert!(text.contains("close_reason=\"idle timeout\""), "{text}");
    }

    /// Addresses as `SocketAddr` displays them; strings escaped only where JSON must,
    /// non-ASCII kept as it is.
    #[test]
    fn addresses_and_strings_are_written_as_json_wants_them() {
        for a in [
            "10.0.0.1:5000",
            "255.255.255.255:65535",
            "0.0.0.0:0",
            "[::1]:8080",
        ] {
            let a: SocketAddr = a.parse().unwrap();
            let mut out = Vec::new();
            address(&mut out, a);
            assert_eq!(String::from_utf8(out).unwrap(), a.to_string());
        }
        for s in ["plain /path?x=1", "é\\\u{1}\"\u{7f}\t\n", ""] {
            let mut out = Vec::new();
            json_string(&mut out, s);
            let out = String::from_utf8(out).unwrap();
            assert!(!out.contains(['\n', '\t', '\u{1}']), "{out}");
            assert_eq!(serde_json::from_str::<String>(&out).unwrap(), s, "{out}");
        }
        let long = "x".repeat(1000) + "\"";
        assert!(needs_escape(long.as_bytes()) && !needs_escape(&long.as_bytes()[..1000]));
    }

    #[test]
    fn a_full_channel_drops_and_counts_instead_of_blocking() {
        let (tx, _rx) = mpsc::sync_channel(1);
        let log = AccessLog {
            tx,
            dropped: Counter::default(),
        };
        for _ in 0..3 {
            log.entry(record()).send();
        }
        assert_eq!(log.dropped.get(), 2);
    }
}
