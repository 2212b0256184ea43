//! Splitting a server-sent-events byte stream into events without buffering
//! the whole response: bytes go in as they arrive, complete events come out.

use bytes::{Bytes, BytesMut};

/// One complete event: its raw frame (forwarded as-is) and its `data`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The frame exactly as received, including the blank line.
    pub raw: Bytes,
    /// The joined `data:` lines.
    pub data: String,
}

/// An incremental SSE parser.
#[derive(Debug, Default)]
pub struct Parser {
    buffer: BytesMut,
}

/// Longest event accepted; a longer one is a broken or hostile upstream.
pub const MAX_EVENT_BYTES: usize = 4 << 20;

impl Parser {
    /// Feeds bytes; returns the events they complete. `Err` if an event grows
    /// past [`MAX_EVENT_BYTES`].
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<Event>, usize> {
        self.buffer.extend_from_slice(bytes);
        let mut events = Vec::new();
        while let Some((end, sep)) = find_boundary(&self.buffer) {
            let raw = self.buffer.split_to(end + sep).freeze();
            let data = String::from_utf8_lossy(&raw[..end])
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(|d| d.strip_prefix(' ').unwrap_or(d))
                .collect::<Vec<_>>()
                .join("\n");
            events.push(Event { raw, data });
        }
        if self.buffer.len() > MAX_EVENT_BYTES {
            return Err(self.buffer.len());
        }
        Ok(events)
    }
}

impl Parser {
    /// At the end of the stream: the last event if the sender omitted the
    /// final blank line (some do after `data: [DONE]`).
    pub fn finish(&mut self) -> Option<Event> {
        if self.buffer.iter().all(u8::is_ascii_whitespace) {
            return None;
        }
        self.push(b"\n\n").ok()?.pop()
    }
}

/// Position of the first blank line, and its length (`\n\n` or `\r\n\r\n`).
fn find_boundary(buf: &[u8]) -> Option<(usize, usize)> {
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2));
    let crlf = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, 4));
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_across_reads_come_out_whole() {
        let mut p = Parser::default();
        assert!(p.push(b"data: {\"a\"").unwrap().is_empty());
        let events = p.push(b": 1}\n\ndata: [DONE]\n\n").unwrap();
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].data, "{\"a\": 1}");
        assert_eq!(&events[0].raw[..], b"data: {\"a\": 1}\n\n");
        assert_eq!(events[1].data, "[DONE]");
        let crlf = p.push(b": comment\r\ndata: x\r\n\r\n").unwrap();
        assert_eq!(crlf[0].data, "x");
        assert_eq!(p.finish(), None);
        p.push(b"data: [DONE]\n").unwrap();
        assert_eq!(p.finish().map(|e| e.data), Some("[DONE]".to_owned()));
    }

    #[test]
    fn an_endless_event_is_refused() {
        let mut p = Parser::default();
        assert!(p.push(&vec![b'x'; MAX_EVENT_BYTES + 1]).is_err());
    }
}
