//! The PROXY protocol (HAProxy's, versions 1 and 2), what cloud network load balancers put
//! in front of each TCP connection to say whom it is from. With `--proxy-protocol` every
//! connection on the traffic listeners must start with one, before TLS or HTTP; its
//! source address is then the connection's peer (IP lists, logs, `X-Forwarded-For`). A
//! `LOCAL` (v2) or `UNKNOWN` (v1) header, what a balancer's health check sends, keeps the
//! TCP peer. A connection without a valid header is closed without an answer.
//!
//! The header is read without reading past it (the bytes behind it are the client's TLS
//! or HTTP): the socket is peeked and only the bytes that belong to the header are
//! consumed, at least one per round, so a slow sender costs no busy loop; at most
//! `MAX_HEADER_BYTES`, within `HEADER_TIMEOUT`. The header itself is parsed by the `ppp`
//! crate. Imports no sibling.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// Longest header accepted: v1's limit is 107 bytes; v2 carries TLVs (a balancer's
/// endpoint id, a TLS note), a few hundred bytes in practice.
pub const MAX_HEADER_BYTES: usize = 4096;
/// The header must arrive within this time after the connection is accepted.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

const V1_PREFIX: &[u8] = b"PROXY ";
const V1_MAX: usize = 107;
const V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";
const V2_FIXED: usize = 16;

/// Why a connection's PROXY header was refused (the connection is closed).
#[derive(Debug, thiserror::Error)]
pub enum ProxyHeaderError {
    #[error("the connection does not start with a PROXY protocol header")]
    Missing,
    #[error("PROXY protocol header longer than {MAX_HEADER_BYTES} bytes")]
    TooLong,
    #[error("malformed PROXY protocol header: {0}")]
    Malformed(String),
    #[error("the PROXY protocol header did not arrive within {HEADER_TIMEOUT:?}")]
    Timeout,
    #[error("the client closed the connection inside the PROXY protocol header")]
    Closed,
    #[error("reading the PROXY protocol header")]
    Io(#[from] std::io::Error),
}

/// Reads the PROXY header at the start of `stream`, leaving everything behind it unread.
/// `Some(source)` for a proxied connection, `None` for `LOCAL`/`UNKNOWN`.
pub async fn read_header(stream: &mut TcpStream) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    tokio::time::timeout(HEADER_TIMEOUT, read(stream))
        .await
        .map_err(|_| ProxyHeaderError::Timeout)?
}

async fn read(stream: &mut TcpStream) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    let mut header = Vec::with_capacity(V2_FIXED + 64);
    let mut peeked = [0u8; 512];
    loop {
        let n = stream.peek(&mut peeked).await?;
        if n == 0 {
            return Err(ProxyHeaderError::Closed);
        }
        let take = header_bytes_in(&header, &peeked[..n])?;
        let start = header.len();
        header.resize(start + take, 0);
        stream.read_exact(&mut header[start..]).await?;
        if let Some(total) = header_length(&header)? {
            if header.len() == total {
                return parse(&header);
            }
        }
    }
}

/// How many of the `next` bytes (after `header`, what was consumed so far) belong to the
/// header: at least one, up to its end when it is known.
fn header_bytes_in(header: &[u8], next: &[u8]) -> Result<usize, ProxyHeaderError> {
    let mut combined = header.to_vec();
    combined.extend_from_slice(next);
    let end = match header_length(&combined)? {
        Some(total) => total,
        None => match combined.first() {
            // v1 ends with its line: before it, every byte is the header's.
            Some(b'P') => match find_crlf(&combined) {
                Some(end) => end,
                None => combined.len(),
            },
            // v2 before its length is known: the fixed part.
            _ => V2_FIXED.min(combined.len()),
        },
    };
    if end > MAX_HEADER_BYTES {
        return Err(ProxyHeaderError::TooLong);
    }
    Ok(end.saturating_sub(header.len()).clamp(1, next.len()))
}

