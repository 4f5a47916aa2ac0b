//! The chunked transfer coding (RFC 9112 §7.1), decoded from the connection's buffer.
//!
//! Strict where a lenient reading could let two parsers disagree on where the body ends: a
//! chunk size is 1 to 16 hex digits, every line ends in CRLF (a bare LF is refused), and the
//! CRLF after each chunk's data is required. Chunk extensions are skipped; trailer fields are
//! read and dropped (Creatio sends none). A size line or the trailer section may not pass
//! [`MAX_LINE`] and [`MAX_TRAILERS`] bytes.

use bytes::{Buf, Bytes, BytesMut};

/// Longest chunk-size line, extensions included.
const MAX_LINE: usize = 4096;

/// Largest trailer section.
const MAX_TRAILERS: usize = 16 * 1024;

/// What one step of decoding gave.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Step {
    /// Body bytes.
    Data(Bytes),
    /// The buffer is used up: read more.
    More,
    /// The last chunk and the trailer section have been read.
    Done,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum At {
    /// In the hex digits of a chunk size.
    #[default]
    Size,
    /// In whitespace after the size (BWS), before `;` or CR.
    SizeSpace,
    /// In the extensions after `;`, up to CR.
    Extension,
    /// After the size line's CR.
    SizeLf,
    /// In a chunk's data.
    Data,
    /// After a chunk's data, expecting CR.
    DataCr,
    /// Expecting the LF of the CRLF after a chunk's data.
    DataLf,
    /// At the start of a trailer line (or of the final CRLF).
    TrailerStart,
    /// Inside a trailer field's name, up to its colon.
    TrailerName,
    /// Inside a trailer field's value, up to CR.
    TrailerLine,
    /// After a trailer line's CR.
    TrailerLf,
    /// After the final CR.
    EndLf,
    /// Finished.
    Done,
}

/// The decoder's state between reads.
#[derive(Debug, Default)]
pub(super) struct Chunked {
    at: At,
    /// The chunk size read so far, then the data left in the chunk.
    size: u64,
    digits: u8,
    /// Bytes of the current size line, or of the trailer section.
    line: usize,
}

impl Chunked {
    /// Decodes from the front of `buf`, taking what it uses.
    pub(super) fn step(&mut self, buf: &mut BytesMut) -> Result<Step, &'static str> {
        loop {
            if self.at == At::Done {
                return Ok(Step::Done);
            }
            if self.at == At::Data {
                if buf.is_empty() {
                    return Ok(Step::More);
                }
                let n = buf
                    .len()
                    .min(usize::try_from(self.size).unwrap_or(usize::MAX));
                self.size -= n as u64;
                if self.size == 0 {
                    self.at = At::DataCr;
                }
                return Ok(Step::Data(buf.split_to(n).freeze()));
            }
            let Some(&byte) = buf.first() else {
                return Ok(Step::More);
            };
            buf.advance(1);
            self.line += 1;
            self.at = match self.at {
                At::Size => match byte {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        if self.digits == 16 {
                            return Err("chunk size too large");
                        }
                        self.digits += 1;
                        let digit = match byte {
                            b'0'..=b'9' => byte - b'0',
                            b'a'..=b'f' => byte - b'a' + 10,
                            _ => byte - b'A' + 10,
                        };
                        self.size = (self.size << 4) | u64::from(digit);
                        At::Size
                    }
                    b';' if self.digits > 0 => At::Extension,
                    b' ' | b'\t' if self.digits > 0 => At::SizeSpace,
                    b'\r' if self.digits > 0 => At::SizeLf,
                    _ => return Err("invalid chunk size"),
                },
                At::SizeSpace => match byte {
                    _ if self.line > MAX_LINE => return Err("chunk size line too long"),
                    b' ' | b'\t' => At::SizeSpace,
                    b';' => At::Extension,
                    b'\r' => At::SizeLf,
                    _ => return Err("invalid chunk size"),
                },
                At::Extension => match byte {
                    b'\r' => At::SizeLf,
                    b'\n' => return Err("bare LF in a chunk size line"),
                    _ if self.line > MAX_LINE => return Err("chunk size line too long"),
                    b'\t' | b' '..=b'~' | 0x80..=0xff => At::Extension,
                    _ => return Err("control character in a chunk extension"),
                },
                At::SizeLf => {
                    if byte != b'\n' {
                        return Err("chunk size line without CRLF");
                    }
                    self.digits = 0;
                    self.line = 0;
                    if self.size == 0 {
                        At::TrailerStart
                    } else {
                        At::Data
                    }
                }
                At::DataCr => match byte {
                    b'\r' => At::DataLf,
                    _ => return Err("chunk data longer than its size"),
                },
                At::DataLf => match byte {
                    b'\n' => {
                        self.line = 0;
                        At::Size
                    }
                    _ => return Err("chunk data without CRLF"),
                },
                _ if self.line > MAX_TRAILERS && self.at >= At::TrailerStart => {
                    return Err("trailer section too large")
                }
                At::TrailerStart => match byte {
                    b'\r' => At::EndLf,
                    b'\n' => return Err("bare LF in the trailer section"),
                    b':' => return Err("trailer field without a name"),
                    _ => At::TrailerName,
                },
                At::TrailerName => match byte {
                    b':' => At::TrailerLine,
                    b'\r' | b'\n' => return Err("trailer line without a colon"),
                    _ => At::TrailerName,
                },
                At::TrailerLine => match byte {
                    b'\r' => At::TrailerLf,
                    b'\n' => return Err("bare LF in the trailer section"),
                    _ => At::TrailerLine,
                },
                At::TrailerLf => match byte {
                    b'\n' => At::TrailerStart,
                    _ => return Err("trailer line without CRLF"),
                },
                At::EndLf => match byte {
                    b'\n' => At::Done,
                    _ => return Err("chunked body without its final CRLF"),
                },
                At::Data | At::Done => return Err("decoder state"),
            };
        }
    }
}

