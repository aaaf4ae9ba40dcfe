//! The relay machine (src/proxy/relay/machine.rs) driven by arbitrary events: reads of
//! arbitrary bytes from either side, ends, the drain, sockets that take a few bytes at a
//! time, timeouts.
//!
//! Input: a config byte (bit 0: idle timeout; bits 1-2: extensions), then events of one
//! byte each (low 3 bits: the event; high 5 bits: a length), reads taking that many of the
//! following bytes.
//! Checks: nothing panics; the machine never asks to write to a side after shutting it;
//! once it winds down it has a deadline, and firing deadlines ends it; what a side
//! received that ends with a Close of ours is whole frames (our Close is never inside
//! another frame).

use std::time::{Duration, Instant};

use wsgate::proxy::frame::Extensions;
use wsgate::proxy::relay::{Output, Relay, RelayConfig, Side};

struct Sim {
    relay: Relay,
    now: Instant,
    got: [Vec<u8>; 2],
    shut: [bool; 2],
    room: [usize; 2],
}

impl Sim {
    fn write(&mut self, to: Side, bytes: &[u8]) -> usize {
        assert!(
            !self.shut[to as usize],
            "write to {to:?} after its shutdown"
        );
        let n = bytes.len().min(self.room[to as usize]);
        self.room[to as usize] -= n;
        self.got[to as usize].extend_from_slice(&bytes[..n]);
        n
    }

    fn owed(&mut self, to: Side) {
        while let Some(out) = self.relay.poll_output(to) {
            match out {
                Output::Write(bytes) => {
                    let bytes = bytes.to_vec();
                    let n = self.write(to, &bytes);
                    if n == 0 {
                        return;
                    }
                    self.relay.handle_sent(to, n);
                }
                Output::Flush => self.relay.handle_flushed(to),
                Output::Shutdown => {
                    self.shut[to as usize] = true;
                    self.relay.handle_shutdown(to);
                }
            }
        }
    }

    fn settle(&mut self) {
        self.owed(Side::Client);
        self.owed(Side::Backend);
    }

    fn read(&mut self, from: Side, bytes: &[u8]) {
        if !self.relay.wants_read(from) {
            return;
        }
        let fwd = self.relay.handle_read(from, bytes);
        let to = fwd.to();
        let mut sent = 0;
        if !self.relay.has_backlog(to) {
            let parts = self.relay.parts(&fwd).map(<[u8]>::to_vec);
            for part in &parts {
                let n = self.write(to, part);
                sent += n;
                if n < part.len() {
                    break;
                }
            }
        }
        self.relay.handle_forwarded(fwd, sent);
        self.settle();
    }

    fn fire(&mut self) -> bool {
        let now = self.now;
        let Some(at) = self.relay.poll_deadline(|| now) else {
            return false;
        };
        self.now = self.now.max(at);
        self.relay.handle_timeout(self.now);
        self.settle();
        true
    }
}

/// Whole frames only: (opcode, unmasked payload) of each; None if `bytes` ends inside one.
fn whole_frames(mut bytes: &[u8]) -> Option<Vec<(u8, Vec<u8>)>> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        if bytes.len() < 2 {
            return None;
        }
        let masked = bytes[1] & 0x80 != 0;
        let (len, mut at) = match bytes[1] & 0x7F {
            126 if bytes.len() >= 4 => (usize::from(u16::from_be_bytes([bytes[2], bytes[3]])), 4),
            127 if bytes.len() >= 10 => (
                u64::from_be_bytes(bytes[2..10].try_into().ok()?) as usize,
                10,
            ),
            126 | 127 => return None,
            n => (usize::from(n), 2),
        };
        let key = if masked {
            let k: [u8; 4] = bytes.get(at..at + 4)?.try_into().ok()?;
            at += 4;
            Some(k)
        } else {
            None
        };
        let payload = bytes.get(at..at.checked_add(len)?)?;
        let payload = payload
            .iter()
            .enumerate()
            .map(|(i, b)| key.map_or(*b, |k| b ^ k[i % 4]))
            .collect();
        out.push((bytes[0] & 0x0F, payload));
        bytes = &bytes[at + len..];
    }
    Some(out)
}

/// One input: panics when a property does not hold.
pub fn check(data: &[u8]) {
    let Some((&config, mut rest)) = data.split_first() else {
        return;
    };
    let config = RelayConfig {
        idle: (config & 1 != 0).then_some(Duration::from_secs(3)),
        extensions: match (config >> 1) & 3 {
            0 => Extensions::None,
            1 => Extensions::PerMessageDeflate,
            _ => Extensions::Unknown,
        },
        ..RelayConfig::default()
    };
    let now = Instant::now();
    let mut sim = Sim {
        relay: Relay::new(config, false, now),
        now,
        got: [Vec::new(), Vec::new()],
        shut: [false; 2],
        room: [usize::MAX; 2],
    };
    while let Some((&event, tail)) = rest.split_first() {
        rest = tail;
        if sim.relay.is_done() {
            break;
        }
        let len = usize::from(event >> 3);
        match event & 7 {
            0 | 1 => {
                let side = if event & 7 == 0 {
                    Side::Client
                } else {
                    Side::Backend
                };
                let (bytes, tail) = rest.split_at(len.min(rest.len()));
                rest = tail;
                sim.read(side, bytes);
            }
            2 => {
                sim.relay.handle_eof(Side::Client);
                sim.settle();
            }
            3 => {
                sim.relay.handle_eof(Side::Backend);
                sim.settle();
            }
            4 => {
                sim.relay.handle_drain();
                sim.settle();
            }
            5 => {
                // The sockets take only `len` bytes each until the next refill.
                sim.room = [len; 2];
            }
            6 => {
                sim.room = [usize::MAX; 2];
                sim.settle();
            }
            _ => {
                sim.fire();
            }
        }
    }
    sim.room = [usize::MAX; 2];
    sim.settle();
    let stats = sim.relay.stats();
    for (side, injected) in [
        (Side::Client, stats.injected_to_client),
        (Side::Backend, stats.injected_to_upstream),
    ] {
        if let Some(code) = injected {
            let frames = whole_frames(&sim.got[side as usize])
                .unwrap_or_else(|| panic!("{side:?} got a partial frame before our Close"));
            let (opcode, payload) = frames.last().expect("our Close");
            assert_eq!(*opcode, 0x8, "our Close comes last");
            assert_eq!(payload[..2], code.to_be_bytes());
        }
    }
    // Ending: both sides end; deadlines (linger) then finish the relay.
    sim.relay.handle_eof(Side::Client);
    sim.relay.handle_eof(Side::Backend);
    sim.settle();
    for _ in 0..4 {
        if sim.relay.is_done() {
            return;
        }
        assert!(sim.fire(), "a relay that winds down has a deadline");
    }
    assert!(sim.relay.is_done(), "firing deadlines ends the relay");
}
