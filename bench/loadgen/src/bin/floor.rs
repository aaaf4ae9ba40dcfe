//! The floor for any proxy's per-event cost: a TCP forwarder that is nothing but one
//! edge-triggered epoll loop on one thread. It does what nginx and HAProxy do with an
//! upgraded connection (copy bytes both ways) and nothing else: no HTTP, no WebSocket framing,
//! no timers, no runtime, no allocation after a connection is set up. `bench/floor.sh` runs it
//! next to wsgate, nginx and HAProxy so that a gap can be split into what any event loop pays
//! on this machine and what a given proxy adds.
//!
//! A measuring instrument, not a proxy: the backend is dialled with a blocking connect, a
//! connection is dropped whole when either side ends or fails, and only loopback addresses are
//! accepted.
//!
//!     floor LISTEN_ADDR BACKEND_ADDR      e.g. floor 127.0.0.1:19606 127.0.0.1:19601
//!
//! Variants, each something a peer does differently or a knob to test what makes one proxy
//! faster than another (bench/RESULTS.md, "Run V"):
//! - `FLOOR_BATCH=1`: read every ready socket of one `epoll_wait` first, then write them all
//!   (HAProxy's order, seen with strace) instead of writing right after each read (nginx's);
//! - `FLOOR_OUT_ON_DEMAND=1`: watch for EPOLLOUT only while a write waits (HAProxy's
//!   level-triggered poller), not always (nginx's and tokio's edge-triggered registration);
//! - `FLOOR_SPIN_US=N`: poll without sleeping for up to N µs before blocking in `epoll_wait`;
//! - `FLOOR_WORK_NS=N`: busy-wait N ns before handling each event, a stand-in for a proxy's
//!   own per-event work (what does being that much slower per event cost, and on which core?).

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, IntoRawFd, RawFd};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Per direction. Bigger than anything one read of the benchmark returns; when it does fill,
/// reading stops until a write makes room (see `Direction::stalled`).
const BUFFER: usize = 64 * 1024;
const MAX_EVENTS: usize = 1024;
const LISTENER: u64 = u64::MAX;

#[derive(Clone, Copy)]
struct Variant {
    batch: bool,
    out_on_demand: bool,
    spin: Duration,
    work: Duration,
}

impl Variant {
    fn from_env() -> Result<Self, String> {
        let flag = |name: &str| std::env::var_os(name).is_some_and(|v| !v.is_empty() && v != "0");
        let number = |name: &str| match std::env::var(name) {
            Ok(v) => v
                .parse::<u64>()
                .map_err(|e| format!("{name}={v:?}: not a whole number ({e})")),
            Err(_) => Ok(0),
        };
        Ok(Variant {
            batch: flag("FLOOR_BATCH"),
            out_on_demand: flag("FLOOR_OUT_ON_DEMAND"),
            spin: Duration::from_micros(number("FLOOR_SPIN_US")?),
            work: Duration::from_nanos(number("FLOOR_WORK_NS")?),
        })
    }

    fn interest(self, out: bool) -> u32 {
        let out = if out { libc::EPOLLOUT } else { 0 };
        (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLET | out) as u32
    }
}

/// Bytes read from one socket and not yet written to the other.
struct Direction {
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    /// The buffer filled before the socket said EAGAIN: with edge triggering no new event
    /// comes for those bytes, so the next write that empties the buffer reads again.
    stalled: bool,
}

/// `fds[i]` is read into `dirs[i]`, which is written to `fds[1 - i]`. Side 0 is the client.
struct Pair {
    fds: [RawFd; 2],
    dirs: [Direction; 2],
    /// Whether EPOLLOUT is in `fds[i]`'s interest.
    watching_out: [bool; 2],
    /// Token of side 0; side 1 is `token + 1`.
    token: u64,
}

