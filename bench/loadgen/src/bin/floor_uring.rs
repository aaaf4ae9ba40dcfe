//! The floor (`floor.rs`) on io_uring instead of epoll (issue 22, item 4): the same bare
//! TCP forwarder, so that `bench/floor.sh` can put the two system-call interfaces side by
//! side with wsgate, nginx and HAProxy on the same load, and say what io_uring would save
//! a relay thread at most (the relay machine's own work is the same under either).
//!
//! What it does, per the issue: a multishot receive per socket into one provided-buffer
//! ring (4,096 buffers of 4 KiB), each buffer that arrives sent on to the other side (one
//! `writev` in flight per destination, up to 64 buffers in it, the rest queued behind),
//! every submission of a turn made with one `io_uring_enter` that also waits for the next
//! completion; completions run only then (`IORING_SETUP_DEFER_TASKRUN`, single issuer).
//! Accepting is a multishot accept; the backend is dialled with a blocking connect, as in
//! `floor.rs`. A measuring instrument, not a proxy: loopback only.
//!
//! Without io_uring (a kernel that lacks it, or a sandbox that forbids it) it says so and
//! exits 3, so `floor.sh` can report the target as missing instead of measuring nothing.
//!
//!     floor-uring LISTEN_ADDR BACKEND_ADDR      e.g. floor-uring 127.0.0.1:19609 127.0.0.1:19601

use std::collections::VecDeque;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, IntoRawFd, RawFd};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::{cqueue, opcode, types, IoUring};

const BUFS: u16 = 4096;
const BUF_SIZE: usize = 4096;
const GROUP: u16 = 0;
const MAX_IOVS: usize = 64;

/// user_data: what completed (top byte), the side's generation, the side's index.
const ACCEPT: u64 = 1 << 56;
const RECV: u64 = 2 << 56;
const WRITE: u64 = 3 << 56;

fn user_data(kind: u64, generation: u32, index: usize) -> u64 {
    kind | (u64::from(generation & 0x00ff_ffff) << 32) | index as u64
}

/// One side of a forwarded pair (sides 2k and 2k + 1 are a pair).
struct Side {
    fd: RawFd,
    generation: u32,
    /// Buffers waiting for this side: (buffer id, bytes already written, length).
    queued: VecDeque<(u16, usize, usize)>,
    /// How many of `queued` the writev in flight carries (0: none in flight).
    in_flight: usize,
    /// The iovecs of the writev in flight; they must live until it completes.
    iovs: Vec<libc::iovec>,
    /// Its multishot receive is armed.
    receiving: bool,
    /// The pair is ending: shut down, closed once nothing is in flight.
    ending: bool,
}

struct Buffers {
    entries: *mut types::BufRingEntry,
    memory: Vec<u8>,
    tail: u16,
}

impl Buffers {
    fn register(ring: &IoUring) -> std::io::Result<Buffers> {
        let bytes = BUFS as usize * std::mem::size_of::<types::BufRingEntry>();
        // SAFETY: an anonymous mapping (page-aligned, as the buffer ring must be); checked.
        let entries = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_ANONYMOUS | libc::MAP_PRIVATE,
                -1,
                0,
            )
        };
        if entries == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let mut b = Buffers {
            entries: entries.cast(),
            memory: vec![0u8; BUFS as usize * BUF_SIZE],
            tail: 0,
        };
        // SAFETY: `entries` is the mapping above, alive for the process.
        unsafe {
            ring.submitter()
                .register_buf_ring_with_flags(b.entries as u64, BUFS, GROUP, 0)?
        };
        for bid in 0..BUFS {
            b.give_back(bid);
        }
        b.publish();
        Ok(b)
    }

    fn at(&self, bid: u16, offset: usize) -> *const u8 {
        self.memory[bid as usize * BUF_SIZE + offset..].as_ptr()
    }

    /// Puts a buffer back in the ring (seen by the kernel after `publish`).
    fn give_back(&mut self, bid: u16) {
        // SAFETY: the slot is inside the mapping (masked index).
        let e = unsafe { &mut *self.entries.add((self.tail & (BUFS - 1)) as usize) };
        e.set_addr(self.at(bid, 0) as u64);
        e.set_len(BUF_SIZE as u32);
        e.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    fn publish(&self) {
        // SAFETY: the ring's tail field, shared with the kernel, written atomically.
        unsafe {
            AtomicU16::from_ptr(types::BufRingEntry::tail(self.entries) as *mut u16)
                .store(self.tail, Ordering::Release)
        };
    }
}

