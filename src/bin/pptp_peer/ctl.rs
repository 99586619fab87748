//! A PPTP control connection: segmentation-controlled writes and framed reads.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::str::FromStr;
use std::thread;
use std::time::{Duration, Instant};

use super::msg::{self, FrameError, Msg, Splitter};

/// Pause between pieces of a split message, long enough that with Nagle off each
/// piece leaves as its own TCP segment.
const SPLIT_PAUSE: Duration = Duration::from_millis(20);

/// How messages are cut into TCP writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Segmentation {
    /// One write per message.
    One,
    /// All messages of a protocol step in one write.
    Coalesce,
    /// Every message in chunks of this many bytes, with a pause between chunks.
    Split(usize),
    /// Messages of call types (7..=15) split inside the Call-ID field at offset 12.
    SplitCallId,
}

impl FromStr for Segmentation {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "one" => Ok(Segmentation::One),
            "coalesce" => Ok(Segmentation::Coalesce),
            "split-callid" => Ok(Segmentation::SplitCallId),
            _ => match s.strip_prefix("split:").map(str::parse::<usize>) {
                Some(Ok(n)) if n > 0 => Ok(Segmentation::Split(n)),
                _ => Err(format!(
                    "expected one, coalesce, split:BYTES (BYTES > 0) or split-callid, got {s:?}"
                )),
            },
        }
    }
}

impl fmt::Display for Segmentation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Segmentation::One => write!(f, "one"),
            Segmentation::Coalesce => write!(f, "coalesce"),
            Segmentation::Split(n) => write!(f, "split:{n}"),
            Segmentation::SplitCallId => write!(f, "split-callid"),
        }
    }
}

/// Why no message could be read.
#[derive(Debug)]
pub enum RecvError {
    /// The peer closed the connection (FIN).
    Closed,
    /// A socket error, typically a reset.
    Io(io::Error),
    /// The byte stream is not valid PPTP.
    Frame(FrameError),
}

impl fmt::Display for RecvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecvError::Closed => write!(f, "connection closed by peer"),
            RecvError::Io(e) => write!(f, "socket error: {e}"),
            RecvError::Frame(e) => write!(f, "malformed message: {e}"),
        }
    }
}

/// One end of a control connection.
pub struct Control {
    /// The socket; public so callers can shut it down their own way.
    pub stream: TcpStream,
    splitter: Splitter,
    seg: Segmentation,
    /// Names of every message received, in order (for summaries).
    pub received: Vec<String>,
    /// Set once the stream failed; reads after that keep failing the same way.
    dead: bool,
}

impl Control {
    /// Wraps a connected stream; turns Nagle off so split writes stay split.
    pub fn new(stream: TcpStream, seg: Segmentation) -> io::Result<Self> {
        stream.set_nodelay(true)?;
        stream.set_write_timeout(Some(Duration::from_secs(5)))?;
        Ok(Control {
            stream,
            splitter: Splitter::default(),
            seg,
            received: Vec::new(),
            dead: false,
        })
    }

    /// Writes the messages of one protocol step according to the segmentation.
    pub fn send_step(&mut self, msgs: &[Vec<u8>]) -> io::Result<()> {
        for m in msgs {
            log::debug!("send {}", msg::type_name(msg::ctype_of(m)));
        }
        match self.seg {
            Segmentation::One => {
                for m in msgs {
                    self.stream.write_all(m)?;
                }
            }
            Segmentation::Coalesce => self.stream.write_all(&msgs.concat())?,
            Segmentation::Split(n) => {
                for m in msgs {
                    self.write_pieces(m.chunks(n))?;
                }
            }
            Segmentation::SplitCallId => {
                for m in msgs {
                    if (msg::ty::OCRQ..=msg::ty::SLI).contains(&msg::ctype_of(m)) && m.len() > 13 {
                        let (a, b) = m.split_at(13);
                        self.write_pieces([a, b].into_iter())?;
                    } else {
                        self.stream.write_all(m)?;
                    }
                }
            }
        }
        Ok(())
    }

    fn write_pieces<'a>(&mut self, pieces: impl Iterator<Item = &'a [u8]>) -> io::Result<()> {
        for (i, p) in pieces.enumerate() {
            if i > 0 {
                thread::sleep(SPLIT_PAUSE);
            }
            self.stream.write_all(p)?;
        }
        // Keep the next message from joining this one's last piece.
        thread::sleep(SPLIT_PAUSE);
        Ok(())
    }

    /// Bytes received that do not yet form a whole message.
    pub fn pending(&self) -> usize {
        self.splitter.pending()
    }

    /// The next message, waiting at most until `deadline`; `Ok(None)` on timeout.
    pub fn recv_until(&mut self, deadline: Instant) -> Result<Option<Msg>, RecvError> {
        if self.dead {
            return Err(RecvError::Closed);
        }
        let mut buf = [0u8; 4096];
        loop {
            match self.splitter.next_msg() {
                Ok(Some(m)) => {
                    log::debug!("recv {}", m.name());
                    self.received.push(m.name());
                    return Ok(Some(m));
                }
                Ok(None) => {}
                Err(e) => {
                    self.dead = true;
                    return Err(RecvError::Frame(e));
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            // A zero timeout means "block forever" to the socket layer; avoid it.
            let _ = self
                .stream
                .set_read_timeout(Some(left.max(Duration::from_millis(1))));
            match self.stream.read(&mut buf) {
                Ok(0) => {
                    self.dead = true;
                    return Err(RecvError::Closed);
                }
                Ok(n) => self.splitter.push(&buf[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Ok(None)
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.dead = true;
                    return Err(RecvError::Io(e));
                }
            }
        }
    }
}