enum Io {
    Open,
    /// End of stream or an error other than EAGAIN: drop the pair.
    Done,
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn epoll_ctl(epoll: RawFd, op: i32, fd: RawFd, events: u32, token: u64) -> std::io::Result<()> {
    let mut event = libc::epoll_event { events, u64: token };
    // SAFETY: `event` is a valid epoll_event for the duration of the call.
    if unsafe { libc::epoll_ctl(epoll, op, fd, &mut event) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

impl Pair {
    fn new(fds: [RawFd; 2], token: u64, variant: Variant) -> Self {
        let dir = || Direction {
            buf: vec![0; BUFFER].into_boxed_slice(),
            start: 0,
            end: 0,
            stalled: false,
        };
        let out = !variant.out_on_demand;
        Pair {
            fds,
            dirs: [dir(), dir()],
            watching_out: [out, out],
            token,
        }
    }

    /// Reads side `i` until it is drained (a short read means drained, as tokio assumes too,
    /// which saves the read that would return EAGAIN) or the buffer is full.
    fn fill(&mut self, i: usize) -> Io {
        let (fd, d) = (self.fds[i], &mut self.dirs[i]);
        loop {
            if d.end == BUFFER {
                if d.start == 0 {
                    d.stalled = true;
                    return Io::Open;
                }
                d.buf.copy_within(d.start..d.end, 0);
                d.end -= d.start;
                d.start = 0;
            }
            let room = BUFFER - d.end;
            // SAFETY: the pointer and length describe the unused tail of our own buffer.
            let n = unsafe { libc::read(fd, d.buf[d.end..].as_mut_ptr().cast(), room) };
            match n {
                0 => return Io::Done,
                n if n > 0 => {
                    d.end += n as usize;
                    if (n as usize) < room {
                        return Io::Open;
                    }
                }
                _ if errno() == libc::EAGAIN => return Io::Open,
                _ if errno() == libc::EINTR => {}
                _ => return Io::Done,
            }
        }
    }

    /// Writes what side `i` read to the other side, until done or the socket is full (then
    /// EPOLLOUT brings us back; on demand, it is watched for from then until the write ends).
    fn flush(&mut self, i: usize, epoll: RawFd, variant: Variant) -> Io {
        let (o, fd) = (1 - i, self.fds[1 - i]);
        let d = &mut self.dirs[i];
        while d.start < d.end {
            // SAFETY: the pointer and length describe bytes of our own buffer.
            let n =
                unsafe { libc::write(fd, d.buf[d.start..d.end].as_ptr().cast(), d.end - d.start) };
            match n {
                n if n > 0 => d.start += n as usize,
                _ if errno() == libc::EAGAIN => {
                    return self.watch_out(o, true, epoll, variant);
                }
                _ if errno() == libc::EINTR => {}
                _ => return Io::Done,
            }
        }
        d.start = 0;
        d.end = 0;
        let stalled = std::mem::take(&mut d.stalled);
        if variant.out_on_demand {
            if let Io::Done = self.watch_out(o, false, epoll, variant) {
                return Io::Done;
            }
        }
        if stalled {
            if let Io::Done = self.fill(i) {
                return Io::Done;
            }
            return self.flush(i, epoll, variant);
        }
        Io::Open
    }

    fn watch_out(&mut self, side: usize, on: bool, epoll: RawFd, variant: Variant) -> Io {
        if self.watching_out[side] == on {
            return Io::Open;
        }
        self.watching_out[side] = on;
        let token = self.token + side as u64;
        match epoll_ctl(
            epoll,
            libc::EPOLL_CTL_MOD,
            self.fds[side],
            variant.interest(on),
            token,
        ) {
            Ok(()) => Io::Open,
            Err(_) => Io::Done,
        }
    }

    /// One event on side `side`: room to write there first, then whatever arrived there.
    /// Returns whether side `side` read bytes that wait to be written (batch variant only;
    /// otherwise they are written at once).
    fn on_event(&mut self, side: usize, events: u32, epoll: RawFd, variant: Variant) -> (Io, bool) {
        if events & libc::EPOLLOUT as u32 != 0 {
            if let Io::Done = self.flush(1 - side, epoll, variant) {
                return (Io::Done, false);
            }
        }
        let readable = (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR) as u32;
        if events & readable == 0 {
            return (Io::Open, false);
        }
        if let Io::Done = self.fill(side) {
            return (Io::Done, false);
        }
        if variant.batch {
            let d = &self.dirs[side];
            return (Io::Open, d.start < d.end);
        }
        (self.flush(side, epoll, variant), false)
    }

    fn close(self) {
        for fd in self.fds {
            // SAFETY: the pair owns both descriptors; closing also removes them from epoll.
            unsafe { libc::close(fd) };
        }
    }
}

fn dial(backend: SocketAddr) -> std::io::Result<RawFd> {
    let stream = TcpStream::connect(backend)?;
    stream.set_nodelay(true)?;
    stream.set_nonblocking(true)?;
    Ok(stream.into_raw_fd())
}

/// `epoll_wait`, after polling for up to `spin` without sleeping.
fn wait(epoll: RawFd, events: &mut [libc::epoll_event], spin: Duration) -> i32 {
    let max = events.len() as i32;
    // SAFETY (all three calls): `events` has room for `max` entries.
    if spin.is_zero() {
        return unsafe { libc::epoll_wait(epoll, events.as_mut_ptr(), max, -1) };
    }
    let started = Instant::now();
    loop {
        let n = unsafe { libc::epoll_wait(epoll, events.as_mut_ptr(), max, 0) };
        if n != 0 {
            return n;
        }
        if started.elapsed() >= spin {
            return unsafe { libc::epoll_wait(epoll, events.as_mut_ptr(), max, -1) };
        }
    }
}

struct Floor {
    epoll: RawFd,
    variant: Variant,
    /// Slot `k` holds the pair whose sides have tokens 2k and 2k + 1.
    pairs: Vec<Option<Pair>>,
    free: Vec<usize>,
}

impl Floor {
    fn accept_all(&mut self, listener: &TcpListener, backend: SocketAddr) -> std::io::Result<()> {
        while let Ok((client, _)) = listener.accept() {
            if let Err(e) = client
                .set_nodelay(true)
                .and_then(|()| client.set_nonblocking(true))
            {
                eprintln!("floor: dropping a client: {e}");
                continue;
            }
            let upstream = match dial(backend) {
                Ok(fd) => fd,
                Err(e) => {
                    eprintln!("floor: cannot reach the backend {backend}: {e}");
                    continue;
                }
            };
            let slot = self.free.pop().unwrap_or_else(|| {
                self.pairs.push(None);
                self.pairs.len() - 1
            });
            let token = 2 * slot as u64;
            let pair = Pair::new([client.into_raw_fd(), upstream], token, self.variant);
            for side in 0..2 {
                let interest = self.variant.interest(pair.watching_out[side]);
                epoll_ctl(
                    self.epoll,
                    libc::EPOLL_CTL_ADD,
                    pair.fds[side],
                    interest,
                    token + side as u64,
                )?;
            }
            self.pairs[slot] = Some(pair);
        }
        Ok(())
    }

    fn drop_pair(&mut self, slot: usize) {
        if let Some(pair) = self.pairs[slot].take() {
            pair.close();
            self.free.push(slot);
        }
    }
}

fn run(listen: SocketAddr, backend: SocketAddr, variant: Variant) -> std::io::Result<()> {
    let listener = TcpListener::bind(listen)?;
    listener.set_nonblocking(true)?;
    // SAFETY: plain system call; the result is checked.
    let epoll = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if epoll < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let accept_interest = (libc::EPOLLIN | libc::EPOLLET) as u32;
    epoll_ctl(
        epoll,
        libc::EPOLL_CTL_ADD,
        listener.as_raw_fd(),
        accept_interest,
        LISTENER,
    )?;
    let mut floor = Floor {
        epoll,
        variant,
        pairs: Vec::new(),
        free: Vec::new(),
    };
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; MAX_EVENTS];
    // Batch variant: (slot, side) read in this round, written once every event is read.
    let mut unwritten: Vec<(usize, usize)> = Vec::with_capacity(MAX_EVENTS);
    loop {
        let n = wait(epoll, &mut events, variant.spin);
        if n < 0 {
            if errno() == libc::EINTR {
                continue;
            }
            return Err(std::io::Error::last_os_error());
        }
        for event in &events[..n as usize] {
            let (token, bits) = (event.u64, event.events);
            if token == LISTENER {
                floor.accept_all(&listener, backend)?;
                continue;
            }
            if !variant.work.is_zero() {
                let started = Instant::now();
                while started.elapsed() < variant.work {
                    std::hint::spin_loop();
                }
            }
            let (slot, side) = ((token / 2) as usize, (token % 2) as usize);
            // An event for a pair dropped earlier in this round finds its slot empty (or taken
            // by a new pair, whose sockets then just answer EAGAIN).
            let Some(pair) = floor.pairs[slot].as_mut() else {
                continue;
            };
            match pair.on_event(side, bits, epoll, variant) {
                (Io::Done, _) => floor.drop_pair(slot),
                (Io::Open, true) => unwritten.push((slot, side)),
                (Io::Open, false) => {}
            }
        }
        for (slot, side) in unwritten.drain(..) {
            let Some(pair) = floor.pairs[slot].as_mut() else {
                continue;
            };
            if let Io::Done = pair.flush(side, epoll, variant) {
                floor.drop_pair(slot);
            }
        }
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [listen, backend] = args.as_slice() else {
        eprintln!(
            "usage: floor LISTEN_ADDR BACKEND_ADDR (loopback addresses, e.g. 127.0.0.1:19606)"
        );
        return ExitCode::from(2);
    };
    let (listen, backend) = match (listen.parse::<SocketAddr>(), backend.parse::<SocketAddr>()) {
        (Ok(l), Ok(b)) => (l, b),
        (Err(e), _) => {
            eprintln!("floor: LISTEN_ADDR {listen:?} is not IP:PORT: {e}");
            return ExitCode::from(2);
        }
        (_, Err(e)) => {
            eprintln!("floor: BACKEND_ADDR {backend:?} is not IP:PORT: {e}");
            return ExitCode::from(2);
        }
    };
    if !listen.ip().is_loopback() || !backend.ip().is_loopback() {
        eprintln!("floor: only loopback addresses are accepted ({listen}, {backend})");
        return ExitCode::from(2);
    }
    let variant = match Variant::from_env() {
        Ok(v) => v,
        Err(e) => {
            eprintln!("floor: {e}");
            return ExitCode::from(2);
        }
    };
    match run(listen, backend, variant) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("floor: {e}");
            ExitCode::FAILURE
        }
    }
}