struct Floor {
    sides: Vec<Option<Side>>,
    free: Vec<usize>,
    next_generation: u32,
    sqes: Vec<io_uring::squeue::Entry>,
    buffers: Buffers,
}

impl Floor {
    fn add_pair(&mut self, client: RawFd, upstream: RawFd) {
        let slot = self.free.pop().unwrap_or_else(|| {
            self.sides.push(None);
            self.sides.push(None);
            self.sides.len() / 2 - 1
        });
        for (i, fd) in [(2 * slot, client), (2 * slot + 1, upstream)] {
            self.next_generation = self.next_generation.wrapping_add(1);
            self.sides[i] = Some(Side {
                fd,
                generation: self.next_generation,
                queued: VecDeque::new(),
                in_flight: 0,
                iovs: Vec::with_capacity(MAX_IOVS),
                receiving: false,
                ending: false,
            });
            self.arm_recv(i);
        }
    }

    fn arm_recv(&mut self, i: usize) {
        let side = self.sides[i].as_mut().expect("a live side");
        side.receiving = true;
        self.sqes.push(
            opcode::RecvMulti::new(types::Fd(side.fd), GROUP)
                .build()
                .user_data(user_data(RECV, side.generation, i)),
        );
    }

    /// A writev of what waits for side `i`, if nothing is in flight there.
    fn write(&mut self, i: usize) {
        let buffers = &self.buffers;
        let side = self.sides[i].as_mut().expect("a live side");
        if side.in_flight > 0 || side.queued.is_empty() || side.ending {
            return;
        }
        side.iovs.clear();
        for &(bid, done, len) in side.queued.iter().take(MAX_IOVS) {
            side.iovs.push(libc::iovec {
                iov_base: buffers.at(bid, done) as *mut _,
                iov_len: len - done,
            });
        }
        side.in_flight = side.iovs.len();
        self.sqes.push(
            opcode::Writev::new(
                types::Fd(side.fd),
                side.iovs.as_ptr().cast(),
                side.iovs.len() as u32,
            )
            .build()
            .user_data(user_data(WRITE, side.generation, i)),
        );
    }

    /// Either side ended: both are shut down (which ends their receives) and closed once
    /// no operation of theirs is in flight.
    fn end_pair(&mut self, i: usize) {
        for j in [i & !1, i | 1] {
            if let Some(side) = self.sides[j].as_mut() {
                if !side.ending {
                    side.ending = true;
                    // SAFETY: plain system call on a descriptor this side owns.
                    unsafe { libc::shutdown(side.fd, libc::SHUT_RDWR) };
                }
            }
        }
        self.reap(i);
    }

    fn reap(&mut self, i: usize) {
        let pair = [i & !1, i | 1];
        let idle = |s: &Option<Side>| s.as_ref().is_none_or(|s| !s.receiving && s.in_flight == 0);
        if !pair.iter().all(|&j| idle(&self.sides[j])) {
            return;
        }
        for j in pair {
            if let Some(side) = self.sides[j].take() {
                for (bid, _, _) in side.queued {
                    self.buffers.give_back(bid);
                }
                // SAFETY: the side owned the descriptor; nothing refers to it any more.
                unsafe { libc::close(side.fd) };
            }
        }
        self.buffers.publish();
        self.free.push(i / 2);
    }

    fn live(&mut self, data: u64) -> Option<usize> {
        let i = (data & 0xffff_ffff) as usize;
        let generation = ((data >> 32) & 0x00ff_ffff) as u32;
        match self.sides.get(i) {
            Some(Some(side)) if side.generation & 0x00ff_ffff == generation => Some(i),
            _ => None,
        }
    }

    fn on_recv(&mut self, data: u64, res: i32, flags: u32) {
        let Some(i) = self.live(data) else {
            return;
        };
        let more = cqueue::more(flags);
        let side = self.sides[i].as_mut().expect("live");
        if !more {
            side.receiving = false;
        }
        if res > 0 {
            let bid = cqueue::buffer_select(flags).expect("a provided buffer");
            if side.ending {
                self.buffers.give_back(bid);
                self.buffers.publish();
            } else {
                let peer = i ^ 1;
                self.sides[peer]
                    .as_mut()
                    .expect("a live peer")
                    .queued
                    .push_back((bid, 0, res as usize));
                self.write(peer);
            }
        } else if res == -libc::ENOBUFS {
            // Every buffer is out: receive again (some come back as writes complete).
        } else {
            // The end of the stream, or an error: the pair ends.
            return self.end_pair(i);
        }
        let side = self.sides[i].as_ref().expect("live");
        if !more && !side.ending {
            self.arm_recv(i);
        } else if side.ending {
            self.reap(i);
        }
    }

