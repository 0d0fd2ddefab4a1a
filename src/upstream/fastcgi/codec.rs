//! The FastCGI record format (FastCGI 1.0 specification: 8-byte headers,
//! name-value pairs with 1- or 4-byte lengths, padding to 8 bytes).

use bytes::{Buf, Bytes, BytesMut};

/// Record types (FastCGI 1.0 §8).
pub mod kind {
    pub const BEGIN_REQUEST: u8 = 1;
    pub const ABORT_REQUEST: u8 = 2;
    pub const END_REQUEST: u8 = 3;
    pub const PARAMS: u8 = 4;
    pub const STDIN: u8 = 5;
    pub const STDOUT: u8 = 6;
    pub const STDERR: u8 = 7;
    pub const GET_VALUES: u8 = 9;
    pub const GET_VALUES_RESULT: u8 = 10;
}

pub(super) const VERSION_1: u8 = 1;
pub(super) const ROLE_RESPONDER: u16 = 1;
pub(super) const FLAG_KEEP_CONN: u8 = 1;
/// One request per connection at a time, so always id 1.
pub(super) const REQUEST_ID: u16 = 1;
pub(super) const HEADER_LEN: usize = 8;
pub(super) const MAX_CONTENT: usize = 65535;

/// `protocolStatus` of END_REQUEST.
pub(super) const REQUEST_COMPLETE: u8 = 0;
pub(super) const CANT_MPX_CONN: u8 = 1;
pub(super) const OVERLOADED: u8 = 2;

/// A malformed record stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CodecError {
    /// The version byte is not 1: usually not FastCGI at all. Carries the
    /// first bytes seen, to recognise HTTP or TLS.
    NotFastCgi([u8; 8]),
    /// A record for a request id baton never sent.
    WrongRequestId(u16),
    /// A name-value pair whose lengths run past its record.
    BadPair,
}

/// Appends one record (with padding to a multiple of 8 bytes).
pub fn push_record(out: &mut Vec<u8>, kind: u8, content: &[u8]) {
    debug_assert!(content.len() <= MAX_CONTENT);
    let pad = (8 - content.len() % 8) % 8;
    let len = content.len() as u16;
    out.extend_from_slice(&[
        VERSION_1,
        kind,
        (REQUEST_ID >> 8) as u8,
        REQUEST_ID as u8,
        (len >> 8) as u8,
        len as u8,
        pad as u8,
        0,
    ]);
    out.extend_from_slice(content);
    out.extend_from_slice(&[0u8; 8][..pad]);
}

/// Appends a management record (request id 0), e.g. FCGI_GET_VALUES.
pub fn push_management(out: &mut Vec<u8>, kind: u8, content: &[u8]) {
    push_record(out, kind, content);
    // push_record writes request id 1; management records carry 0.
    let at = out.len() - content.len() - (8 - content.len() % 8) % 8 - HEADER_LEN;
    out[at + 2] = 0;
    out[at + 3] = 0;
}

/// Appends a stream's data as records of at most 65535 bytes (no
/// terminator: an empty record ends a stream, see [`push_record`]).
pub fn push_stream(out: &mut Vec<u8>, kind: u8, data: &[u8]) {
    for chunk in data.chunks(MAX_CONTENT) {
        push_record(out, kind, chunk);
    }
}

/// Appends BEGIN_REQUEST for a responder that keeps the connection.
pub fn push_begin(out: &mut Vec<u8>, keep_conn: bool) {
    let flags = if keep_conn { FLAG_KEEP_CONN } else { 0 };
    push_record(
        out,
        kind::BEGIN_REQUEST,
        &[
            (ROLE_RESPONDER >> 8) as u8,
            ROLE_RESPONDER as u8,
            flags,
            0,
            0,
            0,
            0,
            0,
        ],
    );
}

fn push_len(out: &mut Vec<u8>, n: usize) {
    if n < 128 {
        out.push(n as u8);
    } else {
        out.extend_from_slice(&((n as u32) | 0x8000_0000).to_be_bytes());
    }
}

/// Appends one name-value pair (§3.4).
pub fn push_pair(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    push_len(out, name.len());
    push_len(out, value.len());
    out.extend_from_slice(name);
    out.extend_from_slice(value);
}

/// Decodes name-value pairs (GET_VALUES_RESULT, and the tests' check of
/// what baton sends).
/// Name-value pairs, borrowed from the record content.
pub type Pairs<'a> = Vec<(&'a [u8], &'a [u8])>;

pub fn parse_pairs(mut b: &[u8]) -> Result<Pairs<'_>, CodecError> {
    fn len(b: &mut &[u8]) -> Result<usize, CodecError> {
        let first = *b.first().ok_or(CodecError::BadPair)?;
        if first < 128 {
            *b = &b[1..];
            return Ok(first as usize);
        }
        if b.len() < 4 {
            return Err(CodecError::BadPair);
        }
        let n = u32::from_be_bytes([b[0] & 0x7f, b[1], b[2], b[3]]) as usize;
        *b = &b[4..];
        Ok(n)
    }
    let mut out = Vec::new();
    while !b.is_empty() {
        let n = len(&mut b)?;
        let v = len(&mut b)?;
        if b.len() < n.saturating_add(v) {
            return Err(CodecError::BadPair);
        }
        out.push((&b[..n], &b[n..n + v]));
        b = &b[n + v..];
    }
    Ok(out)
}

/// One record read from the server.
#[derive(Debug, PartialEq, Eq)]
pub enum Record {
    Stdout(Bytes),
    Stderr(Bytes),
    End {
        app_status: u32,
        protocol_status: u8,
    },
    /// GET_VALUES_RESULT content (name-value pairs).
    Values(Bytes),
    /// Anything else (ignored, as the specification asks).
    Other(u8),
}

/// Takes one complete record off the front of `buf`, if there is one.
pub fn take_record(buf: &mut BytesMut) -> Result<Option<Record>, CodecError> {
    if buf.len() < HEADER_LEN {
        if buf.first().is_some_and(|v| *v != VERSION_1) {
            return Err(not_fastcgi(buf));
        }
        return Ok(None);
    }
    if buf[0] != VERSION_1 {
        return Err(not_fastcgi(buf));
    }
    let t = buf[1];
    let id = u16::from_be_bytes([buf[2], buf[3]]);
    let len = u16::from_be_bytes([buf[4], buf[5]]) as usize;
    let pad = buf[6] as usize;
    if buf.len() < HEADER_LEN + len + pad {
        return Ok(None);
    }
    // Management records carry id 0.
    if id != REQUEST_ID && !(id == 0 && t == kind::GET_VALUES_RESULT) {
        return Err(CodecError::WrongRequestId(id));
    }
    buf.advance(HEADER_LEN);
    let content = buf.split_to(len).freeze();
    buf.advance(pad);
    Ok(Some(match t {
        kind::STDOUT => Record::Stdout(content),
        kind::STDERR => Record::Stderr(content),
        kind::END_REQUEST if content.len() >= 5 => Record::End {
            app_status: u32::from_be_bytes([content[0], content[1], content[2], content[3]]),
            protocol_status: content[4],
        },
        kind::GET_VALUES_RESULT => Record::Values(content),
        other => Record::Other(other),
    }))
}

fn not_fastcgi(buf: &[u8]) -> CodecError {
    let mut first = [0u8; 8];
    let n = buf.len().min(8);
    first[..n].copy_from_slice(&buf[..n]);
    CodecError::NotFastCgi(first)
}