#[cfg(test)]
mod tests {
    // Test code only (clippy.toml allows it in tests): each expect() is set-up or an assertion
    // whose failure is this test failing; none of it is on a request path.
    use super::*;

    /// Decodes `input` fed in pieces of `piece` bytes; the body, or the first error.
    fn decode(input: &[u8], piece: usize) -> Result<(Vec<u8>, usize), &'static str> {
        let mut decoder = Chunked::default();
        let mut buf = BytesMut::new();
        let mut body = Vec::new();
        let mut fed = 0;
        loop {
            match decoder.step(&mut buf)? {
                Step::Data(d) => body.extend_from_slice(&d),
                Step::Done => return Ok((body, buf.len())),
                Step::More => {
                    if fed == input.len() {
                        return Err("incomplete");
                    }
                    let end = (fed + piece).min(input.len());
                    buf.extend_from_slice(&input[fed..end]);
                    fed = end;
                }
            }
        }
    }

    #[test]
    fn chunked_bodies_decode_whatever_the_read_sizes() {
        let cases: [(&[u8], &[u8]); 5] = [
            (b"5\r\nhello\r\n0\r\n\r\n", b"hello"),
            (
                b"5;name=value\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
                b"hello world",
            ),
            (
                b"A \r\n0123456789\r\n0\r\nX-Trailer: 1\r\nY: 2\r\n\r\n",
                b"0123456789",
            ),
            (b"0\r\n\r\n", b""),
            (b"000003\r\nabc\r\n0;last\r\n\r\n", b"abc"),
        ];
        for (input, want) in cases {
            for piece in [1, 2, 3, 7, input.len()] {
                let (body, left) = decode(input, piece).expect("valid");
                assert_eq!(
                    body,
                    want,
                    "{:?} by {piece}",
                    String::from_utf8_lossy(input)
                );
                assert_eq!(left, 0);
            }
        }
    }

    #[test]
    fn what_two_parsers_could_read_differently_is_refused() {
        let cases: [(&[u8], &str); 13] = [
            (b"5 garbage\r\nhello\r\n0\r\n\r\n", "invalid chunk size"),
            (
                b"5;a=\x01\r\nhello\r\n0\r\n\r\n",
                "control character in a chunk extension",
            ),
            (b"0\r\nno colon\r\n\r\n", "trailer line without a colon"),
            (b"0\r\n: no name\r\n\r\n", "trailer field without a name"),
            (b"\r\nhello\r\n0\r\n\r\n", "invalid chunk size"),
            (b"5\nhello\r\n0\r\n\r\n", "invalid chunk size"),
            (
                b"5\r\nhello world\r\n0\r\n\r\n",
                "chunk data longer than its size",
            ),
            (b"5\r\nhello\n0\r\n\r\n", "chunk data longer than its size"),
            (b"-5\r\nhello\r\n0\r\n\r\n", "invalid chunk size"),
            (b"0x5\r\nhello\r\n0\r\n\r\n", "invalid chunk size"),
            (b"11111111111111111\r\n", "chunk size too large"),
            (b"5;a\nhello\r\n0\r\n\r\n", "bare LF in a chunk size line"),
            (b"0\r\nX: 1\n\r\n", "bare LF in the trailer section"),
        ];
        for (input, want) in cases {
            assert_eq!(
                decode(input, 1).map(|_| ()),
                Err(want),
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn bytes_after_the_last_chunk_are_left_in_the_buffer() {
        // The pool then closes the connection rather than reuse it.
        let (body, left) = decode(b"3\r\nabc\r\n0\r\n\r\nHTTP/1.1 200 OK\r\n", 64).expect("valid");
        assert_eq!(body, b"abc");
        assert_eq!(left, 17);
    }

    #[test]
    fn an_endless_size_line_or_trailer_section_is_refused() {
        let mut line = b"5;".to_vec();
        line.extend(std::iter::repeat_n(b'x', MAX_LINE));
        assert_eq!(
            decode(&line, 512).map(|_| ()),
            Err("chunk size line too long")
        );
        let mut trailers = b"0\r\nX: ".to_vec();
        trailers.extend(std::iter::repeat_n(b'x', MAX_TRAILERS));
        assert_eq!(
            decode(&trailers, 512).map(|_| ()),
            Err("trailer section too large")
        );
        // Many short trailer lines count together.
        let mut lines = b"0\r\n".to_vec();
        for _ in 0..MAX_TRAILERS / 4 + 2 {
            lines.extend_from_slice(b"a:\r\n");
        }
        assert_eq!(
            decode(&lines, 512).map(|_| ()),
            Err("trailer section too large")
        );
    }
}