/// The header's whole length once `bytes` (its start) shows it; `None` while it does not;
/// an error as soon as the bytes cannot start a header.
fn header_length(bytes: &[u8]) -> Result<Option<usize>, ProxyHeaderError> {
    let starts = |prefix: &[u8]| {
        let n = prefix.len().min(bytes.len());
        bytes[..n] == prefix[..n]
    };
    if starts(V1_PREFIX) {
        if let Some(end) = find_crlf(bytes) {
            return Ok(Some(end));
        }
        if bytes.len() >= V1_MAX {
            return Err(ProxyHeaderError::TooLong);
        }
        return Ok(None);
    }
    if starts(V2_SIGNATURE) {
        if bytes.len() < V2_FIXED {
            return Ok(None);
        }
        let len = usize::from(u16::from_be_bytes([bytes[14], bytes[15]]));
        return Ok(Some(V2_FIXED + len));
    }
    Err(ProxyHeaderError::Missing)
}

/// The position after the first `\r\n`.
fn find_crlf(bytes: &[u8]) -> Option<usize> {
    bytes.windows(2).position(|w| w == b"\r\n").map(|i| i + 2)
}

/// A whole header → the connection's source, `None` for `LOCAL`/`UNKNOWN`.
pub fn parse(header: &[u8]) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    use ppp::{v1, v2, HeaderResult};
    let malformed = |e: &dyn std::fmt::Display| ProxyHeaderError::Malformed(e.to_string());
    match HeaderResult::parse(header) {
        HeaderResult::V1(Ok(h)) => {
            if h.header.len() != header.len() {
                return Err(ProxyHeaderError::Malformed("bytes after the header".into()));
            }
            Ok(match h.addresses {
                v1::Addresses::Tcp4(a) => {
                    Some(SocketAddr::new(a.source_address.into(), a.source_port))
                }
                v1::Addresses::Tcp6(a) => {
                    Some(SocketAddr::new(a.source_address.into(), a.source_port))
                }
                v1::Addresses::Unknown => None,
            })
        }
        HeaderResult::V2(Ok(h)) => {
            if h.len() != header.len() {
                return Err(ProxyHeaderError::Malformed("bytes after the header".into()));
            }
            if h.command == v2::Command::Local {
                return Ok(None);
            }
            match h.addresses {
                v2::Addresses::IPv4(a) => Ok(Some(SocketAddr::new(
                    a.source_address.into(),
                    a.source_port,
                ))),
                v2::Addresses::IPv6(a) => Ok(Some(SocketAddr::new(
                    a.source_address.into(),
                    a.source_port,
                ))),
                // UNSPEC or a UNIX socket: no address to take; the TCP peer stays.
                v2::Addresses::Unspecified | v2::Addresses::Unix(_) => Ok(None),
            }
        }
        HeaderResult::V1(Err(e)) => Err(malformed(&e)),
        HeaderResult::V2(Err(e)) => Err(malformed(&e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    fn v2(command: u8, family: u8, addresses: &[u8], tlvs: &[u8]) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.push(0x20 | command);
        h.push(family);
        let len = (addresses.len() + tlvs.len()) as u16;
        h.extend_from_slice(&len.to_be_bytes());
        h.extend_from_slice(addresses);
        h.extend_from_slice(tlvs);
        h
    }

    fn v2_tcp4(src: [u8; 4], port: u16) -> Vec<u8> {
        let mut a = src.to_vec();
        a.extend_from_slice(&[10, 0, 0, 1]);
        a.extend_from_slice(&port.to_be_bytes());
        a.extend_from_slice(&443u16.to_be_bytes());
        v2(1, 0x11, &a, &[0x04, 0x00, 0x02, b'h', b'i'])
    }

    /// Both versions, both families, and the health-check forms that name no client.
    #[test]
    fn headers_give_the_source_address() {
        let cases: Vec<(Vec<u8>, Option<&str>)> = vec![
            (
                b"PROXY TCP4 203.0.113.7 10.0.0.1 4711 443\r\n".to_vec(),
                Some("203.0.113.7:4711"),
            ),
            (
                b"PROXY TCP6 2001:db8::7 2001:db8::1 4711 443\r\n".to_vec(),
                Some("[2001:db8::7]:4711"),
            ),
            (b"PROXY UNKNOWN\r\n".to_vec(), None),
            (v2_tcp4([198, 51, 100, 9], 5000), Some("198.51.100.9:5000")),
            (v2(0, 0x00, &[], &[]), None),
        ];
        for (header, want) in cases {
            let got = parse(&header).unwrap();
            assert_eq!(got, want.map(|w| w.parse().unwrap()), "{header:?}");
        }
    }

    /// Anything else is refused: no header, a broken one, one too long.
    #[test]
    fn bad_headers_are_refused() {
        assert!(matches!(
            header_length(b"GET / HTTP/1.1\r\n"),
            Err(ProxyHeaderError::Missing)
        ));
        assert!(matches!(
            header_length(b"\x16\x03\x01"),
            Err(ProxyHeaderError::Missing)
        ));
        assert!(matches!(header_length(b"PROX"), Ok(None)));
        let long = [b"PROXY TCP4 ".as_slice(), &[b'1'; 120]].concat();
        assert!(matches!(
            header_length(&long),
            Err(ProxyHeaderError::TooLong)
        ));
        for bad in [
            b"PROXY TCP4 203.0.113.7 10.0.0.1 4711\r\n".as_slice(),
            b"PROXY TCP4 nobody 10.0.0.1 4711 443\r\n",
            b"PROXY TCP9 1.2.3.4 1.2.3.4 1 2\r\n",
        ] {
            assert!(
                matches!(parse(bad), Err(ProxyHeaderError::Malformed(_))),
                "{bad:?}"
            );
        }
        let mut bad_version = v2_tcp4([1, 2, 3, 4], 1);
        bad_version[12] = 0x31;
        assert!(parse(&bad_version).is_err());
        let huge = v2(1, 0x11, &[0; 12], &vec![0; 5000]);
        assert!(matches!(
            header_bytes_in(&[], &huge[..16]),
            Err(ProxyHeaderError::TooLong)
        ));
    }

    /// On a real socket, the header is consumed however it is cut into segments, and the
    /// bytes behind it are left for whoever reads next.
    #[tokio::test]
    async fn the_header_is_read_up_to_its_end_and_no_further() {
        let v1 = b"PROXY TCP4 203.0.113.7 10.0.0.1 4711 443\r\n".to_vec();
        let v2 = v2_tcp4([198, 51, 100, 9], 5000);
        for (header, want) in [(v1, "203.0.113.7:4711"), (v2, "198.51.100.9:5000")] {
            for cut in [1, 5, 15, 16, 17, header.len() - 1, header.len()] {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                let mut client = TcpStream::connect(listener.local_addr().unwrap())
                    .await
                    .unwrap();
                let (mut server, _) = listener.accept().await.unwrap();
                let (first, rest) = header.split_at(cut);
                let sender = {
                    let (first, rest) = (first.to_vec(), rest.to_vec());
                    tokio::spawn(async move {
                        client.write_all(&first).await.unwrap();
                        client.flush().await.unwrap();
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        client.write_all(&rest).await.unwrap();
                        client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
                        client
                    })
                };
                let got = read_header(&mut server).await.unwrap();
                assert_eq!(got, Some(want.parse().unwrap()), "cut at {cut}");
                let _client = sender.await.unwrap();
                let mut after = [0u8; 16];
                server.read_exact(&mut after).await.unwrap();
                assert_eq!(&after, b"GET / HTTP/1.1\r\n", "cut at {cut}");
            }
        }
    }
}
