//! Host patterns of routes (`spec.upstreamHost`): the one parser validation and matching
//! share, so a pattern the model accepts is a pattern the table can match.
//!
//! A route host `chat.example.com` matches that name on any port; `chat.example.com:8080`
//! only that port; `*.example.com` any name ending in `.example.com` with at least one label
//! before it. Names compare ASCII-case-insensitively (patterns are lower-cased here) and a
//! trailing dot is ignored. Labels are those of DNS host names (RFC 1123): letters, digits
//! and inner hyphens, at most 63 characters; an internationalised name is written in its
//! ASCII (punycode) form, `xn--bcher-kva.example`, as it arrives in a `Host` header. An IP
//! literal is allowed as a name (`10.0.0.1`, `[::1]`), not under a wildcard.

use std::net::Ipv6Addr;
use std::num::ParseIntError;

/// Longest DNS name (RFC 1035); longer patterns can never match a real `Host`.
const MAX_NAME: usize = 253;
/// Longest DNS label (RFC 1035).
const MAX_LABEL: usize = 63;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum HostPattern {
    /// Lower-cased name without trailing dot.
    Exact { name: String, port: Option<u16> },
    /// Lower-cased suffix including its leading dot: `.example.com`.
    Wildcard { suffix: String, port: Option<u16> },
}

/// Why text is not a host pattern. Each variant carries the pattern as written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostPatternError {
    #[error("`{pattern}` is empty: give a name like `chat.example.com` or `*.example.com`")]
    Empty { pattern: String },
    #[error("`{pattern}`: `{port}` is not a port (1-65535)")]
    Port {
        pattern: String,
        port: String,
        #[source]
        source: ParseIntError,
    },
    #[error("`{pattern}`: port 0 is not a port (1-65535)")]
    PortZero { pattern: String },
    #[error("`{pattern}` is longer than {MAX_NAME} characters")]
    TooLong { pattern: String },
    #[error("`{pattern}` has an empty label (`..`, or a dot at the start)")]
    EmptyLabel { pattern: String },
    #[error("`{pattern}`: `*` may only stand alone as the first label, followed by a name: `*.example.com`")]
    Wildcard { pattern: String },
    #[error("`{pattern}`: label `{label}` is longer than {MAX_LABEL} characters")]
    LabelTooLong { pattern: String, label: String },
    #[error("`{pattern}`: label `{label}` starts or ends with `-`")]
    Hyphen { pattern: String, label: String },
    #[error("`{pattern}`: `{character}` is not allowed in a host name (letters, digits, `-`, `.`); write an internationalised name in its punycode form (`xn--…`)")]
    Character { pattern: String, character: char },
    #[error("`{pattern}`: `{literal}` is not an IPv6 address")]
    Ipv6 {
        pattern: String,
        literal: String,
        #[source]
        source: std::net::AddrParseError,
    },
}

impl HostPattern {
    pub fn parse(pattern: &str) -> Result<Self, HostPatternError> {
        let owned = || pattern.to_string();
        let lowered = pattern.trim().to_ascii_lowercase();
        let (name, port) = split_port(&lowered);
        let port = match port {
            None => None,
            Some(p) => match p.parse::<u16>() {
                Ok(0) => return Err(HostPatternError::PortZero { pattern: owned() }),
                Ok(p) => Some(p),
                Err(source) => {
                    return Err(HostPatternError::Port {
                        pattern: owned(),
                        port: p.to_string(),
                        source,
                    })
                }
            },
        };
        let name = name.strip_suffix('.').unwrap_or(name);
        if name.is_empty() {
            return Err(HostPatternError::Empty { pattern: owned() });
        }
        if name.len() > MAX_NAME {
            return Err(HostPatternError::TooLong { pattern: owned() });
        }
        if let Some(literal) = name.strip_prefix('[') {
            let literal = literal.strip_suffix(']').unwrap_or(literal);
            return match literal.parse::<Ipv6Addr>() {
                Ok(_) => Ok(HostPattern::Exact {
                    name: name.to_string(),
                    port,
                }),
                Err(source) => Err(HostPatternError::Ipv6 {
                    pattern: owned(),
                    literal: literal.to_string(),
                    source,
                }),
            };
        }
        let (wildcard, rest) = match name.strip_prefix('*') {
            Some(rest) => match rest.strip_prefix('.') {
                Some(rest) if !rest.is_empty() => (true, rest),
                // `*`, `*.` or `*x.com`: the star is not a whole first label.
                _ => return Err(HostPatternError::Wildcard { pattern: owned() }),
            },
            None => (false, name),
        };
        for label in rest.split('.') {
            check_label(pattern, label)?;
        }
        Ok(if wildcard {
            HostPattern::Wildcard {
                suffix: format!(".{rest}"),
                port,
            }
        } else {
            HostPattern::Exact {
                name: rest.to_string(),
                port,
            }
        })
    }
}

/// One lower-cased label of a name (RFC 1123: letters, digits, inner hyphens).
fn check_label(pattern: &str, label: &str) -> Result<(), HostPatternError> {
    if label.is_empty() {
        return Err(HostPatternError::EmptyLabel {
            pattern: pattern.to_string(),
        });
    }
    if let Some(character) = label
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-'))
    {
        return Err(if character == '*' {
            HostPatternError::Wildcard {
                pattern: pattern.to_string(),
            }
        } else {
            HostPatternError::Character {
                pattern: pattern.to_string(),
                character,
            }
        });
    }
    if label.len() > MAX_LABEL {
        return Err(HostPatternError::LabelTooLong {
            pattern: pattern.to_string(),
            label: label.to_string(),
        });
    }
    if label.starts_with('-') || label.ends_with('-') {
        return Err(HostPatternError::Hyphen {
            pattern: pattern.to_string(),
            label: label.to_string(),
        });
    }
    Ok(())
}

/// `name:port` → (`name`, `port`); IPv6 literals keep their brackets (`[::1]:80`). Also
/// splits a request's `Host` header.
pub fn split_port(host: &str) -> (&str, Option<&str>) {
    match host.rsplit_once(':') {
        Some((name, port))
            if !port.is_empty()
                && port.bytes().all(|b| b.is_ascii_digit())
                && (!name.contains(':') || name.ends_with(']')) =>
        {
            (name, Some(port))
        }
        _ => (host, None),
    }
}
