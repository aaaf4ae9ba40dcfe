//! One side of a relay on a relay thread: its socket, and for a TLS side the rustls
//! session taken over from tokio-rustls, driven by hand — `read_tls` /
//! `process_new_packets` / the reader for what arrives, the writer / `write_tls` for what
//! leaves, close_notify before the TCP half-close.
//!
//! Plaintext is passed on straight out of rustls' buffer (no copy into the thread's read
//! buffer), and what the relay writes is encrypted into rustls' send buffer only while
//! that buffer is empty: a TLS side whose peer reads slowly holds at most one buffer limit
//! of records (rustls' default, 64 KiB), and the rest waits in the relay machine's backlog
//! like it does for a plain socket, which stops reading the other side.

use std::io::{self, BufRead, Read, Write};
use std::net::Shutdown;

use mio::net::TcpStream as MioTcp;
use socket2::SockRef;

use super::super::Sink;

pub(in crate::proxy::relay) struct Endpoint {
    pub(super) socket: MioTcp,
    /// The TLS session of a TLS side (boxed: rustls' state is large, and plain sides
    /// carry none).
    tls: Option<Box<rustls::Connection>>,
    /// close_notify is queued (it goes out before the TCP half-close).
    close_notify_queued: bool,
}

impl Endpoint {
    pub(super) fn plain(socket: MioTcp) -> Self {
        Endpoint {
            socket,
            tls: None,
            close_notify_queued: false,
        }
    }

    pub(super) fn tls(socket: MioTcp, tls: rustls::Connection) -> Self {
        Endpoint {
            socket,
            tls: Some(Box::new(tls)),
            close_notify_queued: false,
        }
    }

    /// The socket of a plain side; `None` for a TLS side.
    pub(super) fn into_plain(self) -> Option<MioTcp> {
        self.tls.is_none().then_some(self.socket)
    }

    /// Reads once and hands what came to `pass`: plaintext, `Ok(&[])` for the end of the
    /// stream (a FIN, or a close_notify), an error (`WouldBlock`: nothing yet). Returns
    /// whether more may be waiting without a new readiness event.
    ///
    /// Inlined whole into the relay thread's step, with `pass`: a plain side's read is the
    /// hot path (out of line, this and the checks around it took a plain 64 B message from
    /// 373 to 516 instructions; bench/RESULTS.md, "What it costs plain ws"); a TLS side's
    /// goes through `read_tls_with`.
    #[inline(always)]
    pub(super) fn read_with(
        &mut self,
        buf: &mut [u8],
        pass: impl FnOnce(io::Result<&[u8]>),
    ) -> bool {
        match self.tls.as_deref_mut() {
            None => {
                let read = (&self.socket).read(buf);
                let more = match &read {
                    // A short read drained the socket.
                    Ok(n) => *n == buf.len(),
                    Err(e) => e.kind() == io::ErrorKind::Interrupted,
                };
                pass(read.map(|n| &buf[..n]));
                more
            }
            Some(tls) => read_tls_with(tls, &self.socket, pass),
        }
    }

    /// The relay ended: a TLS side that did not get its half-close (a relay ends once both
    /// Closes passed) still gets close_notify, so that a peer reading on sees a clean end
    /// rather than a truncation. One try, no wait: the socket closes right after.
    pub(super) fn finish(&mut self) {
        let _ = self.close_notify();
    }

    /// Queues close_notify once (a TLS side) and writes what rustls holds: `Ok(true)` once
    /// it all went, and at once for a plain side.
    fn close_notify(&mut self) -> io::Result<bool> {
        let Some(tls) = self.tls.as_deref_mut() else {
            return Ok(true);
        };
        if !self.close_notify_queued {
            tls.send_close_notify();
            self.close_notify_queued = true;
        }
        flush(tls, &self.socket)
    }

    /// Whether rustls holds records that have not reached the socket yet.
    pub(super) fn tls_pending(&self) -> bool {
        self.tls.as_deref().is_some_and(|tls| tls.wants_write())
    }

    pub(super) fn is_tls(&self) -> bool {
        self.tls.is_some()
    }
}