    fn on_write(&mut self, data: u64, res: i32) {
        let Some(i) = self.live(data) else {
            return;
        };
        let side = self.sides[i].as_mut().expect("live");
        side.in_flight = 0;
        if res < 0 {
            return self.end_pair(i);
        }
        let mut written = res as usize;
        while written > 0 {
            let head = side.queued.front_mut().expect("bytes in flight");
            let take = written.min(head.2 - head.1);
            head.1 += take;
            written -= take;
            if head.1 == head.2 {
                let (bid, _, _) = side.queued.pop_front().expect("the head");
                self.buffers.give_back(bid);
            }
        }
        self.buffers.publish();
        if side.ending {
            self.reap(i);
        } else {
            self.write(i);
        }
    }
}

fn dial(backend: SocketAddr) -> std::io::Result<RawFd> {
    let stream = TcpStream::connect(backend)?;
    stream.set_nodelay(true)?;
    stream.set_nonblocking(true)?;
    Ok(stream.into_raw_fd())
}

fn run(ring: &mut IoUring, listen: SocketAddr, backend: SocketAddr) -> std::io::Result<()> {
    let listener = TcpListener::bind(listen)?;
    let mut floor = Floor {
        sides: Vec::new(),
        free: Vec::new(),
        next_generation: 0,
        sqes: Vec::with_capacity(1024),
        buffers: Buffers::register(ring)?,
    };
    let accept = opcode::AcceptMulti::new(types::Fd(listener.as_raw_fd()))
        .build()
        .user_data(ACCEPT);
    floor.sqes.push(accept.clone());
    loop {
        {
            let mut sq = ring.submission();
            for sqe in floor.sqes.drain(..) {
                // SAFETY: every buffer an entry points at (iovecs, ring buffers) lives until
                // its completion.
                if unsafe { sq.push(&sqe) }.is_err() {
                    return Err(std::io::Error::other("submission queue full"));
                }
            }
        }
        match ring.submit_and_wait(1) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            Err(e) => return Err(e),
        }
        for c in ring.completion() {
            let (data, res, flags) = (c.user_data(), c.result(), c.flags());
            match data & (0xff << 56) {
                ACCEPT => {
                    if res >= 0 {
                        let client = res;
                        let nodelay: libc::c_int = 1;
                        // SAFETY: plain system calls on the new descriptor.
                        unsafe {
                            libc::setsockopt(
                                client,
                                libc::IPPROTO_TCP,
                                libc::TCP_NODELAY,
                                (&nodelay as *const libc::c_int).cast(),
                                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                            );
                        }
                        match dial(backend) {
                            Ok(upstream) => floor.add_pair(client, upstream),
                            Err(e) => {
                                eprintln!("floor-uring: cannot reach the backend {backend}: {e}");
                                // SAFETY: the accepted descriptor is ours.
                                unsafe { libc::close(client) };
                            }
                        }
                    }
                    if !cqueue::more(flags) {
                        floor.sqes.push(accept.clone());
                    }
                }
                RECV => floor.on_recv(data, res, flags),
                WRITE => floor.on_write(data, res),
                _ => {}
            }
        }
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [listen, backend] = args.as_slice() else {
        eprintln!("usage: floor-uring LISTEN_ADDR BACKEND_ADDR (loopback addresses)");
        return ExitCode::from(2);
    };
    let (Ok(listen), Ok(backend)) = (listen.parse::<SocketAddr>(), backend.parse::<SocketAddr>())
    else {
        eprintln!("floor-uring: LISTEN_ADDR and BACKEND_ADDR must be IP:PORT");
        return ExitCode::from(2);
    };
    if !listen.ip().is_loopback() || !backend.ip().is_loopback() {
        eprintln!("floor-uring: only loopback addresses are accepted ({listen}, {backend})");
        return ExitCode::from(2);
    }
    let mut ring = match IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .build(4096)
    {
        Ok(ring) => ring,
        Err(e) => {
            eprintln!("floor-uring: no io_uring here ({e}); nothing to measure");
            return ExitCode::from(3);
        }
    };
    match run(&mut ring, listen, backend) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("floor-uring: {e}");
            ExitCode::FAILURE
        }
    }
}