/// The TLS half of [`Endpoint::read_with`]: plaintext rustls decrypted earlier goes first;
/// only without any is the socket read (one `read_tls`, at most what rustls asks for).
#[inline(never)]
fn read_tls_with(
    tls: &mut rustls::Connection,
    socket: &MioTcp,
    pass: impl FnOnce(io::Result<&[u8]>),
) -> bool {
    match first_chunk(tls) {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
        Ok(chunk) => {
            let n = chunk.len();
            pass(Ok(chunk));
            tls.reader().consume(n);
            // More plaintext may wait, or more records in the socket.
            return n > 0;
        }
        Err(e) => {
            pass(Err(e));
            return false;
        }
    }
    let mut source = Source {
        socket,
        drained: false,
    };
    match tls.read_tls(&mut source) {
        Ok(_) => {
            if let Err(e) = tls.process_new_packets() {
                // A record that does not decrypt or parse: rustls queued the alert that
                // says why; it goes out (as far as the socket takes it now) and this side
                // is read no more.
                let _ = tls.write_tls(&mut &*socket);
                pass(Err(io::Error::new(io::ErrorKind::InvalidData, e)));
                return false;
            }
            // What the records asked for (a KeyUpdate's answer) goes out now as far as the
            // socket takes it; the rest leaves ahead of the next write to this side.
            if tls.wants_write() {
                let _ = tls.write_tls(&mut &*socket);
            }
        }
        Err(e) => {
            let again = e.kind() == io::ErrorKind::Interrupted;
            pass(Err(e));
            return again;
        }
    }
    match first_chunk(tls) {
        Ok(chunk) => {
            let n = chunk.len();
            pass(Ok(chunk));
            tls.reader().consume(n);
            n > 0 && (!source.drained || has_plaintext(tls))
        }
        // Part of a record so far: more to read unless the socket said it had no more.
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
            pass(Err(e));
            !source.drained
        }
        Err(e) => {
            pass(Err(e));
            false
        }
    }
}

/// The first piece of decrypted plaintext, borrowed from rustls' buffer.
fn first_chunk(tls: &mut rustls::Connection) -> io::Result<&[u8]> {
    tls.reader().into_first_chunk()
}

fn has_plaintext(tls: &mut rustls::Connection) -> bool {
    matches!(first_chunk(tls), Ok(chunk) if !chunk.is_empty())
}

/// The socket as rustls reads it, noting a read that found it drained (short, or none).
struct Source<'a> {
    socket: &'a MioTcp,
    drained: bool,
}

impl Read for Source<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let read = (&*self.socket).read(buf);
        self.drained = match &read {
            Ok(n) => *n < buf.len(),
            Err(e) => e.kind() == io::ErrorKind::WouldBlock,
        };
        read
    }
}

impl Sink for Endpoint {
    #[inline(always)]
    fn try_write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        match self.tls.as_deref_mut() {
            None => (&self.socket).write(bytes),
            Some(tls) => write_tls(tls, &self.socket, bytes),
        }
    }

    fn try_flush(&mut self) -> io::Result<bool> {
        match self.tls.as_deref_mut() {
            None => Ok(true),
            Some(tls) => flush(tls, &self.socket),
        }
    }

    fn try_shutdown(&mut self) -> io::Result<bool> {
        if !self.close_notify()? {
            return Ok(false);
        }
        SockRef::from(&self.socket)
            .shutdown(Shutdown::Write)
            .map(|()| true)
    }
}

/// `Sink::try_write` for a TLS side.
#[inline(never)]
fn write_tls(tls: &mut rustls::Connection, socket: &MioTcp, bytes: &[u8]) -> io::Result<usize> {
    // Records still waiting go first; while any remain, take nothing more (the bytes wait
    // in the relay's backlog, which stops reading their source).
    if tls.wants_write() && !flush(tls, socket)? {
        return Err(io::ErrorKind::WouldBlock.into());
    }
    let n = tls.writer().write(bytes)?;
    if n == 0 {
        return Err(io::ErrorKind::WouldBlock.into());
    }
    // Accepted: the records go out now as far as the socket takes them; the rest with the
    // flush the machine asks for next.
    flush(tls, socket).map(|_| n)
}

/// Writes rustls' waiting records to the socket until none wait (`true`) or the socket
/// is full (`false`).
fn flush(tls: &mut rustls::Connection, socket: &MioTcp) -> io::Result<bool> {
    while tls.wants_write() {
        match tls.write_tls(&mut &*socket) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}
